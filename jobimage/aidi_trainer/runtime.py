"""Devices and the parameter server: ``--ctx``, the kvstore, and agreeing on values across workers.

Single machine: ``--ctx 0,1,2,3`` trains data-parallel on those GPUs through a ``device`` kvstore;
``--ctx cpu`` on the CPU. Several machines: when ``DMLC_ROLE`` is set (the operator sets it, with
``DMLC_PS_ROOT_URI``, ``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``) workers train
through a ``dist_sync`` kvstore; the scheduler and server roles serve it as soon as MXNet is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import mxnet as mx

from aidi.errors import UsageError

# Each quantization step makes a fresh Trainer; a kvstore key can be initialised only once, so every
# step gets its own key range (a dist server would treat a second init as a gradient push). Keys stay
# small: a dist_sync kvstore hung on keys around 2^20 in our tests.
KEYS_PER_STEP = 10_000
SYNC_KEYS = 9_000  # first key of the step's range used by Runtime.agree; parameters use the keys below


def parse_ctx(text: str) -> list[mx.Context]:
    """``cpu`` or comma-separated GPU ids; GPUs that MXNet cannot see are an error naming ``--ctx cpu``."""
    text = text.strip().lower()
    if text in ("cpu", "-1"):
        return [mx.cpu()]
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--ctx {text!r}: expected `cpu` or GPU ids such as `0,1,2,3`") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise UsageError(f"--ctx {text!r}: expected `cpu` or distinct GPU ids such as `0,1,2,3`")
    available = mx.context.num_gpus()
    if max(ids) >= available:
        raise UsageError(f"--ctx {text} asks for GPU {max(ids)} but MXNet sees {available} GPU(s) here "
                         "(no GPU, no driver, or a CPU build of MXNet); use --ctx cpu to train on the CPU")
    return [mx.gpu(i) for i in ids]


def broadcast(kv: mx.kvstore.KVStore, key: int, value: Any, out: Any) -> None:
    """The chief's ``value`` into ``out`` everywhere.

    ``KVStore.broadcast`` is init + pull; on a dist kvstore only rank 0's init sends the value, as an
    asynchronous push that nothing waits for, so another worker's pull could reach the server first
    (the server aborts: "init KEY first"). Wait for the push, then for every worker, then pull.
    """
    if "dist" in kv.type:
        # BatchNorm statistics may sit in an MKLDNN layout, which the dist push cannot send.
        value = mx.nd.array(value.asnumpy(), dtype=value.dtype)
    kv.init(key, value)
    if "dist" in kv.type:
        mx.nd.waitall()
        kv._barrier()
    kv.pull(key, out=out)


class KeyOffsetStore(mx.kvstore.KVStoreBase):
    """A view of a kvstore whose keys start at ``offset``; gradients only (updates run on the worker)."""

    def __init__(self, kv: mx.kvstore.KVStore, offset: int) -> None:
        self.kv, self.offset = kv, offset

    def broadcast(self, key: int, value: Any, out: Any, priority: int = 0) -> None:
        broadcast(self.kv, key + self.offset, value, out)

    def pushpull(self, key: int, value: Any, out: Any = None, priority: int = 0) -> None:
        self.kv.pushpull(key + self.offset, value, out, priority)

    def is_capable(self, capability: str) -> bool:
        return False  # keeps the optimizer on the worker, so each step's Trainer owns its state

    def set_optimizer(self, optimizer: Any) -> None:
        raise NotImplementedError("optimizer runs on the worker")

    def save_optimizer_states(self, fname: str, dump_optimizer: bool = False) -> None:
        raise NotImplementedError("optimizer runs on the worker")

    def load_optimizer_states(self, fname: str) -> None:
        raise NotImplementedError("optimizer runs on the worker")

    @property
    def type(self) -> str:
        return self.kv.type

    @property
    def rank(self) -> int:
        return self.kv.rank

    @property
    def num_workers(self) -> int:
        return self.kv.num_workers


@dataclass
class Runtime:
    ctxs: list[mx.Context]
    kv: mx.kvstore.KVStore | None
    rank: int = 0
    num_workers: int = 1

    @property
    def chief(self) -> bool:
        """Only the chief (rank 0) writes checkpoints, exports and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.kv is not None and "dist" in self.kv.type

    def step_store(self, step_index: int) -> KeyOffsetStore | None:
        return KeyOffsetStore(self.kv, step_index * KEYS_PER_STEP) if self.kv is not None else None

    def agree(self, step_index: int, slot: int, value: float) -> float:
        """The chief's ``value`` on every worker (a no-op on one machine)."""
        if not self.distributed:
            return value
        out = mx.nd.zeros((1,))
        broadcast(self.kv, step_index * KEYS_PER_STEP + SYNC_KEYS + slot, mx.nd.array([value]), out)
        return float(out.asscalar())


def dist_role() -> str | None:
    return os.environ.get("DMLC_ROLE")


def make_runtime(ctxs: list[mx.Context]) -> Runtime:
    if dist_role() == "worker":
        kv = mx.kv.create("dist_sync")
        return Runtime(ctxs, kv, kv.rank, kv.num_workers)
    if len(ctxs) > 1:
        return Runtime(ctxs, mx.kv.create("device"))
    return Runtime(ctxs, None)
