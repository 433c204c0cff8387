"""The 4 quantization steps, end to end, with their outputs (names as the seed's platform writes them):

====================  ===================================================================
step 0 ``with-bn``        float training with BatchNorm
step 1 ``fusion-bn-c1``   shared backbone's BN folded, fake-quantized (int8) fine-tuning
step 2 ``fusion-bn-c2``   heads' BN folded too, fine-tuning (the GPU prediction model)
step 3 ``int-inference``  integer model converted from step 2; no training
====================  ===================================================================

Each trained step writes ``<step>-NNNN.params`` per epoch, ``<step>-last-0000.params`` at its end (its
presence marks the step done: a restarted run skips it), and ``<step>-export-last-symbol.json`` +
``<step>-export-last-0000.params`` (the hybridized graph with every head). ``metrics.json`` gathers the
figures of all steps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from aidi.dataspace.checkpoints import RANK_FILE_ENV
from aidi.errors import AidiError
from aidi.jobs.progress import Writer
from aidi_trainer import quant
from aidi_trainer.data import TaskDataset, make_loader, train_batches
from aidi_trainer.engine import StepPlan, atomic_save, iterations_per_epoch, saved_epoch, train_step
from aidi_trainer.intmodel import IntNet
from aidi_trainer.model import AllHeads, MultiTaskNet
from aidi_trainer.runtime import Runtime
from aidi_trainer.train_config import STEP_NAMES, TrainConfig, check_classes, load_datasets
from aidi_trainer.validation import evaluate_task

log = logging.getLogger("aidi_trainer")

# Step 3 must reproduce step 2: per head, |int - fake-quant| <= INT_TOLERANCE * max|fake-quant| for
# every output element. Both compute the same integers with the same float32 ops (quant.py), so the
# outputs are equal in practice; the tolerance only leaves room for a different conv kernel's order
# of summing the final float products.
INT_TOLERANCE = 1e-5


class IntMismatch(AidiError):
    """Step 3's integer model does not reproduce step 2's outputs."""

    exit_code = 9


def last_params(out: Path, step: str) -> Path:
    return out / f"{step}-last-0000.params"


def export_prefix(out: Path, step: str) -> Path:
    return out / f"{step}-export-last"


def step_done(out: Path, step: str) -> bool:
    prefix = export_prefix(out, step)
    return all(p.is_file() for p in (last_params(out, step), Path(f"{prefix}-symbol.json"),
                                     Path(f"{prefix}-0000.params")))


class Pipeline:
    def __init__(self, config: TrainConfig, runtime: Runtime, output: Path, pipeline_test: bool = False) -> None:
        self.config, self.runtime, self.out, self.pipeline_test = config, runtime, output, pipeline_test
        self.out.mkdir(parents=True, exist_ok=True)
        rank_file = os.environ.get(RANK_FILE_ENV)
        if rank_file:  # the pod's checkpoint and output sync act where the chief runs, whichever pod it is
            atomic_save(Path(rank_file), lambda p: Path(p).write_text(f"{runtime.rank}\n"))
        mx.random.seed(config.seed)
        np.random.seed(config.seed)
        self.net = MultiTaskNet(config.backbone, config.heads(), config.head_channels)
        self.net.initialize(mx.init.Xavier(magnitude=2.0), ctx=runtime.ctxs)
        scenes = [scene for task in config.tasks.values() for scene in task.scenes]
        # --pipeline-test trains on the validation set: small, and there whatever the job packed.
        train_split = "val" if pipeline_test else "train"
        train_files = load_datasets(config.datasets, scenes, train_split)
        val_files = load_datasets(config.datasets, scenes, "val")
        check_classes(config.tasks, train_files)
        self.train_sets = {name: TaskDataset(task, train_files, config.input_size, self.net.stride, True, config.seed)
                           for name, task in config.tasks.items()}
        self.val_sets = {name: TaskDataset(task, val_files, config.input_size, self.net.stride, False)
                         for name, task in config.tasks.items()}
        # Every branch's loader stands at the same batch number: each iteration and each calibration
        # round takes one batch of every branch. A resumed run moves them to where the interrupted run
        # stood (``_seek``), so it trains on the same batches as a run that never stopped.
        self.batches: dict[str, Iterator[Any]] = {}
        self.position = -1
        self._seek(0)
        self.metrics: dict[str, Any] = {
            "config": str(config.path), "pipeline_test": pipeline_test, "ctx": [str(c) for c in runtime.ctxs],
            "workers": runtime.num_workers, "tasks": {n: t.classes for n, t in config.tasks.items()},
            "train_samples": {n: len(ds) for n, ds in self.train_sets.items()},
            "steps": {},
        }
        # Progress records (docs/progress.md): every worker logs them (the runners read worker 0's log, and the
        # chief, ps-lite's rank 0, need not be worker 0); only the chief writes the output folder's file.
        self.records = Writer(self.out, log.info, to_file=runtime.chief)
        metrics_file = self.out / "metrics.json"
        if metrics_file.is_file():  # a resumed run keeps the figures of the steps already done
            self.metrics["steps"] = json.loads(metrics_file.read_text()).get("steps", {})

    # ----------------------------------------------------------------------------------- steps

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        step_start = 0  # the batch number at which the current step's calibration, then training, begins
        plans = [self._plan(index, name) for index, name in enumerate(STEP_NAMES[:3])]
        totals = [p.epochs * p.iters_per_epoch for p in plans]
        for index, plan in enumerate(plans):
            plan.global_offset, plan.later_iterations = sum(totals[:index]), sum(totals[index + 1:])
        self._record("plan", steps=[{"step": p.index, "name": p.name, "epochs": p.epochs,
                                     "iterations": p.epochs * p.iters_per_epoch} for p in plans])
        for index, name in enumerate(STEP_NAMES[:3]):
            self._prepare(index)
            plan = plans[index]
            calibration = self.config.calibration_batches if index else 0
            training_start = step_start + calibration
            done = self.runtime.agree(index, 1, float(step_done(self.out, name)) if self.runtime.chief else 0.0)
            if done:
                log.info("[%s] already done (%s exists): skipping", name, last_params(self.out, name).name)
                if self.runtime.chief:
                    self.net.load_parameters(str(last_params(self.out, name)), ctx=self.runtime.ctxs)
            else:
                if index and not saved_epoch(self.out, name):
                    self._seek(step_start)
                    self._calibrate(self.net.backbone if index == 1 else self.net.heads)
                start_epoch = int(self.runtime.agree(index, 0, saved_epoch(self.out, name)
                                                     if self.runtime.chief else 0))
                self._seek(training_start + start_epoch * plan.iters_per_epoch)
                self._train(plan, start_epoch)
            step_start = training_start + plan.epochs * plan.iters_per_epoch
        if self.runtime.chief:
            self._int_inference()
            self.metrics["seconds"] = round(time.perf_counter() - started, 1)
            self._write_metrics()
            self._record("done", seconds=self.metrics["seconds"])
        log.info("done: %s", ", ".join(STEP_NAMES))
        return self.metrics

    def _prepare(self, index: int) -> None:
        """Put the network in step ``index``'s form: fold the backbone's BN (1), then the heads' (2)."""
        if index == 1:
            quant.fold_and_quantize(self.net.backbone)
        elif index == 2:
            quant.fold_and_quantize(self.net.heads)

    def _calibrate(self, part: Any) -> None:
        """Set the activation scales of ``part`` from the max |x| over a few training batches."""
        units = quant.units(part)
        self.net.hybridize(False)
        for unit in units:
            unit.calibrating = True
        ctx = self.runtime.ctxs[0]
        for _ in range(self.config.calibration_batches):
            for task, it in self.batches.items():
                self.net(next(it)[0].as_in_context(ctx), task)
        self.position += self.config.calibration_batches
        for unit in units:
            unit.finish_calibration()
        self.net.link_scales()
        log.info("calibrated %d activation scales on %d batches per branch", len(units),
                 self.config.calibration_batches)

    def _plan(self, index: int, name: str) -> StepPlan:
        step = self.config.steps[name]
        sizes = {task: len(ds) // self.runtime.num_workers for task, ds in self.train_sets.items()}
        return StepPlan(name, index, step.epochs,
                        iterations_per_epoch(sizes, self.config.batch_size * len(self.runtime.ctxs), step.max_iters),
                        step.lr, self.config.wd, {n: t.weight for n, t in self.config.tasks.items()},
                        self.config.log_interval)

    def _seek(self, position: int) -> None:
        """Have every branch's loader hand out batch number ``position`` next."""
        if position == self.position:
            return
        batch = self.config.batch_size * len(self.runtime.ctxs)
        self.batches = {name: train_batches(ds, batch, self.config.workers, self.runtime.rank,
                                            self.runtime.num_workers, self.config.seed + i, start=position)
                        for i, (name, ds) in enumerate(self.train_sets.items())}
        self.position = position

    def _train(self, plan: StepPlan, start_epoch: int) -> None:
        name = plan.name
        log.info("[%s] step %d: %d epochs × %d iterations, lr %g", name, plan.index, plan.epochs,
                 plan.iters_per_epoch, plan.lr)
        self.net.hybridize()
        self._record("step", step=plan.index, name=name, epochs=plan.epochs,
                     iterations=plan.epochs * plan.iters_per_epoch, global_start=plan.global_offset,
                     resumed_epoch=start_epoch)
        result = train_step(self.net, plan, self.runtime, self.batches, self.out, start_epoch, self.records)
        self.position += (plan.epochs - start_epoch) * plan.iters_per_epoch
        if not self.runtime.chief:
            return
        val = {task: evaluate_task(self.net, task, spec.kind, spec.num_classes, self._val_batches(task),
                                   self.runtime.ctxs[0], self.net.stride)
               for task, spec in self.net.specs.items()}
        for task, figures in val.items():
            log.info("[%s] val %s: %s", name, task, " ".join(f"{k} {v:.4g}" for k, v in figures.items()))
        self._record("val", step=plan.index, name=name,
                     global_iteration=plan.global_offset + plan.epochs * plan.iters_per_epoch, branches=val)
        self._export(AllHeads(self.net), name)
        atomic_save(last_params(self.out, name), self.net.save_parameters)
        self.metrics["steps"][name] = {"train": result.as_dict(), "val": val}
        self._write_metrics()

    def _val_batches(self, task: str) -> Any:
        return make_loader(self.val_sets[task], self.config.batch_size, self.config.workers, shuffle=False)

    def _export(self, block: mx.gluon.HybridBlock, name: str) -> None:
        width, height = self.config.input_size
        block.hybridize()
        block(mx.nd.zeros((1, 3, height, width), ctx=self.runtime.ctxs[0]))
        block.export(str(export_prefix(self.out, name)))
        log.info("[%s] exported %s-symbol.json / -0000.params", name, export_prefix(self.out, name))

    def _int_inference(self) -> None:
        name = STEP_NAMES[3]
        int_net = IntNet(self.net)
        reference = AllHeads(self.net)
        reference.hybridize()
        int_net.hybridize()
        ctx = mx.cpu()
        self.net.collect_params().reset_ctx(ctx)
        worst: dict[str, float] = {}
        elements = 0
        for task in self.net.specs:
            for batch in self._val_batches(task):
                data = batch[0].as_in_context(ctx)
                for head, ref, got in zip(self.net.specs, reference(data), int_net(data), strict=True):
                    scale = max(float(ref.abs().max().asscalar()), 1e-6)
                    rel = float((ref - got).abs().max().asscalar()) / scale
                    worst[head] = max(worst.get(head, 0.0), rel)
                    elements += ref.size
        self.net.collect_params().reset_ctx(self.runtime.ctxs)
        log.info("[%s] integer model vs step 2, max |diff| / max |output| per head: %s (tolerance %g)", name,
                 " ".join(f"{k} {v:.2e}" for k, v in worst.items()), INT_TOLERANCE)
        self.metrics["steps"][name] = {"max_rel_diff_vs_fusion_bn_c2": worst, "tolerance": INT_TOLERANCE,
                                       "compared_elements": elements}
        bad = {k: v for k, v in worst.items() if v > INT_TOLERANCE}
        if bad:
            self._write_metrics()
            raise IntMismatch(f"[{name}] the integer model differs from fusion-bn-c2 beyond the tolerance "
                              f"{INT_TOLERANCE} on {sorted(bad)} ({bad}); its export is not written. This is a bug: "
                              "report it with metrics.json")
        width, height = self.config.input_size
        int_net(mx.nd.zeros((1, 3, height, width)))
        int_net.export(str(export_prefix(self.out, name)))
        log.info("[%s] exported %s-symbol.json / -0000.params", name, export_prefix(self.out, name))

    def _record(self, kind: str, **fields: Any) -> None:
        if self.records is not None:
            self.records.write(kind, **fields)

    def _write_metrics(self) -> None:
        atomic_save(self.out / "metrics.json", lambda p: Path(p).write_text(json.dumps(self.metrics, indent=2)))
