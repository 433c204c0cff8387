"""`aidi predict` and `aidi compile`: run and compile trained models.

Both need MXNet, which workstations may not have: the work lives in the trainer package. ``aidi`` never
imports it by name (dependencies point one way); the trainer offers these two functions as the entry points
of group ``aidi.trainer`` (pyproject.toml), loaded only when one of these commands runs, so ``aidi`` itself
starts without MXNet.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from aidi import cmdline
from aidi.errors import UsageError

PREDICT_EPILOG = """\
examples:
  aidi predict --model output/fusion-bn-c2-export-last --rec data/rec/vehicle/val.rec --out val_pr.json
  aidi eval --gt data/rec/vehicle/val.rec --pr val_pr.json --out eval/vehicle

The rec's manifest.json (from `aidi pack`) names its scene; the branch of --config that trained on it is
used and only the scene's classes are reported. Output format (aidi-pr/1): docs/phase2.md.
"""

COMPILE_EPILOG = """\
examples:
  aidi compile --model output/int-inference-export-last --target onnx --rec data/rec/vehicle/val.rec --out compiled/
  aidi compile --model output/int-inference-export-last --target onnx --rec data/rec/vehicle/val.rec \\
      --model-name adasmini_4pe_multitask --model-version latest     # also store it with that model version

Writes model.onnx (QuantizeLinear/DequantizeLinear around int8 weights and activations), runs it with
onnxruntime against MXNet on the sample images and writes compile.log and compile.json (max abs
difference per output, detection and pixel agreement). Exit code 1 when the check fails.
"""


# The trainer's entry points (pyproject.toml, [project.entry-points."aidi.trainer"]).
TRAINER_ENTRY_POINTS = "aidi.trainer"


def trainer_function(name: str) -> Callable[..., Any]:
    """``predict`` or ``compile`` from the installed trainer package, with MXNet imported only now."""
    found = entry_points(group=TRAINER_ENTRY_POINTS, name=name)
    try:
        if not found:
            raise ImportError(f"no entry point {name!r} in group {TRAINER_ENTRY_POINTS!r}: the trainer package "
                              "is not installed")
        function: Callable[..., Any] = next(iter(found)).load()
        return function
    except ImportError as exc:
        raise UsageError(f"this command runs the model with MXNet, which cannot be imported here ({exc}); install "
                         "the trainer extra (pip install 'aidi[trainer,compile]', Python 3.11) or run it in the job "
                         "image") from None


def run_predict(args: argparse.Namespace) -> int:
    result = trainer_function("predict")(
        args.model, args.rec, args.out, config_path=args.config, task=args.task, scene=args.scene, ctx=args.ctx,
        score_min=args.score_min, top_k=args.top_k)
    if args.json:
        cmdline.print_json(result)
        return 0
    what = f"{result['detections']} detections" if result["detections"] is not None else "masks"
    print(f"{result['out']}: {result['images']} images of scene {result['scene']} (branch {result['branch']}), "
          f"{what}, {result['images_per_second']:.1f} images/s")
    return 0


def run_compile(args: argparse.Namespace) -> int:
    report = trainer_function("compile")(
        args.model, args.target, Path(args.out), rec=args.rec, config_path=args.config, samples=args.samples,
        model_name=args.model_name, model_version=args.model_version, dataspace_config=args.dataspace_config,
        fuse_relu=args.fuse_relu)
    if args.json:
        cmdline.print_json(report)
    else:
        print(report["summary"])
    return 0 if report["check"]["passed"] else 1


def add_commands(sub: Any) -> None:
    from_config = "the training config the model was trained with (default: configs/4pe_resize/multitask.py)"
    pr = cmdline.subcommand(sub, "predict", run_predict, "predict a packed rec file with an exported model (MXNet)",
                           epilog=PREDICT_EPILOG)
    pr.add_argument("--model", required=True, metavar="PREFIX",
                    help="export prefix, e.g. output/fusion-bn-c2-export-last (its -symbol.json and -0000.params)")
    pr.add_argument("--rec", required=True, help="a .rec file written by `aidi pack` (manifest.json beside it)")
    pr.add_argument("--out", required=True, help="predictions JSON to write (parsing masks go to <stem>_masks/)")
    pr.add_argument("--config", default="configs/4pe_resize/multitask.py", help=from_config)
    pr.add_argument("--task", help="branch to read (default: the one that trained on the rec's scene)")
    pr.add_argument("--scene", help="scene of the rec (default: from its manifest.json)")
    pr.add_argument("--ctx", default="cpu", help="cpu (default) or a GPU id")
    pr.add_argument("--score-min", type=float, default=0.05, help="drop detections scoring below this (default 0.05)")
    pr.add_argument("--top-k", type=int, default=100, help="detections kept per image before NMS (default 100)")
    cmdline.add_json(pr)

    co = cmdline.subcommand(sub, "compile", run_compile,
                           "compile the integer-inference model to ONNX (QDQ) and check it against MXNet",
                           epilog=COMPILE_EPILOG)
    co.add_argument("--model", required=True, metavar="PREFIX", help="e.g. output/int-inference-export-last")
    co.add_argument("--target", default="onnx", choices=["onnx"], help="what to compile to (default: onnx)")
    co.add_argument("--out", default="compiled", help="folder for model.onnx and the check log (default: compiled)")
    co.add_argument("--rec", action="append", default=[],
                    help="sample images for the check (repeatable; default: random images)")
    co.add_argument("--samples", type=int, default=16, help="images checked per rec (default: 16)")
    co.add_argument("--config", default="configs/4pe_resize/multitask.py", help=from_config)
    co.add_argument("--fuse-relu", action="store_true",
                    help="quantize ReLU outputs to uint8 (zero point 0) instead of Relu + int8: onnxruntime then "
                         "runs integer QLinearConv kernels; saturates at 255 steps instead of the trainer's 127")
    co.add_argument("--model-name", help="also store the artefact and log with this released model (hitc model)")
    co.add_argument("--model-version", default="latest", help="its version (default: latest)")
    co.add_argument("--dataspace-config", metavar="CONFIG",
                    help="dataspace config for --model-name (default: ~/.olympus/config.yaml)")
    cmdline.add_json(co)
