"""Dataspace transfer speed: `Dataspace.upload_dataset` / `download_dataset` against a plain sequential
loop of `minio.fput_object` / `fget_object`, on the same local SeaweedFS, in one run.

    .venv/bin/python bench/dataspace.py                 # about 1 GB in 200 files (needs ~4 GB free)
    .venv/bin/python bench/dataspace.py --mb 200 --files 40

Both sides move the same files; every downloaded file is checked against the source's sha256 (ours does
it while downloading and inside the timing; the baseline's check runs after its timing). Prints MB/s for
each and the ratio (target: at least 2x for upload and for download).

Rounds alternate the order (baseline first, then ours first, ...) because SeaweedFS grows costlier per
byte as it fills. Each phase's CPU seconds are counted for the client (this process) and the server
(the `weed` process): on a machine where the server shares the client's cores, a transfer cannot take
less wall time than (client + server CPU) / cores, so the run also prints the ratio that bound allows.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
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


class Phase:
    """Wall seconds and CPU seconds of the client (this process) and the server over one phase."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall = self.client = self.server = 0.0

    def __enter__(self) -> Phase:
        self.wall, self.client, self.server = time.monotonic(), _own_cpu(), _process_cpu(self.server_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.wall
        self.client = _own_cpu() - self.client
        self.server = _process_cpu(self.server_pid) - self.server

    def bound(self) -> float:
        """The least wall time this much CPU needs on this machine's cores."""
        return (self.client + self.server) / (os.cpu_count() or 1)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline(s3: SeaweedFS, src: Path, dest: Path, rels: list[str], bucket: str) -> tuple[Phase, Phase]:
    client = Minio(s3.host, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
    client.make_bucket(bucket)
    with Phase(s3.process.pid) as up:
        for rel in rels:
            client.fput_object(bucket, rel, str(src / rel))
    with Phase(s3.process.pid) as down:
        for rel in rels:
            client.fget_object(bucket, rel, str(dest / rel))
    return up, down


def ours(s3: SeaweedFS, src: Path, dest: Path, jobs: int, bucket: str) -> tuple[Phase, Phase]:
    config = DataspaceConfig(endpoint=s3.endpoint, bucket=bucket, access_key=s3.access_key, secret_key=s3.secret_key)
    ds = open_dataspace(config, jobs=jobs)
    ds.store.check(create=True)
    with Phase(s3.process.pid) as up:
        result = ds.upload_dataset("bench", "trainset", src)
    assert result.transferred_files == len(result.manifest.files)
    with Phase(s3.process.pid) as down:
        ds.download_dataset("bench", "trainset", "latest", dest)  # verifies every sha256 on the way
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
        rounds: list[dict[str, tuple[Phase, Phase]]] = []
        with SeaweedFS(work / "seaweedfs") as s3:
            for index in range(args.rounds):
                runs: dict[str, tuple[Phase, Phase]] = {}
                for who in ("baseline", "ours") if index % 2 == 0 else ("ours", "baseline"):
                    dest = work / f"{who}{index}"
                    if who == "baseline":
                        runs[who] = baseline(s3, src, dest, rels, f"baseline{index}")
                    else:
                        runs[who] = ours(s3, src, dest, args.jobs, f"ours{index}")
                    verify(dest, hashes)
                    shutil.rmtree(dest)
                rounds.append(runs)
                (base_up, base_down), (our_up, our_down) = runs["baseline"], runs["ours"]
                print(f"round {index + 1} ({' first, '.join(runs)} second): upload {total / base_up.wall:.1f} vs "
                      f"{total / our_up.wall:.1f} MB/s ({base_up.wall / our_up.wall:.2f}x), download "
                      f"{total / base_down.wall:.1f} vs {total / our_down.wall:.1f} MB/s "
                      f"({base_down.wall / our_down.wall:.2f}x), load average {os.getloadavg()[0]:.1f}", flush=True)
        print(f"\n{args.files} files, {total:.0f} MiB in {work.parent}, SeaweedFS on loopback, {os.cpu_count()} CPUs, "
              f"our jobs={args.jobs}; every file verified by sha256; median of {len(rounds)} round(s)")
        print(f"{'':10}{'sequential minio':>18}{'aidi.dataspace':>16}{'ratio':>8} | CPU s: client, server "
              f"(baseline; ours) | ratio the CPU bound allows")
        for phase, name in ((0, "upload"), (1, "download")):
            runs = sorted(rounds, key=lambda r: r["baseline"][phase].wall / r["ours"][phase].wall)[len(rounds) // 2]
            base, our = runs["baseline"][phase], runs["ours"][phase]
            print(f"{name:10}{total / base.wall:>13.1f} MB/s{total / our.wall:>11.1f} MB/s"
                  f"{base.wall / our.wall:>7.2f}x | {base.client:.2f}, {base.server:.2f}; {our.client:.2f}, "
                  f"{our.server:.2f} | "
                  f"{base.wall / our.bound():.2f}x")
        print("the bound: the baseline's wall time over (our client + server CPU seconds) / cores; a ratio at the "
              "bound means the cores, not the transfers, are the limit")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
