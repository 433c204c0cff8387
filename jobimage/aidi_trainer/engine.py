"""One training step of the pipeline: the loop, its progress lines, checkpoints and resume.

Every iteration takes one batch of every branch (each from its own loader), sums the branches'
weighted losses and makes one update of the shared parameters. Per epoch the chief writes
``<step>-NNNN.params`` (Gluon parameters), ``<step>-NNNN.states`` (optimizer) and
``<step>-progress.json``; a restarted run continues from the last of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from aidi.errors import AidiError
from aidi.jobs.progress import Writer
from aidi_trainer.losses import detection_loss, segmentation_loss
from aidi_trainer.model import DET, MultiTaskNet
from aidi_trainer.runtime import SYNC_KEYS, Runtime

log = logging.getLogger("aidi_trainer")


class TrainingDiverged(AidiError):
    """A loss became NaN or infinite."""

    exit_code = 8


@dataclass
class StepPlan:
    name: str
    index: int
    epochs: int
    iters_per_epoch: int
    lr: float
    wd: float
    weights: dict[str, float]
    log_interval: int
    global_offset: int = 0      # iterations of the trained steps before this one (the curves' x axis)
    later_iterations: int = 0   # iterations of the trained steps after this one (the job's ETA)


@dataclass
class StepResult:
    iterations: int = 0
    seconds: float = 0.0
    samples: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    epoch_losses: list[float] = field(default_factory=list)
    resumed_from_epoch: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "seconds": round(self.seconds, 3),
                "samples_per_sec": round(self.samples / self.seconds, 2) if self.seconds else None,
                "first_loss": self.first_loss, "last_loss": self.last_loss, "epoch_losses": self.epoch_losses,
                "resumed_from_epoch": self.resumed_from_epoch}


def task_loss(net: MultiTaskNet, task: str, data: list[mx.nd.NDArray]) -> dict[str, mx.nd.NDArray]:
    output = net(data[0], task)
    if net.specs[task].kind == DET:
        return detection_loss(output, *data[1:])
    return segmentation_loss(output, data[1])


def atomic_save(path: Path, save: Any) -> None:
    """Write through a temporary file so a crash never leaves a half-written checkpoint behind."""
    tmp = path.with_name(path.name + ".tmp")
    save(str(tmp))
    os.replace(tmp, path)


def checkpoint_paths(out: Path, step: str, epoch: int) -> tuple[Path, Path]:
    return out / f"{step}-{epoch:04d}.params", out / f"{step}-{epoch:04d}.states"


def saved_epoch(out: Path, step: str) -> int:
    """The last epoch whose checkpoint is complete, 0 when none."""
    progress = out / f"{step}-progress.json"
    if not progress.is_file():
        return 0
    epoch = int(json.loads(progress.read_text())["epoch"])
    params, states = checkpoint_paths(out, step, epoch)
    return epoch if params.is_file() and states.is_file() else 0


def format_eta(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class Meter:
    """Running sums of the loss terms between two progress lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {name: value / max(self.count, 1) for name, value in self.sums.items()}


