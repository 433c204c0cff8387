"""Code packages: pack with an ignore file, encrypt, decrypt, unpack safely — and every way that must fail."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from aidi.errors import IntegrityError, UsageError
from aidi.jobs import codepkg


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mode) | ("dir", 0) | ("->target", 0)} for every entry below ``root``."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("->" + os.readlink(path), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0)
            else:
                out[rel] = (codepkg.sha256_file(path), stat.S_IMODE(st.st_mode))
    return out


def make_code_folder(root: Path) -> Path:
    """A small UPLOAD_DIR like the seed's: a start script, configs, binary data, a link, and litter to ignore."""
    (root / "scripts" / "configs" / "4pe_resize").mkdir(parents=True)
    run = root / "run.sh"
    run.write_text("#!/bin/bash\nset -e\necho training\n")
    run.chmod(0o755)
    (root / "scripts" / "configs" / "4pe_resize" / "multitask.py").write_text("lr = 0.01\n" * 50)
    (root / "scripts" / "configs" / "4pe_resize" / "datasets.yaml").write_text("vehicle: /data_space/input\n")
    (root / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # spans several 1 MiB chunks
    (root / "empty.txt").write_bytes(b"")
    (root / "latest.yaml").symlink_to("scripts/configs/4pe_resize/datasets.yaml")
    (root / ".aidiignore").write_text("# data stays in the dataspace\ndata/\n*.log\n!keep.log\n/top-only.tmp\n")
    (root / "data").mkdir()
    (root / "data" / "big.rec").write_bytes(b"x" * 1000)
    (root / "train.log").write_text("noise")
    (root / "keep.log").write_text("kept")
    (root / "top-only.tmp").write_text("ignored at the top")
    (root / "scripts" / "top-only.tmp").write_text("kept below the top")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_round_trip_is_byte_for_byte_and_honours_the_ignore_file(tmp_path: Path) -> None:
    src = make_code_folder(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    package = codepkg.build(src, "s3cret-pw", work)
    assert package.sha256 == codepkg.sha256_file(package.path)
    assert package.pack.files == 8 and package.pack.ignored == 4  # data/, train.log, top-only.tmp, __pycache__
    assert not (work / "package.tar.gz").exists(), "the plain tar.gz must not outlive encryption"

    dest = tmp_path / "dest"
    files = codepkg.unpack_encrypted(package.path, "s3cret-pw", dest, sha256=package.sha256)
    assert files == 8
    expected = {rel: entry for rel, entry in tree_digest(src).items()
                if not rel.startswith(("data", "__pycache__")) and rel not in {"train.log", "top-only.tmp"}}
    assert tree_digest(dest) == expected
    assert (dest / "scripts" / "top-only.tmp").exists()
    assert os.access(dest / "run.sh", os.X_OK)


def test_wrong_password_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    package = codepkg.build(make_code_folder(tmp_path / "src"), "right", tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match="password is wrong"):
        codepkg.unpack_encrypted(package.path, "wrong", dest)
    assert not dest.exists()


@pytest.mark.parametrize("where", ["header", "first chunk", "last byte", "truncated", "chunk dropped"])
def test_tampered_package_fails(tmp_path: Path, where: str) -> None:
    package = codepkg.build(make_code_folder(tmp_path / "src"), "pw", tmp_path)
    data = bytearray(package.path.read_bytes())
    sealed = codepkg.CHUNK_SIZE + codepkg.TAG_SIZE
    if where == "header":
        data[20] ^= 1  # a salt byte: derives another key
    elif where == "first chunk":
        data[codepkg.HEADER_SIZE + 100] ^= 0x80
    elif where == "last byte":
        data[-1] ^= 1
    elif where == "truncated":
        del data[codepkg.HEADER_SIZE + sealed:]  # a clean cut at a chunk boundary
    else:
        del data[codepkg.HEADER_SIZE:codepkg.HEADER_SIZE + sealed]
    package.path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        codepkg.unpack_encrypted(package.path, "pw", tmp_path / "dest")


def test_sha256_mismatch_is_refused_before_decrypting(tmp_path: Path) -> None:
    package = codepkg.build(make_code_folder(tmp_path / "src"), "pw", tmp_path)
    with pytest.raises(IntegrityError, match=r"sha256 is .*expected 0{64}"):
        codepkg.unpack_encrypted(package.path, "pw", tmp_path / "dest", sha256="0" * 64)


def test_not_a_package(tmp_path: Path) -> None:
    bogus = tmp_path / "x.enc"
    bogus.write_bytes(b"PK\x03\x04 a zip, not ours")
    with pytest.raises(IntegrityError, match="not an AIDI code package"):
        codepkg.decrypt_file(bogus, tmp_path / "out", "pw")


def _evil_archive(path: Path, entries: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            data = b"pwned\n" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


@pytest.mark.parametrize(("entries", "why"), [
    ([_entry("ok.txt"), _entry("../escape.txt")], "climbs out"),
    ([_entry("a/../../escape.txt")], "climbs out"),
    ([_entry("/etc/evil")], "absolute path"),
    ([_entry("link", tarfile.SYMTYPE, "/etc/passwd")], "symlink"),
    ([_entry("link", tarfile.SYMTYPE, "../../outside")], "symlink"),
    ([_entry("hard", tarfile.LNKTYPE, "../outside")], "hard link"),
    ([_entry("dev", tarfile.CHRTYPE)], "device"),
    ([_entry("fifo", tarfile.FIFOTYPE)], "device, pipe"),
])
def test_unsafe_archives_are_refused(tmp_path: Path, entries: list[tarfile.TarInfo], why: str) -> None:
    plain = tmp_path / "evil.tar.gz"
    _evil_archive(plain, entries)
    encrypted = tmp_path / "evil.tar.gz.enc"
    codepkg.encrypt_file(plain, encrypted, "pw")  # even correctly encrypted with the right password
    dest = tmp_path / "sandbox" / "dest"
    with pytest.raises(IntegrityError, match=why):
        codepkg.unpack_encrypted(encrypted, "pw", dest)
    assert not (tmp_path / "sandbox" / "escape.txt").exists()
    assert not (tmp_path / "sandbox").exists(), "nothing is written for an archive with one bad entry"


def test_symlink_pointing_outside_the_upload_dir_is_refused_at_pack(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(UsageError, match=r"outside the upload folder.*\.aidiignore"):
        codepkg.pack(src, tmp_path / "p.tar.gz")


def test_size_limit_names_the_largest_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.py").write_text("x = 1\n")
    (src / "checkpoint.params").write_bytes(os.urandom(300 * 1024))
    with pytest.raises(UsageError, match=r"over the 100\.0 KiB limit.*checkpoint\.params.*--max-package-size"):
        codepkg.pack(src, tmp_path / "p.tar.gz", max_bytes=100 * 1024)


def test_upload_dir_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"UPLOAD_DIR .* is not a folder"):
        codepkg.pack(tmp_path / "missing", tmp_path / "p.tar.gz")


@pytest.mark.parametrize(("pattern", "path", "is_dir", "ignored"), [
    ("*.log", "a/b/x.log", False, True),
    ("/build", "build", True, True),
    ("/build", "src/build", True, False),
    ("docs/*.md", "docs/a.md", False, True),
    ("docs/*.md", "x/docs/a.md", False, False),
    ("**/tmp", "a/b/tmp", True, True),
    ("out/", "out", False, False),  # folder-only pattern, a file of that name stays
    ("ckpt/**", "ckpt/a/b.params", False, True),
    ("x?.txt", "x1.txt", False, True),
    ("[ab].py", "b.py", False, True),
])
def test_ignore_patterns_follow_gitignore(pattern: str, path: str, is_dir: bool, ignored: bool) -> None:
    assert codepkg.IgnoreRules([pattern]).ignored(path, is_dir) is ignored
