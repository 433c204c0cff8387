#!/usr/bin/env bash
# The seed's packing entry point: pack one adas_mini scene (or all 8) into MXNet RecordIO.
#
#   bash tools/pipeline.sh --config configs/4pe_vehicle/train.py     # → data/rec/vehicle/
#   bash tools/pipeline.sh --all                                     # every configs/4pe_*/train.py
#   bash tools/pipeline.sh --all --skip-bad -j 2                     # other flags go to `aidi pack`
#
# Run it from the folder that holds data/ (the configs' paths are relative to it). It uses the repo's
# .venv when there is one, else the `aidi` on PATH (pip install 'aidi[cli]').
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$repo/.venv/bin/aidi" ]]; then
    aidi="$repo/.venv/bin/aidi"
elif command -v aidi >/dev/null 2>&1; then
    aidi="$(command -v aidi)"
else
    echo "pipeline.sh: no 'aidi' command: run 'make install' in $repo, or pip install 'aidi[cli]'" >&2
    exit 127
fi

args=()
configs=()
while (($#)); do
    case "$1" in
        --all)
            shopt -s nullglob
            configs+=("$repo"/configs/4pe_*/train.py)
            shopt -u nullglob
            if ((${#configs[@]} == 0)); then
                echo "pipeline.sh: no configs/4pe_*/train.py under $repo" >&2
                exit 2
            fi
            ;;
        --config|-c)
            [[ $# -ge 2 ]] || { echo "pipeline.sh: --config needs a file" >&2; exit 2; }
            configs+=("$2"); shift ;;
        --config=*) configs+=("${1#--config=}") ;;
        -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done
if ((${#configs[@]} == 0)); then
    echo "pipeline.sh: give --config configs/4pe_<scene>/train.py, or --all" >&2
    exit 2
fi
exec "$aidi" pack --config "${configs[@]}" "${args[@]}"