def train_step(net: MultiTaskNet, plan: StepPlan, runtime: Runtime, batches: dict[str, Iterator[Any]],
               out: Path, start_epoch: int | None = None, records: Writer | None = None) -> StepResult:
    """Train ``net`` (hybridized by the caller) for ``plan``; resume from the last epoch checkpoint in ``out``.

    ``records`` (the chief's) receives a ``train`` progress record at every progress line (docs/progress.md).

    ``start_epoch`` is that checkpoint's epoch when the caller agreed on it already (every worker must
    pass the same); by default it is read here. ``batches`` must stand at that epoch's first batch.
    """
    params = net.collect_params()
    if len(params.keys()) > SYNC_KEYS:
        raise ValueError(f"the network has {len(params.keys())} parameters; the kvstore key plan allows {SYNC_KEYS}")
    total = plan.epochs * plan.iters_per_epoch
    scheduler = mx.lr_scheduler.CosineScheduler(max_update=max(total, 1), base_lr=plan.lr, final_lr=plan.lr * 0.05,
                                                warmup_steps=min(50, total // 10))
    trainer = gluon.Trainer(params, "adam", {"learning_rate": plan.lr, "wd": plan.wd, "lr_scheduler": scheduler},
                            kvstore=runtime.step_store(plan.index),
                            update_on_kvstore=False if runtime.kv is not None else None)
    result = StepResult()
    if start_epoch is None:
        start_epoch = int(runtime.agree(plan.index, 0, saved_epoch(out, plan.name) if runtime.chief else 0))
    params_file, states_file = checkpoint_paths(out, plan.name, start_epoch)
    if start_epoch and runtime.chief:
        net.load_parameters(str(params_file), ctx=runtime.ctxs)
    # Initialising the Trainer's kvstore broadcasts the chief's parameters: every worker must do it
    # here, together (Trainer would do it lazily at its first step, after a forward on stale weights).
    trainer._init_kvstore()
    trainer._init_params()
    if start_epoch:
        if runtime.chief:
            trainer.load_states(str(states_file))
        log.info("[%s] resuming after epoch %d/%d from %s", plan.name, start_epoch, plan.epochs, out)
        result.resumed_from_epoch = start_epoch
    scale = len(runtime.ctxs) * runtime.num_workers
    progress = StepMonitor(plan, result, trainer, start_epoch, records)
    for epoch in range(start_epoch, plan.epochs):
        progress.new_epoch()
        pending = None
        for it in range(plan.iters_per_epoch):
            launched = _launch(net, plan, runtime, batches, trainer, scale, epoch * plan.iters_per_epoch + it + 1)
            # Read the previous iteration's losses only now, with this one queued: the host never waits
            # for the device between iterations, and a non-finite loss still stops the run before any
            # checkpoint is written from it.
            if pending is not None:
                progress.account(pending)
            pending = launched
        if pending is not None:
            progress.account(pending)
        result.epoch_losses.append(progress.epoch_loss())
        if runtime.chief:
            _save_epoch(net, trainer, out, plan.name, epoch + 1)
    result.seconds = time.perf_counter() - progress.started
    # Every worker says what it ended with: with the gradients combined (dist_sync) the workers of a job end
    # bit-identical although each trained on its own shard (tests/test_containers_e2e.py checks it).
    log.info("[%s] trained parameters sha256 %s (worker %d of %d)", plan.name, parameters_digest(net),
             runtime.rank, runtime.num_workers)
    return result


def parameters_digest(net: MultiTaskNet) -> str:
    """sha256 (16 hex digits) of the trainable parameters' values in name order. BatchNorm's running
    statistics are left out: each worker keeps its own, from its own shard."""
    digest = hashlib.sha256()
    for name, param in sorted(net.collect_params().items()):
        if param.grad_req == "null":
            continue
        digest.update(name.encode())
        digest.update(param.list_data()[0].asnumpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Launched:
    """One iteration in flight: its loss terms still on the device."""

    step_no: int
    names: list[str]
    values: mx.nd.NDArray
    samples: int
    devices: int


def _launch(net: MultiTaskNet, plan: StepPlan, runtime: Runtime, batches: dict[str, Iterator[Any]],
            trainer: gluon.Trainer, scale: int, step_no: int) -> Launched:
    """Queue one iteration (forward, backward, update) without waiting for it."""
    names, values, losses = [], [], []
    samples = 0
    loaded = {task: next(it) for task, it in batches.items()}
    with autograd.record():
        for task, batch in loaded.items():
            samples += batch[0].shape[0] * runtime.num_workers
            parts = [gluon.utils.split_and_load(arr, runtime.ctxs, even_split=False) for arr in batch]
            for device in range(len(parts[0])):
                terms = task_loss(net, task, [p[device] for p in parts])
                weighted = plan.weights[task] * sum(terms.values())
                losses.append(weighted)
                names.extend([f"{task}.{name}" for name in terms] + [f"{task}.total"])
                values.extend([*terms.values(), weighted])
    autograd.backward(losses)
    stacked = mx.nd.concat(*[v.reshape((1,)).as_in_context(mx.cpu()) for v in values], dim=0)
    trainer.step(scale)
    return Launched(step_no, names, stacked, samples, len(runtime.ctxs))


class StepMonitor:
    """Loss bookkeeping, the non-finite check and the progress lines of one step."""

    def __init__(self, plan: StepPlan, result: StepResult, trainer: gluon.Trainer, start_epoch: int,
                 records: Writer | None = None) -> None:
        self.plan, self.result, self.trainer, self.records = plan, result, trainer, records
        self.total = plan.epochs * plan.iters_per_epoch
        self.first_step = start_epoch * plan.iters_per_epoch
        self.started = time.perf_counter()
        self.epoch_meter = self.meter = Meter()
        self.tick, self.tick_samples = self.started, 0

    def new_epoch(self) -> None:
        self.epoch_meter, self.meter = Meter(), Meter()
        self.tick, self.tick_samples = time.perf_counter(), 0

    def epoch_loss(self) -> float:
        return sum(v for k, v in self.epoch_meter.means().items() if k.endswith(".total"))

    def account(self, done: Launched) -> None:
        numbers = done.values.asnumpy()
        terms: dict[str, float] = {}
        for name, value in zip(done.names, numbers, strict=True):
            terms[name] = terms.get(name, 0.0) + float(value) / done.devices
        plan = self.plan
        if not np.all(np.isfinite(numbers)):
            breakdown = ", ".join(f"{k} = {v:.6g}" for k, v in terms.items())
            raise TrainingDiverged(f"[{plan.name}] the loss is not finite at iteration {done.step_no}: {breakdown}. "
                                   f"Lower steps[{plan.name!r}]['lr'] in the config, or check the data of the branch "
                                   "whose terms are nan/inf; restarting resumes from the last checkpoint")
        self.meter.add(terms)
        self.epoch_meter.add(terms)
        self.tick_samples += done.samples
        result = self.result
        result.samples += done.samples
        result.iterations += 1
        loss = sum(v for k, v in terms.items() if k.endswith(".total"))
        if result.first_loss is None:
            result.first_loss = loss
        result.last_loss = loss
        if done.step_no % plan.log_interval == 0 or done.step_no % plan.iters_per_epoch == 0:
            self._log(done.step_no)

    def _log(self, step_no: int) -> None:
        now = time.perf_counter()
        eta = (now - self.started) / (step_no - self.first_step) * (self.total - step_no)
        means = self.meter.means()
        breakdown = " ".join(f"{k} {v:.4f}" for k, v in means.items() if not k.endswith(".total"))
        epoch = (step_no - 1) // self.plan.iters_per_epoch + 1
        loss = sum(v for k, v in means.items() if k.endswith(".total"))
        rate = self.tick_samples / max(now - self.tick, 1e-9)
        log.info("[%s] epoch %d/%d iter %d/%d | loss %.4f | %s | %.1f samples/s | lr %.2e | ETA %s",
                 self.plan.name, epoch, self.plan.epochs, step_no, self.total, loss, breakdown,
                 rate, self.trainer.learning_rate, format_eta(eta))
        if self.records is not None:
            # The job's ETA assumes the later steps run at this step's pace (same network, same batches).
            per_iter = (now - self.started) / (step_no - self.first_step)
            self.records.write(
                "train", step=self.plan.index, name=self.plan.name, epoch=epoch, epochs=self.plan.epochs,
                iteration=step_no, iterations=self.total, global_iteration=self.plan.global_offset + step_no,
                loss=loss, branches={k[:-len(".total")]: v for k, v in means.items() if k.endswith(".total")},
                terms={k: v for k, v in means.items() if not k.endswith(".total")}, samples_per_sec=rate,
                lr=float(self.trainer.learning_rate), eta_step_s=eta,
                eta_job_s=eta + per_iter * self.plan.later_iterations)
        self.meter, self.tick, self.tick_samples = Meter(), now, 0


def _save_epoch(net: MultiTaskNet, trainer: gluon.Trainer, out: Path, step: str, epoch: int) -> None:
    params_file, states_file = checkpoint_paths(out, step, epoch)
    atomic_save(params_file, net.save_parameters)
    atomic_save(states_file, trainer.save_states)
    progress = out / f"{step}-progress.json"
    atomic_save(progress, lambda p: Path(p).write_text(json.dumps({"epoch": epoch})))


def iterations_per_epoch(sizes: dict[str, int], batch: int, max_iters: int | None) -> int:
    iters = max(math.ceil(size / batch) for size in sizes.values())
    return min(iters, max_iters) if max_iters else iters
