"""`make demo`'s time against its target (15 minutes on 2 cores), and the local runner's cost.

    .venv/bin/python bench/demo.py [--images 200] [--workdir DIR] [--show]

Runs the demo in a fresh folder (its output goes to DIR/demo.log unless --show), prints each step's time,
the total against the 900 s target, then trains the same job directly — the example's run.sh on the packed
rec files, no cluster, no code package, no fetch or sync — as the baseline of the demo's training step
(submit + fetch + the 4 steps + sync + download), and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aidi.demo import TOOLKIT, Demo, summary_table

TARGET_SECONDS = 15 * 60


def direct_training(workdir: Path) -> float:
    """The trainer on the same packed data, without the local cluster around it."""
    datasets = workdir / "bench-datasets.yaml"
    shipped = (TOOLKIT / "scripts/auto_matrix_algo/configs/4pe_resize/datasets.yaml").read_text()
    datasets.write_text(shipped.replace("/data_space/input/adasmini_4pe/trainset/latest", str(workdir / "data/rec")))
    env = {**os.environ, "AIDI_CTX": "cpu", "PIPELINE_TEST": "1", "AIDI_PYTHON": sys.executable}
    start = time.monotonic()
    subprocess.run(["bash", str(TOOLKIT / "run.sh"), "--datasets", str(datasets), "--output",
                    str(workdir / "bench-output")], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--show", action="store_true", help="print the demo's own output")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aidi-bench-demo-"))
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    load = os.getloadavg()[0]
    with open(workdir / "demo.log", "w", encoding="utf-8") as log:
        demo = Demo(workdir, images=args.images, out=sys.stdout if args.show else log)
        start = time.monotonic()
        code = demo.run_all()
        total = time.monotonic() - start
    print(summary_table(demo.results, total))
    print(f"\ndemo total {total:6.1f} s   target {TARGET_SECONDS} s   demo/target {total / TARGET_SECONDS:.2f}x"
          f"   (load average at start {load:.1f}, {os.cpu_count()} cores)")
    train = next(r.seconds for r in demo.results if r.name.startswith("train"))
    direct = direct_training(workdir)
    print(f"training via the local cluster {train:6.1f} s   run.sh directly (baseline) {direct:6.1f} s   "
          f"ratio {train / direct:.2f}x")
    return code


if __name__ == "__main__":
    sys.exit(main())
