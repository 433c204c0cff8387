#!/usr/bin/env bash
# Build the project's container images with podman/buildah (what `make images` runs; docs/install.md,
# "The images").
#
#   bash tools/build-images.sh [--tag 0.1.0] [--prefix aidi] [--only operator|jobimage|jobimage-cpu]...
#                              [--test-env FILE]
#
# Builds, from the repository root:
#   PREFIX/operator:TAG        operator/Dockerfile
#   PREFIX/jobimage:TAG        jobimage/Dockerfile, MXNet's CUDA 11.2 build (what GPU clusters run)
#   PREFIX/jobimage:TAG-cpu    jobimage/Dockerfile --build-arg MXNET=mxnet (CPU clusters and the tests)
# All three by default; --only (repeatable) picks some.
#
# What it needs and does on the way:
# - podman, buildah and runc: installed from Debian when missing and this runs as root with apt-get
#   (anywhere else it stops and says what to install). runc, not crun: crun cannot create containers on
#   some cgroup v1 hosts, and runc works on both.
# - The base image the Dockerfiles name (ARG PYTHON_IMAGE, python:3.11.x-slim-bookworm). When it is not
#   in local storage and no registry serves it (an offline or mirror-only machine), a stand-in is built
#   once with mmdebstrap: Debian bookworm with Debian's python3.11, tagged localhost/aidi-standin/python
#   and never pushed. It has the official image's layout where the Dockerfiles rely on it (python3 on
#   PATH, ca-certificates, a working `python3 -m venv`), but Debian's Python patch release, not the
#   pinned one: build the images you push where the real base image can be pulled.
# - The machine's CA bundle goes into the builds as a build secret (never into a layer), so pip and apt
#   work behind a TLS-intercepting proxy. AIDI_BUILD_CA=/path/to/bundle.pem picks another bundle.
# - Layers are cached (buildah --layers): a rebuild after a code change redoes only the last layers; untagged
#   layers (the build stages, replaced versions) are pruned once a day old.
# --test-env FILE (what `make test` uses): first check that podman can start a container on this machine at
# all. If it cannot (podman missing and not installable, or no container starts), say so loudly, write
# AIDI_CONTAINER_SKIP=<why> to FILE and exit 0 without building: the container tests then skip with that
# reason. Otherwise build and write the variables that turn the container tests on; a failed build fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tag=0.1.0
prefix=aidi
only=()
test_env=
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --only) only+=("$2"); shift 2 ;;
    --test-env) test_env="$2"; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#only[@]} -gt 0 ] || only=(operator jobimage jobimage-cpu)
for o in "${only[@]}"; do
  case "$o" in operator|jobimage|jobimage-cpu) ;;
    *) echo "build-images.sh: --only $o: expected operator, jobimage or jobimage-cpu" >&2; exit 2 ;;
  esac
done

log() { echo "build-images: $*" >&2; }

# --test-env: this machine cannot run containers. Loud, because every container test will skip.
no_containers() {
  local why="$1"
  {
    echo "##########################################################################################"
    echo "build-images: CONTAINER TESTS WILL SKIP: $why"
    echo "##########################################################################################"
  } >&2
  printf 'AIDI_CONTAINER_SKIP=%q\n' "$why" > "$test_env"
  exit 0
}

need_packages() {
  local missing=()
  for pkg in "$@"; do
    command -v "$pkg" >/dev/null || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "build-images.sh: ${missing[*]} missing: install them (Debian/Ubuntu: apt-get install ${missing[*]})," \
         "or build with Docker as docs/install.md shows" >&2
    exit 1
  fi
}

