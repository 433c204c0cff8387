#!/usr/bin/env bash
# The seed's training entry point: multitask quantization training in 4 steps (with-bn, fusion-bn-c1,
# fusion-bn-c2, int-inference) by the trainer package `aidi_trainer` (docs/trainer.md).
#
#   bash tools/quanti_training_2step_fusion_bn.sh --config configs/4pe_resize/multitask.py --ctx 0,1,2,3
#   bash tools/quanti_training_2step_fusion_bn.sh --config configs/4pe_resize/multitask.py --ctx cpu --pipeline-test
#   bash tools/quanti_training_2step_fusion_bn.sh --help          # every option
#
# The same file ships in the example code package (examples/auto_matrix_development_toolkit/
# scripts/auto_matrix_algo/tools/); keep the two identical (a test checks). It runs the Python found in
# $AIDI_PYTHON, else the repository's .venv next to this folder, else python3 (the job image's).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${AIDI_PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$here/../.venv/bin/python" ]]; then
        python="$here/../.venv/bin/python"
    else
        python="python3"
    fi
fi
if ! "$python" -c 'import aidi_trainer' 2>/dev/null; then
    echo "quanti_training_2step_fusion_bn.sh: $python cannot import aidi_trainer: run 'make install', or" \
         "pip install 'aidi[trainer]', or set AIDI_PYTHON to a Python that has it (the job image's does)" >&2
    exit 127
fi
exec "$python" -m aidi_trainer "$@"
