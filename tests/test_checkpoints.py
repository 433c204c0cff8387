"""Checkpoints in the dataspace (aidi/dataspace/checkpoints.py and the pod steps `aidi sync-checkpoints`,
`fetch-checkpoint`, `delete-checkpoints`), against the test S3 server: only complete files, a checkpoint visible
once whole, unchanged files uploaded once, a restore byte-exact, and the loop's last copy at the trainer's end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aidi.dataspace import DataspaceConfig, open_store
from aidi.dataspace import checkpoints as ckpt
from aidi.jobs import podsteps
from tests.test_podsteps import use_s3_dataspace

PREFIX = "checkpoints/team-a/job/uid-1/"


def write_epoch(out: Path, step: str, epoch: int, payload: bytes) -> None:
    """What the trainer writes per epoch, in its order: params, states, then the progress file."""
    (out / f"{step}-{epoch:04d}.params").write_bytes(payload)
    (out / f"{step}-{epoch:04d}.states").write_bytes(payload[::-1])
    (out / f"{step}-progress.json").write_text(json.dumps({"epoch": epoch}))


@pytest.fixture()
def s3(s3_server, monkeypatch: pytest.MonkeyPatch) -> DataspaceConfig:
    return use_s3_dataspace(s3_server, monkeypatch)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_snapshot_takes_complete_files_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_epoch(out, "with-bn", 1, b"w1")
    (out / "with-bn-last-0000.params").write_bytes(b"done")
    write_epoch(out, "fusion-bn-c1", 2, b"c2")
    (out / "fusion-bn-c1-0003.params.tmp").write_bytes(b"half")  # being written
    (out / "metrics.jsonl").write_bytes(b'{"step": 1}\n{"step": 2}\n{"ste')  # a record being appended
    # A progress file that names an epoch whose files are not there is no checkpoint.
    (out / "fusion-bn-c2-progress.json").write_text(json.dumps({"epoch": 1}))
    snap = ckpt.take_snapshot(out, tmp_path / "staging")
    assert sorted(snap.files) == ["fusion-bn-c1-0002.params", "fusion-bn-c1-0002.states",
                                  "fusion-bn-c1-progress.json", "metrics.jsonl", "with-bn-0001.params",
                                  "with-bn-0001.states", "with-bn-last-0000.params", "with-bn-progress.json"]
    assert snap.staged["metrics.jsonl"].read_bytes() == b'{"step": 1}\n{"step": 2}\n'
    assert snap.progress == {"with-bn": 1, "fusion-bn-c1": 2} and snap.done == ["with-bn"]
    assert ckpt.describe(snap.progress, snap.done, "fusion-bn-c1") == "step fusion-bn-c1 after epoch 2"
    assert ckpt.describe({"with-bn": 6}, ["with-bn"], "with-bn") == "after step with-bn"


def test_checkpoints_commit_once_whole_upload_changes_only_and_restore_byte_exact(
        s3: DataspaceConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    store = ckpt.CheckpointStore(open_store(s3), PREFIX)
    assert store.latest() is None
    write_epoch(out, "with-bn", 1, os.urandom(300_000))
    first = ckpt.sync_once(store, out, attempt=0)
    assert first is not None and first.number == 1 and first.summary == "step with-bn after epoch 1"
    assert ckpt.sync_once(store, out, attempt=0, previous=first) is None  # nothing changed: no new checkpoint

    write_epoch(out, "with-bn", 2, os.urandom(300_000))
    uploads: list[str] = []
    put_file = store.store.put_file

    def counted(key: str, *args: Any, **kwargs: Any) -> Any:
        uploads.append(key)
        return put_file(key, *args, **kwargs)

    monkeypatch.setattr(store.store, "put_file", counted)
    second = ckpt.sync_once(store, out, attempt=0, previous=first)
    assert second is not None and second.number == 2
    # Epoch 1's files were uploaded by the first copy only; the second sent what changed: epoch 2 and the progress.
    assert sorted(uploads) == sorted(store.object_key(second.files[f"with-bn-{name}"]["sha256"])
                                     for name in ("0002.params", "0002.states", "progress.json"))
    objects = {i.key for i in store.store.list(PREFIX + "objects/")}
    assert objects == {store.object_key(e["sha256"]) for c in (first, second) for e in c.files.values()}

    restored = tmp_path / "restored"
    latest = store.latest()
    assert latest is not None and latest.number == 2
    store.restore(latest, restored)
    assert files_of(restored) == files_of(out)

    # The manifest is create-only: a writer that missed checkpoint 2 takes the next free number, never overwrites.
    write_epoch(out, "with-bn", 3, b"three")
    third = ckpt.sync_once(store, out, attempt=1, previous=first)
    assert third is not None and third.number == 3 and store.read(2).files == second.files
    store.store.close()


def test_fetch_checkpoint_restores_the_newest_and_says_so_in_the_termination_message(
        s3: DataspaceConfig, tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    empty = podsteps.fetch_checkpoint(PREFIX, tmp_path / "fresh", message)
    assert empty.checkpoint is None and message.read_text() == ""

    out = tmp_path / "out"
    out.mkdir()
    write_epoch(out, "fusion-bn-c1", 3, b"weights")
    store = ckpt.CheckpointStore(open_store(s3), PREFIX)
    assert ckpt.sync_once(store, out, attempt=0) is not None
    # A damaged newest manifest is skipped for the one before it.
    store.store.put_bytes(PREFIX + "c000002.json", b"{not json")
    store.store.close()
    result = podsteps.fetch_checkpoint(PREFIX, tmp_path / "pod-output", message)
    assert json.loads(message.read_text()) == {"checkpoint": 1, "attempt": 0,
                                               "summary": "step fusion-bn-c1 after epoch 3"}
    assert result.files == 3 and files_of(tmp_path / "pod-output") == files_of(out)

    assert podsteps.delete_checkpoints(PREFIX) == 5
    assert podsteps.fetch_checkpoint(PREFIX, tmp_path / "again", message).checkpoint is None


def _sync_process(tmp_path: Path, out: Path, until: Path, interval: str, *extra: str,
                  worker: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([str(Path(sys.executable).parent / "aidi"), "sync-checkpoints", "--prefix", PREFIX,
                             "--src", str(out), "--attempt", "2", "--interval", interval, "--until", str(until),
                             *extra],
                            env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path),
                                              "AIDI_WORKER_INDEX": str(worker)},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(store: ckpt.CheckpointStore, number: int, timeout: float = 30) -> ckpt.Checkpoint:
    deadline = time.monotonic() + timeout
    while not store.numbers() or store.numbers()[-1] < number:
        assert time.monotonic() < deadline, f"no checkpoint {number}"
        time.sleep(0.2)
    return store.read(number)


def test_the_sync_loop_copies_each_epoch_and_a_last_time_when_the_trainer_ends(
        s3: DataspaceConfig, tmp_path: Path) -> None:
    out, until = tmp_path / "out", tmp_path / "exit-code"
    out.mkdir()
    store = ckpt.CheckpointStore(open_store(s3), PREFIX)
    proc = _sync_process(tmp_path, out, until, interval="0")
    try:
        write_epoch(out, "with-bn", 1, b"one")
        assert _wait_for(store, 1).progress == {"with-bn": 1}
        write_epoch(out, "with-bn", 2, b"two")
        assert _wait_for(store, 2).attempt == 2
        # The trainer is killed right after its next epoch: the last copy still takes it.
        write_epoch(out, "with-bn", 3, b"three")
        until.write_text("137\n")
        assert proc.wait(timeout=30) == 0, proc.stdout.read() if proc.stdout else ""
        assert store.latest() is not None and store.latest().progress == {"with-bn": 3}  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()

    # With a long interval only the first checkpoint is copied while it runs; SIGTERM (the pod deleted) makes a
    # last copy before it ends.
    proc = _sync_process(tmp_path, out, tmp_path / "never", interval="3600")
    try:
        write_epoch(out, "with-bn", 4, b"four")
        assert _wait_for(store, 4).progress == {"with-bn": 4}
        write_epoch(out, "with-bn", 5, b"five")
        time.sleep(2.5)  # more than the loop's poll: it saw the epoch and held it back
        assert store.numbers()[-1] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert store.latest() is not None and store.latest().progress == {"with-bn": 5}  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()
        store.store.close()


def test_the_rate_limit_sleeps_off_what_was_sent_too_fast() -> None:
    slept: list[float] = []
    limit = ckpt.RateLimit(1000, sleep=slept.append)
    limit.account(3000)
    assert slept and 2.5 < slept[0] <= 3.0
    unlimited = ckpt.RateLimit(None, sleep=slept.append)
    unlimited.account(10**9)
    assert len(slept) == 1


def test_files_already_copied_are_not_read_again(s3: DataspaceConfig, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    store = ckpt.CheckpointStore(open_store(s3), PREFIX)
    copied: list[str] = []
    real_copy = ckpt._copy

    def counting(src: Path, dest: Path, complete_lines: bool) -> tuple[str, int]:
        copied.append(src.name)
        return real_copy(src, dest, complete_lines)

    monkeypatch.setattr(ckpt, "_copy", counting)
    seen: ckpt.Seen = {}
    write_epoch(out, "with-bn", 1, b"one")
    first = ckpt.sync_once(store, out, attempt=0, seen=seen)
    write_epoch(out, "with-bn", 2, b"two")
    copied.clear()
    second = ckpt.sync_once(store, out, attempt=0, previous=first, seen=seen)
    # Epoch 1's files were neither read nor staged again; the (rewritten) progress file and epoch 2's were.
    assert sorted(copied) == ["with-bn-0002.params", "with-bn-0002.states", "with-bn-progress.json"]
    assert second is not None and "with-bn-0001.params" in second.files
    write_epoch(out, "with-bn", 3, b"three")
    third = ckpt.sync_once(store, out, attempt=0, previous=second, seen=seen)
    assert third is not None
    store.restore(third, tmp_path / "restored")
    assert files_of(tmp_path / "restored") == files_of(out)
    store.store.close()


def test_only_the_chiefs_pod_copies(s3: DataspaceConfig, tmp_path: Path) -> None:
    """ps-lite's rank 0 may be any worker's pod: the loop copies where the trainer's rank file says 0."""
    out, until, rank = tmp_path / "out", tmp_path / "exit-code", tmp_path / "rank"
    out.mkdir()
    store = ckpt.CheckpointStore(open_store(s3), PREFIX)
    write_epoch(out, "with-bn", 1, b"one")
    rank.write_text("1\n")
    proc = _sync_process(tmp_path, out, until, "0", "--rank-file", str(rank), "--staging", str(tmp_path / "stage"),
                         worker=0)
    try:
        time.sleep(3)  # more than a poll: worker 0's pod, but not the chief, copies nothing
        assert store.numbers() == []
        rank.write_text("0\n")  # (a new gang: this pod's trainer is the chief now)
        write_epoch(out, "with-bn", 2, b"two")
        assert _wait_for(store, 1).progress == {"with-bn": 2}
        until.write_text("0\n")
        assert proc.wait(timeout=30) == 0
        assert list((tmp_path / "stage").iterdir()) == []  # each copy's staged files are removed after it
    finally:
        proc.kill()
        proc.wait()
    # Without a rank file (a job's own trainer), only worker 0's pod copies.
    proc = _sync_process(tmp_path, out, tmp_path / "now", "0", "--rank-file", str(tmp_path / "none"), worker=1)
    write_epoch(out, "with-bn", 3, b"three")
    (tmp_path / "now").write_text("0\n")
    assert proc.wait(timeout=30) == 0
    assert store.numbers() == [1]
    store.store.close()