if [ -n "$test_env" ]; then
  rm -f "$test_env"
  missing=()
  for pkg in podman buildah runc; do command -v "$pkg" >/dev/null || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ] && { [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; }; then
    no_containers "${missing[*]} missing and not installable here (needs root and apt-get): install them"
  fi
fi
need_packages podman buildah runc

# The base image, as the Dockerfiles' ARG PYTHON_IMAGE default names it (one place: operator/Dockerfile).
python_image="$(sed -n 's/^ARG PYTHON_IMAGE=//p' operator/Dockerfile)"
standin=localhost/aidi-standin/python:3.11-slim-bookworm
base="$python_image"
if podman image exists "$python_image"; then
  :
elif timeout 90 podman pull -q "$python_image" >/dev/null 2>&1; then
  log "pulled $python_image"
elif podman image exists "$standin"; then
  log "$python_image cannot be pulled here: building on the local stand-in $standin"
  base="$standin"
else
  log "$python_image cannot be pulled here: building the stand-in $standin with mmdebstrap"
  need_packages mmdebstrap
  rootfs="$(mktemp "${TMPDIR:-/tmp}/aidi-standin.XXXXXX.tar")"
  trap 'rm -f "$rootfs"' EXIT
  # The host's own Debian sources when it is bookworm (its mirror, its proxy), else Debian's default.
  mirror=()
  if grep -qs 'bookworm' /etc/apt/sources.list.d/debian.sources; then
    mirror=(/etc/apt/sources.list.d/debian.sources)
  fi
  # As in the official slim image: no docs, man pages or locales; python3-venv for `python3 -m venv`.
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,ca-certificates,netbase,tzdata \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='chroot "$1" sh -c "ln -sf /usr/bin/python3 /usr/local/bin/python; rm -rf /var/lib/apt/lists/*"' \
    bookworm "$rootfs" "${mirror[@]}"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$rootfs" "$standin" >/dev/null
  rm -f "$rootfs"
  base="$standin"
fi

# Explicit limits for the builds' containers: without CAP_SYS_RESOURCE (a container or a VM sandbox)
# runc cannot set the ones podman picks by default ("error setting rlimits ... operation not
# permitted"); this shell's open-files limit and 32768 processes at most work there and are plenty.
ulimits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=32768:32768")
if [ -n "$test_env" ]; then
  if ! probe="$(podman run --rm --runtime runc "${ulimits[@]}" --network none "$base" true 2>&1)"; then
    no_containers "podman cannot start a container of $base on this machine: $(echo "$probe" | tail -n 3 | tr '\n' ' ')"
  fi
fi

ca="${AIDI_BUILD_CA:-}"
if [ -z "$ca" ]; then
  for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [ -s "$f" ] && { ca="$f"; break; }
  done
fi
[ -n "$ca" ] && [ -s "$ca" ] || { echo "build-images.sh: no CA bundle found: set AIDI_BUILD_CA=/path/to/bundle.pem" >&2; exit 1; }


build() {  # build IMAGE DOCKERFILE [BUILD-ARG...]
  local image="$1" dockerfile="$2"; shift 2
  local args=()
  for a in "$@"; do args+=(--build-arg "$a"); done
  local start=$SECONDS
  log "building $image"
  buildah build --layers --force-rm --runtime runc "${ulimits[@]}" \
    --secret id=ca-bundle,src="$ca" --build-arg PYTHON_IMAGE="$base" "${args[@]}" \
    -f "$dockerfile" -t "$image" . >&2
  log "built $image in $((SECONDS - start)) s, $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
}

for o in "${only[@]}"; do
  case "$o" in
    operator) build "$prefix/operator:$tag" operator/Dockerfile ;;
    jobimage) build "$prefix/jobimage:$tag" jobimage/Dockerfile ;;
    jobimage-cpu) build "$prefix/jobimage:$tag-cpu" jobimage/Dockerfile MXNET=mxnet ;;
  esac
done
# Untagged images a day old: earlier builds' leftovers. Not younger ones: the build stages' layers are untagged
# too, and they are the cache that makes the next build (a fresh clone's `make test`) take seconds.
podman image prune -f --filter until=24h >/dev/null
if [ -n "$test_env" ]; then
  printf 'AIDI_CONTAINER_TESTS=1\nAIDI_IMAGE_PREFIX=%q\nAIDI_IMAGE_TAG=%q\nAIDI_CONTAINER_IMAGES=%q\n' \
    "$prefix" "$tag" "${only[*]}" > "$test_env"
fi
