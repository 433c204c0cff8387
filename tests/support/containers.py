"""The images `make images` builds, and how the tests (and the stand-in kubelet) run containers of them.

The container tests run when AIDI_CONTAINER_TESTS=1 (`make test` and `make e2e-containers` set it after
building the images); elsewhere they skip and say why — with AIDI_CONTAINER_SKIP's reason when
tools/build-images.sh found that no container can start on this machine. With AIDI_CONTAINER_TESTS=1, a
missing image or podman is a failure, not a skip.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time

from tests.support.e2e import OperatorProcess
from tests.support.seaweedfs import free_port

PREFIX = os.environ.get("AIDI_IMAGE_PREFIX", "aidi")
TAG = os.environ.get("AIDI_IMAGE_TAG", "0.1.0")
OPERATOR_IMAGE = f"{PREFIX}/operator:{TAG}"
JOB_IMAGE = f"{PREFIX}/jobimage:{TAG}"
JOB_IMAGE_CPU = f"{PREFIX}/jobimage:{TAG}-cpu"

ENABLED = os.environ.get("AIDI_CONTAINER_TESTS") == "1"
CANNOT_RUN = os.environ.get("AIDI_CONTAINER_SKIP", "")  # tools/build-images.sh --test-env: why not here
# The images `make e2e-containers` built (its IMAGES); the tests of the others skip.
BUILT = os.environ.get("AIDI_CONTAINER_IMAGES", "operator jobimage jobimage-cpu").split()
_KINDS = {OPERATOR_IMAGE: "operator", JOB_IMAGE: "jobimage", JOB_IMAGE_CPU: "jobimage-cpu"}
SKIP_REASON = (f"CONTAINERS CANNOT RUN ON THIS MACHINE: {CANNOT_RUN}" if CANNOT_RUN else
               "the container tests run with `make test` or `make e2e-containers` (they build the images and set "
               "AIDI_CONTAINER_TESTS=1)")


def runtime_args() -> list[str]:
    """`podman run` options that work where the defaults do not (tools/build-images.sh says why):
    runc rather than crun, and limits this process may set without CAP_SYS_RESOURCE."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    args = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=32768:32768"]
    if shutil.which("runc"):
        args = ["--runtime", "runc", *args]
    return args


def podman(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def require_image(image: str) -> None:
    """Skip when the run did not build this image; else fail (the tests were asked for) when it is missing."""
    import pytest

    if _KINDS.get(image) not in BUILT:
        pytest.skip(f"{image} was not built in this run (IMAGES={' '.join(BUILT)})")
    assert shutil.which("podman"), "podman is missing: `make images` installs it (Debian, as root)"
    assert podman("image", "exists", image).returncode == 0, f"{image} is not built: run `make images`"


class ContainerOperator(OperatorProcess):
    """``aidi-operator`` from the operator image, on the host's network, as the chart runs it
    (its user, a read-only root filesystem, no capabilities)."""

    def start(self) -> ContainerOperator:
        port = free_port()
        self.kubeconfig.chmod(0o644)  # readable by the image's user; the file is this test's alone
        log = self._next_log()
        self.name = f"aidi-operator-test-{port}"
        args = ["podman", "run", "--rm", "--name", self.name, *runtime_args(), "--network", "host",
                "--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges",
                "-v", f"{self.kubeconfig}:/etc/aidi/kubeconfig:ro", "-e", "KUBECONFIG=/etc/aidi/kubeconfig",
                OPERATOR_IMAGE, "--liveness-port", str(port), "--resync-seconds",
                str(self.resync_seconds), "--log-tail-lines", "20", *self.extra_args]
        for ns in self.namespaces:
            args += ["-n", ns]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

        self._wait_healthy(port, "the operator container", timeout=90)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            podman("stop", "--time", "30", self.name, timeout=60)
            time.sleep(0.1)
        super().stop()
