"""Dataspace transfer speed: `Dataspace.upload_dataset` / `download_dataset` against a plain sequential
loop of `minio.fput_object` / `fget_object`, on the same local SeaweedFS, in one run.

    .venv/bin/python bench/dataspace.py                 # about 1 GB in 200 files (needs ~4 GB free)
    .venv/bin/python bench/dataspace.py --mb 200 --files 40

Both sides move the same files; every downloaded file is checked against the source's sha256 (ours does
it while downloading and inside the timing; the baseline's check runs after its timing). Prints MB/s for
each and the ratio (target: at least 2x for upload and for download).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from minio import Minio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aidi.dataspace import DataspaceConfig, open_dataspace  # noqa: E402
from aidi.recordio import RecordWriter  # noqa: E402
from tests.support.seaweedfs import SeaweedFS  # noqa: E402

MB = 1024 * 1024
RECORD_BYTES = 64 * 1024


def make_files(root: Path, total_mb: int, count: int) -> dict[str, str]:
    """``count`` RecordIO files of random 64 KiB records adding up to ``total_mb`` (the dataspace counts
    their records, as it does for packed data); returns {relative path: sha256}."""
    records_per_file = max(1, total_mb * MB // count // RECORD_BYTES)
    hashes = {}
    for i in range(count):
        rel = f"scene-{i % 8}/part-{i:04d}.rec"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with RecordWriter(root / rel) as writer:
            for _ in range(records_per_file):
                writer.write(os.urandom(RECORD_BYTES))
        hashes[rel] = sha256(root / rel)
    return hashes


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(MB):
            digest.update(chunk)
    return digest.hexdigest()


def verify(root: Path, hashes: dict[str, str]) -> None:
    bad = [rel for rel, digest in hashes.items() if sha256(root / rel) != digest]
    if bad:
        raise SystemExit(f"{len(bad)} files differ after download, e.g. {bad[0]}")


def baseline(s3: SeaweedFS, src: Path, dest: Path, rels: list[str], bucket: str) -> tuple[float, float]:
    client = Minio(s3.host, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
    client.make_bucket(bucket)
    start = time.monotonic()
    for rel in rels:
        client.fput_object(bucket, rel, str(src / rel))
    up = time.monotonic() - start
    start = time.monotonic()
    for rel in rels:
        client.fget_object(bucket, rel, str(dest / rel))
    down = time.monotonic() - start
    return up, down


def ours(s3: SeaweedFS, src: Path, dest: Path, jobs: int, bucket: str) -> tuple[float, float]:
    config = DataspaceConfig(endpoint=s3.endpoint, bucket=bucket, access_key=s3.access_key, secret_key=s3.secret_key)
    ds = open_dataspace(config, jobs=jobs)
    ds.store.check(create=True)
    start = time.monotonic()
    result = ds.upload_dataset("bench", "trainset", src)
    up = time.monotonic() - start
    assert result.transferred_files == len(result.manifest.files)
    start = time.monotonic()
    ds.download_dataset("bench", "trainset", "latest", dest)  # verifies every sha256 on the way
    down = time.monotonic() - start
    return up, down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="total size in MiB (default: 1024)")
    parser.add_argument("--files", type=int, default=200, help="number of files (default: 200)")
    parser.add_argument("-j", "--jobs", type=int, default=8, help="our parallel transfers (default: 8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported "
                        "(default: 3)")
    parser.add_argument("--workdir", help="folder in which a temporary folder holds the files and the server's "
                        "data, removed at the end (default: the system's temporary folder; /dev/shm takes the "
                        "disk out of the measurement)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aidi-bench-dataspace-", dir=args.workdir))
    need = args.mb * MB * (3 + 2 * args.rounds)
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"{work} has less than {need // MB} MiB free; pass --workdir or a smaller --mb")
    try:
        src = work / "src"
        print(f"writing {args.files} files, {args.mb} MiB in all, under {src} ...", flush=True)
        hashes = make_files(src, args.mb, args.files)
        total = sum((src / rel).stat().st_size for rel in hashes) / MB
        rels = sorted(hashes)
        rounds = []
        with SeaweedFS(work / "seaweedfs") as s3:
            # Rounds alternate baseline and ours, so that load from elsewhere on a shared machine hits both.
            for index in range(args.rounds):
                base_up, base_down = baseline(s3, src, work / f"baseline{index}", rels, f"baseline{index}")
                verify(work / f"baseline{index}", hashes)
                shutil.rmtree(work / f"baseline{index}")
                our_up, our_down = ours(s3, src, work / f"ours{index}", args.jobs, f"ours{index}")
                verify(work / f"ours{index}", hashes)
                shutil.rmtree(work / f"ours{index}")
                rounds.append((base_up, our_up, base_down, our_down))
                load = os.getloadavg()[0]
                print(f"round {index + 1}: upload {total / base_up:.1f} vs {total / our_up:.1f} MB/s "
                      f"({base_up / our_up:.2f}x), download {total / base_down:.1f} vs {total / our_down:.1f} MB/s "
                      f"({base_down / our_down:.2f}x), load average {load:.1f}", flush=True)
        median = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]
        median_down = sorted(rounds, key=lambda r: r[2] / r[3])[len(rounds) // 2]
        print(f"\n{args.files} files, {total:.0f} MiB in {work.parent}, SeaweedFS on loopback, {os.cpu_count()} CPUs, "
              f"our jobs={args.jobs}; every file verified by sha256; median of {len(rounds)} round(s)")
        print(f"{'':10}{'sequential minio':>18}{'aidi.dataspace':>16}{'ratio':>8}")
        for name, base, our in (("upload", median[0], median[1]), ("download", median_down[2], median_down[3])):
            print(f"{name:10}{total / base:>13.1f} MB/s{total / our:>11.1f} MB/s{base / our:>7.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
