#!/usr/bin/env bash
# Run a command (the test suite) with a real Kubernetes control plane for the tests marked `e2e`.
#
#   tools/with-control-plane.sh CONTROL_PLANE -- COMMAND [ARGS...]
#
# CONTROL_PLANE is the `control-plane` script of ../shared/k8s (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler v1.28 on loopback; its README says what it is). When it is
# there, it is started in a fresh temporary folder, COMMAND runs with AIDI_E2E_KUBECONFIG naming its
# admin kubeconfig (and AIDI_E2E_KUBECTL its own kubectl), and the control plane is stopped and its
# folder removed afterwards, whatever COMMAND did. When it is not there, COMMAND runs with
# AIDI_E2E_SKIP saying why, and the e2e tests skip with that reason (`make e2e` runs them against the
# cluster your kubeconfig names instead). KUBECONFIG itself is left alone: only e2e tests see the cluster.
set -euo pipefail
control_plane="${1:-}"
[ "${2:-}" = "--" ] || { sed -n '2,13p' "$0" >&2; exit 2; }
shift 2

if [ -z "$control_plane" ] || [ ! -x "$control_plane" ]; then
  export AIDI_E2E_SKIP="no Kubernetes control plane for the e2e tests (make test starts ../shared/k8s/control-plane when that folder exists; make e2e runs them against your kubeconfig's cluster)"
  exec "$@"
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/aidi-control-plane.XXXXXX")"
stop() {
  "$control_plane" down "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT TERM
echo "with-control-plane: starting a Kubernetes control plane in $dir" >&2
if ! "$control_plane" up "$dir" >/dev/null; then
  echo "with-control-plane: the control plane did not start; its logs:" >&2
  tail -n 20 "$dir"/logs/*.log >&2 || true
  exit 1
fi
# shellcheck disable=SC1091
. "$dir/env"
export AIDI_E2E_KUBECONFIG="$KUBECONFIG" AIDI_E2E_KUBECTL="$K8S_BIN/kubectl"
unset KUBECONFIG K8S_BIN K8S_API K8S_CA
"$@"
