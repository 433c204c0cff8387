"""Every hostile archive in ``archives.CASES`` is refused, and nothing is written: not outside --dest, not
inside it, not next to it (the staging folder is removed). Legitimate packages still unpack exactly."""

from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
from pathlib import Path

import pytest

from aidi.cli import aidi_main
from aidi.errors import IntegrityError, UsageError
from aidi.jobs import codepkg
from tests.hostile.archives import CASES, DIR, FILE, HARD, SYM, Case, Entry, write_tar_gz


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry below ``root``: kind, size and mtime (links by target), to prove nothing changed."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            kind = "link:" + os.readlink(path) if stat.S_ISLNK(st.st_mode) else stat.filemode(st.st_mode)
            out[path.relative_to(root).as_posix()] = (kind, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture()
def sandbox(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(folder holding everything, the victim file outside --dest, --dest) — --dest does not exist yet."""
    box = tmp_path / "box"
    box.mkdir()
    victim = box / "victim.txt"
    victim.write_text("original\n")
    return box, victim, box / "work" / "dest"


def _run(case: Case, box: Path, victim: Path, dest: Path) -> None:
    archive = box / f"{case.name}.tar.gz"
    write_tar_gz(archive, case.entries(str(victim)))
    limits = dataclasses.replace(codepkg.UnpackLimits(), **(case.limits or {}))
    before = snapshot(box)
    with pytest.raises(IntegrityError, match=case.refusal) as caught:
        codepkg.unpack(archive, dest, limits)
    assert "nothing was written" in str(caught.value)
    assert victim.read_text() == "original\n"
    assert snapshot(box) == before, "nothing written: not the staging folder, not even the parent of --dest"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_archive_is_refused_and_writes_nothing(case: Case, sandbox: tuple[Path, Path, Path]) -> None:
    _run(case, *sandbox)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in {"dl-chain", "cve-2025-4517-short-names",
                                                                "duplicate-file", "zip-bomb-like"}],
                         ids=lambda c: c.name)
def test_refusal_leaves_an_existing_dest_as_it_was(case: Case, sandbox: tuple[Path, Path, Path]) -> None:
    box, victim, dest = sandbox
    dest.mkdir(parents=True)
    archive = box / "evil.tar.gz"
    write_tar_gz(archive, case.entries(str(victim)))
    before = snapshot(box)
    with pytest.raises(IntegrityError):
        codepkg.unpack(archive, dest)
    # "work" itself only changes its mtime (the staging folder came and went inside it).
    assert {k: v for k, v in snapshot(box).items() if k != "work"} == {k: v for k, v in before.items() if k != "work"}
    assert sorted(p.name for p in (box / "work").iterdir()) == ["dest"]


def test_pax_header_bomb_stops_before_it_is_buffered(sandbox: tuple[Path, Path, Path]) -> None:
    """A 64 MiB pax header (zeros) would be read into memory whole by tarfile; the ratio guard stops it."""
    box, _, dest = sandbox
    archive = box / "pax.tar.gz"
    write_tar_gz(archive, [("ok.txt", FILE, b"ok")], pax={"comment": "0" * (64 << 20)})
    with pytest.raises(IntegrityError, match="expands more than"):
        codepkg.unpack(archive, dest)
    assert not dest.exists()


def test_not_a_tar_gz_is_refused_cleanly(sandbox: tuple[Path, Path, Path]) -> None:
    box, _, dest = sandbox
    for name, data in {"random": os.urandom(4096), "gzip-of-junk": __import__("gzip").compress(os.urandom(4096)),
                       "truncated": b""}.items():
        archive = box / name
        archive.write_bytes(data)
        with pytest.raises(IntegrityError, match=r"not a readable tar\.gz|nothing was written"):
            codepkg.unpack(archive, dest)
        assert not dest.exists()


def test_legitimate_links_unpack(sandbox: tuple[Path, Path, Path]) -> None:
    """Links that stay inside work: to a file, to a folder, through another link, hard links to a file."""
    box, _, dest = sandbox
    entries: list[Entry] = [
        ("scripts", DIR, b""), ("scripts/configs", DIR, b""),
        ("scripts/configs/datasets.yaml", FILE, b"vehicle: /data_space/input\n"),
        ("cfg", SYM, "scripts/configs"),
        ("datasets.yaml", SYM, "cfg/datasets.yaml"),
        ("scripts/up", SYM, ".."),
        ("scripts/again.yaml", SYM, "up/cfg/datasets.yaml"),
        ("copy.yaml", HARD, "scripts/configs/datasets.yaml"),
    ]
    archive = box / "ok.tar.gz"
    write_tar_gz(archive, entries)
    assert codepkg.unpack(archive, dest) == 2
    for name in ("datasets.yaml", "scripts/again.yaml", "copy.yaml", "cfg/datasets.yaml"):
        assert (dest / name).read_bytes() == b"vehicle: /data_space/input\n"
    assert os.readlink(dest / "cfg") == "scripts/configs"
    assert sorted(p.name for p in (box / "work").iterdir()) == ["dest"]


def test_modes_are_sanitised(sandbox: tuple[Path, Path, Path]) -> None:
    box, _, dest = sandbox
    archive = box / "modes.tar.gz"
    import gzip
    import io
    with gzip.open(archive, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, mode in (("suid", 0o4777), ("plain", 0o666), ("exec", 0o700)):
            info = tarfile.TarInfo(name)
            info.mode, info.size = mode, 1
            tar.addfile(info, io.BytesIO(b"x"))
    codepkg.unpack(archive, dest)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()}
    assert modes == {"suid": 0o755, "plain": 0o644, "exec": 0o755}


def test_dest_must_be_empty_or_absent_and_is_never_merged_into(sandbox: tuple[Path, Path, Path]) -> None:
    box, _, dest = sandbox
    archive = box / "ok.tar.gz"
    write_tar_gz(archive, [("run.sh", FILE, b"echo hi")])
    dest.mkdir(parents=True)
    assert codepkg.unpack(archive, dest) == 1  # an empty folder is fine (a pod's emptyDir)
    with pytest.raises(UsageError, match="is not empty; remove its contents"):
        codepkg.unpack(archive, dest)
    link = box / "link"
    link.symlink_to(dest)
    with pytest.raises(UsageError, match="is a symlink"):
        codepkg.unpack(archive, link)
    assert [p.name for p in dest.iterdir()] == ["run.sh"]


def test_mount_point_dest_is_staged_inside_and_filled_in_place(sandbox: tuple[Path, Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod's /job/code is an emptyDir mount: no rename onto it, so staging happens inside it."""
    box, victim, dest = sandbox
    dest.mkdir(parents=True)
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == dest or real_ismount(p))
    good, bad = box / "good.tar.gz", box / "bad.tar.gz"
    write_tar_gz(good, [("run.sh", FILE, b"echo hi")])
    write_tar_gz(bad, CASES[2].entries(str(victim)))  # the d/l chain
    with pytest.raises(IntegrityError):
        codepkg.unpack(bad, dest)
    assert list(dest.iterdir()) == []
    assert codepkg.unpack(good, dest) == 1
    assert [p.name for p in dest.iterdir()] == ["run.sh"]


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDI_UNPACK_MAX_MIB", "10")
    monkeypatch.setenv("AIDI_UNPACK_MAX_FILES", "5")
    monkeypatch.setenv("AIDI_UNPACK_MAX_RATIO", "50")
    assert codepkg.UnpackLimits.from_env() == codepkg.UnpackLimits(10 << 20, 5, 50)
    monkeypatch.setenv("AIDI_UNPACK_MAX_FILES", "lots")
    with pytest.raises(Exception, match="AIDI_UNPACK_MAX_FILES='lots' is not a number"):
        codepkg.UnpackLimits.from_env()


@pytest.mark.parametrize(("offset", "value", "words"), [
    (10, 20, r"scrypt log2\(N\) is 20, expected 14\.\.16"),  # the N=2^20: 4.3 GB, 31 s
    (11, 32, r"scrypt r is 32, expected 8\.\.8"),
    (12, 16, r"scrypt p is 16, expected 1\.\.2"),
    (36, 0xFF, r"chunk size is \d+, expected 65536\.\.4194304"),
])
def test_costly_kdf_header_is_refused_before_deriving(tmp_path: Path, offset: int, value: int, words: str) -> None:
    plain = tmp_path / "p.tar.gz"
    write_tar_gz(plain, [("a", FILE, b"a")])
    enc = tmp_path / "p.enc"
    codepkg.encrypt_file(plain, enc, "pw")
    data = bytearray(enc.read_bytes())
    data[offset] = value  # after the magic (8 bytes): version, kdf, log2N (10), r (11), p (12); chunk size u32 BE at 36
    enc.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=words):
        codepkg.decrypt_file(enc, tmp_path / "out", "pw")
    assert not (tmp_path / "out").exists()


