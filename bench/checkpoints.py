"""Checkpoint copy cost during training: what one more epoch costs to copy to the dataspace, ours (a checkpoint
that sends only the files not sent before, `aidi.dataspace.checkpoints`) against the baseline of uploading the
whole output folder again as a dataset version (`Dataspace.upload_dataset`, what `aidi sync-output` does), on
the same local SeaweedFS, in one run.

    .venv/bin/python bench/checkpoints.py                  # 20 epochs of 2 x 8 MB (params + states)
    .venv/bin/python bench/checkpoints.py --epochs 40 --mb 16

Both copy the folder as it stands after each epoch; the figures are the seconds and bytes of the last copy
(the folder then holds every epoch) and their sum over the run, and the ratio baseline / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aidi.dataspace import DataspaceConfig, open_dataspace  # noqa: E402
from aidi.dataspace import checkpoints as ckpt  # noqa: E402
from tests.support.seaweedfs import SeaweedFS  # noqa: E402

MB = 1024 * 1024


def write_epoch(out: Path, epoch: int, size: int) -> None:
    for ext in ("params", "states"):
        (out / f"with-bn-{epoch:04d}.{ext}").write_bytes(os.urandom(size))
    (out / "with-bn-progress.json").write_text(json.dumps({"epoch": epoch}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--mb", type=int, default=8, help="size of each .params and .states file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aidi-bench-ckpt-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        with SeaweedFS(work / "seaweedfs") as s3:
            config = DataspaceConfig(endpoint=s3.endpoint, bucket="bench", access_key=s3.access_key,
                                     secret_key=s3.secret_key)
            ds = open_dataspace(config, jobs=4)
            ds.store.check(create=True)
            store = ckpt.CheckpointStore(ds.store, "checkpoints/bench/job/uid/")
            ours = base = 0.0
            ours_last = base_last = 0.0
            previous = None
            seen: ckpt.Seen = {}
            for epoch in range(1, args.epochs + 1):
                write_epoch(out, epoch, args.mb * MB)
                start = time.perf_counter()
                previous = ckpt.sync_once(store, out, 0, previous=previous, seen=seen) or previous
                ours_last = time.perf_counter() - start
                start = time.perf_counter()
                ds.upload_dataset("bench_models", "dataset", out)
                base_last = time.perf_counter() - start
                ours, base = ours + ours_last, base + base_last
            ds.close()
    folder = 2 * args.epochs * args.mb
    print(f"{args.epochs} epochs of 2 x {args.mb} MB; the folder ends at {folder} MB")
    print(f"last epoch's copy: ours {ours_last:.2f} s (sends {2 * args.mb} MB), "
          f"baseline {base_last:.2f} s (sends {folder} MB): {base_last / ours_last:.1f}x")
    print(f"all copies of the run: ours {ours:.1f} s, baseline {base:.1f} s: {base / ours:.1f}x")


if __name__ == "__main__":
    main()
