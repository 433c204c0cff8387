"""`aidi sample` and `aidi pack`: the synthetic adas_mini, and packing scenes into MXNet RecordIO."""

from __future__ import annotations

import argparse
import os
from typing import Any

from aidi import cmdline
from aidi.errors import UsageError
from aidi.progress import Progress

SAMPLE_EPILOG = """\
examples:
  aidi sample adas-mini --out data/adas_mini                # 200 images per scene, seed 0
  aidi sample adas-mini --out /tmp/am --images 20 --seed 7  # a tiny one for tests
the layout it writes (and `aidi pack` reads) is described in docs/packing.md
"""

PACK_EPILOG = """\
examples:
  aidi pack --config configs/4pe_vehicle/train.py
  aidi pack --config configs/4pe_vehicle/train.py --skip-bad     # pack the rest, list rejects in a file
  aidi pack --config configs/4pe_*/train.py -j 2                 # several scenes, one after another
outputs: <output>/{train,val}.{rec,idx} and <output>/manifest.json (see docs/packing.md).
A re-run with unchanged inputs and settings does nothing ("up to date"); --force repacks.
exit codes: 0 packed or up to date, 1 bad inputs (all listed; nothing written) or an output it cannot
write (full disk, read-only or forbidden folder), 2 bad config, 3 not found
"""


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 192x128, got {text!r}") from None
    return width, height


def run_sample(args: argparse.Namespace) -> int:
    from aidi.sample import SCENE_NAMES, generate

    scenes = args.scene or list(SCENE_NAMES)
    with Progress(args.images * len(scenes), "adas-mini", unit="img", enabled=not args.json) as bar:
        summary = generate(args.out, images=args.images, seed=args.seed, size=args.size, scenes=scenes,
                           progress=bar.update, jobs=args.jobs)
    if args.json:
        cmdline.print_json(summary.as_dict())
    else:
        print(f"wrote {sum(summary.images.values())} images in {len(summary.images)} scenes "
              f"({summary.size[0]}×{summary.size[1]}, seed {summary.seed}) to {summary.out}")
    return 0


def _summary_line(result: Any) -> str:
    if result.up_to_date:
        return (f"{result.scene}: up to date ({result.counts['train']} train + {result.counts['val']} val in "
                f"{result.output}); --force repacks")
    line = (f"{result.scene}: packed {result.packed} ({result.counts['train']} train + {result.counts['val']} val), "
            f"skipped {result.skipped}, errors {len(result.problems)} in {result.seconds:.1f} s "
            f"({result.rate():.0f} images/s) → {result.output}")
    if result.rejects_file:
        line += f"\n{result.scene}: rejects listed in {result.rejects_file}"
    for note in result.notes:
        line += f"\n{result.scene}: note: {note}"
    return line


def run_pack(args: argparse.Namespace) -> int:
    from aidi.pack import load_config, pack_scene

    if len(args.config) > 1 and (args.rejects or args.source or args.output):
        raise UsageError("--rejects, --source and --output name one scene's files; give one --config with them")
    results = []
    for path in args.config:
        config = load_config(path, source=args.source, output=args.output)
        bar = Progress(None, config.scene, unit="img", enabled=not args.json)

        def progress(done: int, total: int, bar: Progress = bar) -> None:
            bar.total = total
            bar.update(1)

        try:
            result = pack_scene(config, jobs=args.jobs, skip_bad=args.skip_bad, force=args.force,
                                rejects=args.rejects, config_path=path, progress=progress)
        finally:
            bar.close()
        results.append(result)
        if not args.json:
            print(_summary_line(result))
    if args.json:
        cmdline.print_json([r.as_dict() for r in results] if len(results) > 1 else results[0].as_dict())
    return 0


def add_commands(subparsers: Any) -> None:
    sample = cmdline.subcommand(subparsers, "sample", run_sample, "write synthetic sample data")
    kinds = sample.add_subparsers(title="datasets", metavar="DATASET", required=True)
    adas = cmdline.subcommand(kinds, "adas-mini", run_sample,
                             "a small synthetic adas_mini: 8 scenes of drawn objects and label masks",
                             description="Write a deterministic synthetic adas_mini: 6 detection scenes (JPEGs + "
                                         "COCO JSON) and 2 parsing scenes (JPEG + PNG mask pairs). Every class "
                                         "has its own colour and shape, so a small model learns them quickly.",
                             epilog=SAMPLE_EPILOG)
    adas.add_argument("--out", required=True, help="folder to write (e.g. data/adas_mini)")
    adas.add_argument("--images", type=int, default=200, metavar="N", help="images per scene (default: 200)")
    adas.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: 0)")
    adas.add_argument("--size", type=_size, default=(192, 128), metavar="WxH", help="image size (default: 192x128)")
    adas.add_argument("--scene", action="append", metavar="SCENE", help="only this scene (repeatable)")
    cmdline.add_jobs(adas, default=os.cpu_count() or 1)
    cmdline.add_json(adas)

    pack = cmdline.subcommand(subparsers, "pack", run_pack, "pack raw scenes into MXNet RecordIO (.rec/.idx)",
                             description="Pack a scene's images and annotations into {train,val}.{rec,idx} "
                                         "readable by MXNet, in parallel, with a manifest.json.",
                             epilog=PACK_EPILOG)
    pack.add_argument("-c", "--config", required=True, nargs="+", metavar="FILE",
                      help="pack config(s): configs/4pe_<scene>/train.py")
    cmdline.add_jobs(pack, default=os.cpu_count() or 1,
                    what="processes when re-encoding, threads for parsing masks; detection in pass-through "
                         "reads on one thread while two more per output file write and hash")
    pack.add_argument("--skip-bad", action="store_true",
                      help="pack the good images and write the rejects to a file instead of failing")
    pack.add_argument("--rejects", metavar="FILE",
                      help="where --skip-bad lists rejects (default: <output>/rejects.txt)")
    pack.add_argument("--force", action="store_true", help="repack even when the outputs are up to date")
    pack.add_argument("--source", metavar="DIR", help="override the config's source folder")
    pack.add_argument("--output", metavar="DIR", help="override the config's output folder")
    cmdline.add_json(pack)
