"""``python -m aidi_trainer`` — what ``tools/quanti_training_2step_fusion_bn.sh`` runs.

    bash tools/quanti_training_2step_fusion_bn.sh --config configs/4pe_resize/multitask.py --ctx 0,1,2,3
    bash tools/quanti_training_2step_fusion_bn.sh --config configs/4pe_resize/multitask.py --ctx cpu --pipeline-test
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aidi import cmdline

DESCRIPTION = """\
Multitask quantization training in 4 steps: 0 float with BN (with-bn), 1 backbone BN folded and
fake-quantized int8 fine-tuning (fusion-bn-c1), 2 heads' BN folded too (fusion-bn-c2, the GPU
prediction model), 3 conversion to an integer-inference model (int-inference, the model to compile).
A restarted run resumes from the last checkpoint in --output.
"""

EPILOG = """\
examples:
  # the sample data, packed by tools/pipeline.sh into data/rec/, on the CPU, fast:
  bash tools/quanti_training_2step_fusion_bn.sh --config configs/4pe_resize/multitask.py --ctx cpu --pipeline-test
  # a job's pod (4 GPUs; outputs synced to the dataspace):
  bash tools/quanti_training_2step_fusion_bn.sh --config configs/4pe_resize/multitask.py --ctx 0,1,2,3

Several workers: set DMLC_ROLE, DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER, DMLC_NUM_WORKER
(the operator does) and run the same command in every pod; scheduler and server pods serve the kvstore.
Reference: docs/trainer.md
"""

DATA_SPACE_OUTPUT = Path("/data_space/output")


def default_output() -> Path:
    """``$AIDI_OUTPUT_DIR``; else ``/data_space/output`` in a job's pod; else ``./output``."""
    if os.environ.get("AIDI_OUTPUT_DIR"):
        return Path(os.environ["AIDI_OUTPUT_DIR"])
    return DATA_SPACE_OUTPUT if DATA_SPACE_OUTPUT.is_dir() else Path("output")


def default_ctx() -> str:
    import mxnet as mx

    gpus = mx.context.num_gpus()
    return ",".join(str(i) for i in range(gpus)) if gpus else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = cmdline.new_parser("quanti_training_2step_fusion_bn.sh", DESCRIPTION, EPILOG)
    parser.add_argument("--config", required=True, type=Path, help="the training config (a Python file)")
    parser.add_argument("--ctx", default=None,
                        help="`cpu` or GPU ids, e.g. `0,1,2,3` (default: every GPU MXNet sees, else cpu)")
    parser.add_argument("--pipeline-test", action="store_true",
                        help="run all 4 steps fast on the validation set (low accuracy; for debugging)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for checkpoints, export models and metrics.json (default: $AIDI_OUTPUT_DIR, "
                             "else /data_space/output when it exists, else ./output)")
    parser.add_argument("--datasets", type=Path, default=None,
                        help="the datasets.yaml naming each scene's rec files (default: the config's `datasets`, "
                             "datasets.yaml beside the config)")
    parser.add_argument("--check", action="store_true",
                        help="check the config, datasets and devices, print the plan and exit without training")
    cmdline.add_json(parser)
    parser.set_defaults(func=run_train)
    return parser


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("aidi_trainer")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run_train(args: argparse.Namespace) -> int:
    import warnings

    # Folded BatchNorms keep their (unused) parameters so every step's checkpoint loads into one network.
    warnings.filterwarnings("ignore", message=".*is not used by any computation.*")
    from aidi_trainer.pipeline import Pipeline
    from aidi_trainer.runtime import make_runtime, parse_ctx
    from aidi_trainer.train_config import check_classes, load_config, load_datasets

    _configure_logging()
    config = load_config(args.config, args.pipeline_test, args.datasets)
    ctxs = parse_ctx(args.ctx or default_ctx())
    output = args.output or default_output()
    if args.check:
        scenes = [scene for task in config.tasks.values() for scene in task.scenes]
        files = {split: load_datasets(config.datasets, scenes, split) for split in ("train", "val")}
        check_classes(config.tasks, files["train"])
        plan = {"config": str(config.path), "datasets": str(config.datasets), "ctx": [str(c) for c in ctxs],
                "output": str(output), "pipeline_test": args.pipeline_test,
                "tasks": {name: task.classes for name, task in config.tasks.items()},
                "rec": {split: {s: str(f.rec) for s, f in found.items()} for split, found in files.items()}}
        cmdline.print_json(plan) if args.json else print("\n".join(f"{k}: {v}" for k, v in plan.items()))
        return 0
    metrics = Pipeline(config, make_runtime(ctxs), output, args.pipeline_test).run()
    if args.json:
        cmdline.print_json(metrics)
    elif metrics.get("steps"):
        print(f"4 steps done in {metrics.get('seconds', 0)} s; checkpoints, export models and metrics.json "
              f"in {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cmdline.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
