"""Code-package cost: what encryption adds to packing, and what checked unpacking costs, against GNU tar.

    .venv/bin/python bench/codepkg.py              # a 64 MiB code folder (configs, scripts, a few weights)
    .venv/bin/python bench/codepkg.py --mb 16

Side by side in one run, on the same folder:
- submit side: `codepkg.build` (pack + AES-256-GCM encrypt) against `tar czf` of the folder;
- pod side: `codepkg.unpack_encrypted` (decrypt + check every entry + extract) against `tar xzf`.
Both trees are compared after unpacking. Prints seconds and MB/s for each and the ratio ours / tar
(no target: the figure says whether packages of this size are worth optimising).
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aidi.jobs import codepkg  # noqa: E402

MB = 1024 * 1024


def make_folder(root: Path, total_mb: int) -> int:
    """Half incompressible weights, half source-like text in many small files. Returns the byte count."""
    (root / "weights").mkdir(parents=True)
    (root / "scripts" / "configs").mkdir(parents=True)
    size = 0
    for i in range(max(1, total_mb // 8)):
        data = os.urandom(4 * MB)
        (root / "weights" / f"part-{i}.params").write_bytes(data)
        size += len(data)
    line = b"for epoch in range(num_epochs):  # train the multitask model, log each loss term\n"
    for i in range(total_mb * MB // 2 // 16384):
        text = line * (16384 // len(line))
        (root / "scripts" / "configs" / f"module_{i:05d}.py").write_bytes(text)
        size += len(text)
    return size


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64, help="size of the code folder (default: 64)")
    args = parser.parse_args()
    if not shutil.which("tar"):
        print("GNU tar is needed for the baseline", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="aidi-bench-codepkg-") as tmp:
        work = Path(tmp)
        src = work / "code"
        size = make_folder(src, args.mb)
        mb = size / MB
        print(f"code folder: {mb:.0f} MiB, {sum(1 for _ in src.rglob('*') if _.is_file())} files")

        (work / "ours").mkdir()
        result: list[codepkg.EncryptedPackage] = []
        ours_pack = timed(lambda: result.append(codepkg.build(src, "bench-password", work / "ours")))
        tar_file = work / "baseline.tar.gz"
        tar_pack = timed(lambda: subprocess.run(["tar", "czf", str(tar_file), "-C", str(src), "."], check=True))

        ours_unpack = timed(lambda: codepkg.unpack_encrypted(result[0].path, "bench-password", work / "out-ours",
                                                             sha256=result[0].sha256))
        (work / "out-tar").mkdir()
        tar_unpack = timed(lambda: subprocess.run(["tar", "xzf", str(tar_file), "-C", str(work / "out-tar")],
                                                  check=True))
        same = all((work / "out-ours" / p.relative_to(src)).read_bytes() == p.read_bytes()
                   for p in src.rglob("*") if p.is_file())
        print(f"{'':28} {'ours':>18} {'tar (baseline)':>18} {'ours/tar':>9}")
        for label, ours, base in (("pack (+ encrypt)", ours_pack, tar_pack),
                                  ("unpack (decrypt + checks)", ours_unpack, tar_unpack)):
            print(f"{label:28} {ours:7.2f}s {mb / ours:6.0f} MB/s {base:7.2f}s {mb / base:6.0f} MB/s "
                  f"{ours / base:8.2f}x")
        print(f"package: {result[0].size / MB:.1f} MiB encrypted, tar.gz {tar_file.stat().st_size / MB:.1f} MiB; "
              f"unpacked tree identical: {same}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