def _uploaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: list[Entry]) -> tuple[str, Path]:
    """A correctly encrypted package of ``entries`` in a file:// dataspace: (its URI, the password file)."""
    from aidi.dataspace import DataspaceConfig, open_dataspace

    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("AIDI_DATASPACE_ENDPOINT", f"file://{store}")
    monkeypatch.setenv("AIDI_DATASPACE_BUCKET", "aidi")
    dataspace = open_dataspace(DataspaceConfig.from_env())
    dataspace.store.check(create=True)
    plain = tmp_path / "pkg.tar.gz"
    write_tar_gz(plain, entries)
    enc = tmp_path / "pkg.tar.gz.enc"
    digest = codepkg.encrypt_file(plain, enc, "pw")
    key = f"codepkgs/t/job/{digest}.tar.gz.enc"
    dataspace.store.put_file(key, enc)
    (tmp_path / "pw").write_text("pw\n")
    return dataspace.store.uri(key), tmp_path / "pw"


def test_fetch_code_refuses_the_cve_pattern_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`aidi fetch-code` on a file:// dataspace, with a correctly encrypted hostile package: exit 6."""
    victim = tmp_path / "victim.txt"
    victim.write_text("original\n")
    uri, password = _uploaded(tmp_path, monkeypatch, CASES[0].entries(str(victim)))
    dest = tmp_path / "job" / "code"
    assert aidi_main.main(["fetch-code", uri, "--password-file", str(password), "--dest", str(dest)]) == 6
    assert "refusing to unpack" in capsys.readouterr().err
    assert victim.read_text() == "original\n"
    assert not (tmp_path / "job").exists()


