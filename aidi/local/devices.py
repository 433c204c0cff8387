"""What this machine offers a job's pods: its GPUs (else the CPU) and a free port for ps-lite's scheduler."""

from __future__ import annotations

import shutil
import socket
import subprocess


def gpu_count() -> int:
    """GPUs ``nvidia-smi -L`` lists; 0 without the driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


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
