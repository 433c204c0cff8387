"""What this machine offers a job's pods: its GPUs (else the CPU) and a free port for ps-lite's scheduler."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys


def gpu_count(python: str | None = None) -> int:
    """GPUs the trainer's MXNet can use here: 0 without the NVIDIA driver (no further check), else what
    ``mxnet.context.num_gpus()`` says in ``python`` — a CPU build of MXNet sees none however many there are.
    MXNet is asked in a child process: ``aidi`` itself never imports it."""
    if shutil.which("nvidia-smi") is None:
        return 0
    probe = "import mxnet; print(mxnet.context.num_gpus())"
    try:
        out = subprocess.run([python or sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                             check=False).stdout
        return int(out.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return 0


def ctx_for(gpus_per_worker: int, available: int | None = None) -> str | None:
    """``AIDI_CTX`` for a worker asking for ``gpus_per_worker`` GPUs: ``cpu`` when there are none here, the
    first ids when there are fewer than asked, nothing (the run script's own default) when all are here."""
    available = gpu_count() if available is None else available
    if gpus_per_worker <= 0 or available >= gpus_per_worker:
        return None
    if available == 0:
        return "cpu"
    return ",".join(str(i) for i in range(available))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