def test_fetch_code_limits_are_flags_and_named_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    uri, password = _uploaded(tmp_path, monkeypatch, [(f"f{i}.py", FILE, b"x = 1\n") for i in range(5)])
    args = ["fetch-code", uri, "--password-file", str(password), "--dest"]
    assert aidi_main.main([*args, str(tmp_path / "a"), "--max-files", "4"]) == 6
    assert "more than 4 entries, the file-count limit (raise it with --max-files" in capsys.readouterr().err
    monkeypatch.setenv("AIDI_UNPACK_MAX_FILES", "3")
    assert aidi_main.main([*args, str(tmp_path / "b")]) == 6
    assert "more than 3 entries" in capsys.readouterr().err
    assert aidi_main.main([*args, str(tmp_path / "c"), "--max-files", "5"]) == 0  # the flag wins
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [f"f{i}.py" for i in range(5)]
    with pytest.raises(SystemExit):
        aidi_main.main([*args, str(tmp_path / "d"), "--max-ratio", "0"])


def test_cve_pattern_is_refused_by_the_link_rules_alone(sandbox: tuple[Path, Path, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the path-length limit lifted, the CVE-2025-4517 archive is still refused —
    by the rule that nothing is written below a symlink of the archive."""
    monkeypatch.setattr(codepkg, "MAX_NAME_BYTES", 1 << 20)
    cve = next(c for c in CASES if c.name == "cve-2025-4517")
    _run(dataclasses.replace(cve, refusal=r"below the symlink|leads outside"), *sandbox)


def test_damaged_archives_fail_only_with_integrity_errors(tmp_path: Path) -> None:
    """Random byte flips in a legitimate tar (headers, names, sizes, payloads), recompressed: every result is
    either unpacked (inside --dest) or refused with IntegrityError — never another exception, never a trace."""
    import gzip
    import io
    import random

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in [("d", DIR, b""), ("d/a.py", FILE, b"x = 1\n" * 50), ("l", SYM, "d/a.py"),
                                 ("h", HARD, "d/a.py"), ("d/e/b.txt", FILE, b"b" * 700)]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o644
            if kind in (SYM, HARD):
                info.linkname = str(data)
            payload = data if isinstance(data, bytes) and kind == FILE else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if kind == FILE else None)
    clean = buffer.getvalue()
    rng = random.Random(19)
    for i in range(60):  # 600 rounds were run once by hand, all clean
        damaged = bytearray(clean)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged) // 2)] = rng.randrange(256)  # the headers live up front
        archive = tmp_path / f"a{i}.tar.gz"
        archive.write_bytes(gzip.compress(bytes(damaged)))
        box = tmp_path / f"box{i}"
        box.mkdir()
        try:
            codepkg.unpack(archive, box / "dest")
        except IntegrityError:
            assert list(box.iterdir()) == []
        else:
            for path in (box / "dest").rglob("*"):
                assert os.path.realpath(path).startswith(str(box / "dest") + os.sep), path
