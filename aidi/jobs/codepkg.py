"""Code packages: a job's UPLOAD_DIR packed to tar.gz, encrypted with the job password, and unpacked safely.

Packing honours an ignore file, ``.aidiignore`` at the top of the folder (gitignore-style patterns,
see docs/traincli.md). Encryption is AES-256-GCM with a key derived from the password by scrypt, in
authenticated chunks so that a package of any size is encrypted and checked in bounded memory::

    header  magic "AIDIPKG\\0" | version u8 (1) | kdf u8 (1 = scrypt) | log2(N) u8 | r u8 | p u8
            | salt 16 bytes | nonce prefix 7 bytes | chunk size u32 big-endian        (40 bytes)
    chunks  AES-256-GCM(chunk) + 16-byte tag, each with nonce = prefix | index u32 | last u8
            and the whole header as associated data; the last chunk (possibly empty) has last = 1

The header is authenticated with every chunk, the index stops reordering, and the ``last`` flag
stops truncation: a wrong password, a flipped bit, a cut-off or spliced file all fail the same way,
with :class:`aidi.errors.IntegrityError`.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import logging
import os
import re
import secrets
import struct
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from aidi.errors import IntegrityError, UsageError

log = logging.getLogger(__name__)

IGNORE_FILE = ".aidiignore"
# Always left out (an ignore file can bring them back with `!pattern`): version-control and cache litter.
DEFAULT_IGNORES = (".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", ".ipynb_checkpoints/")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

MAGIC = b"AIDIPKG\x00"
FORMAT_VERSION = 1
KDF_SCRYPT = 1
_HEADER = struct.Struct(">8sBBBBB16s7sI")
HEADER_SIZE = _HEADER.size
TAG_SIZE = 16
CHUNK_SIZE = 1024 * 1024
# scrypt N=2^15, r=8, p=1: 32 MiB and ~0.1 s per derivation — OWASP's minimum for scrypt.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1
_MAX_LOG2_N = 20  # refuse headers that would make the reader spend gigabytes on the KDF


# ------------------------------------------------------------------------------------ ignore file


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _translate(pattern: str) -> str:
    """A gitignore glob as a regex over a POSIX relative path."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i:end + 1])[4:-3])
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class IgnoreRules:
    """gitignore-style rules: the last matching pattern wins; ``!`` re-includes; ``dir/`` matches folders only;
    a pattern with a ``/`` (other than at the end) is anchored at the top, one without matches at any depth."""

    def __init__(self, lines: list[str]) -> None:
        self.rules: list[_Rule] = []
        for raw in lines:
            line = raw.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate or line.startswith("\\"):
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            if not line:
                continue
            anchored = "/" in line
            line = line.lstrip("/")
            body = _translate(line)
            regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
            self.rules.append(_Rule(regex, negate, dir_only))

    @classmethod
    def for_folder(cls, root: Path) -> IgnoreRules:
        lines = list(DEFAULT_IGNORES)
        ignore = root / IGNORE_FILE
        if ignore.is_file():
            lines += ignore.read_text(encoding="utf-8").splitlines()
        return cls(lines)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        verdict = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(rel):
                verdict = not rule.negate
        return verdict


# ------------------------------------------------------------------------------------------ packing


@dataclass
class PackResult:
    """What went into a package: counts for the user, the largest files for the over-the-limit message."""

    path: Path
    files: int = 0
    source_bytes: int = 0
    packed_bytes: int = 0
    ignored: int = 0
    largest: list[tuple[int, str]] = field(default_factory=list)


class _Walker:
    """Everything to pack below ``root``, sorted, ignored entries left out and counted.

    An ignored folder is not descended into (as in git). Symlinks are returned as links, not followed.
    """

    def __init__(self, root: Path) -> None:
        self.root, self.rules, self.ignored = root, IgnoreRules.for_folder(root), 0

    def __iter__(self) -> Iterator[tuple[str, Path]]:
        return self._visit(self.root, "")

    def _visit(self, folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        with os.scandir(folder) as entries:
            items = sorted(entries, key=lambda e: e.name)
        for entry in items:
            rel = f"{prefix}{entry.name}"
            is_dir = entry.is_dir(follow_symlinks=False)
            if self.rules.ignored(rel, is_dir):
                self.ignored += 1
                continue
            yield rel, Path(entry.path)
            if is_dir:
                yield from self._visit(Path(entry.path), rel + "/")


class _LimitedWriter(io.RawIOBase):
    """Counts bytes written to the package and stops as soon as the limit is passed."""

    def __init__(self, raw: io.BufferedWriter, limit: int) -> None:
        self.raw, self.limit, self.count = raw, limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.count += len(data)
        if self.count > self.limit:
            raise _OverLimit()
        return self.raw.write(data)


class _OverLimit(Exception):
    pass


def _check_link(root: Path, rel: str, path: Path) -> None:
    target = os.readlink(path)
    resolved = (path.parent / target).resolve()
    if os.path.isabs(target) or not resolved.is_relative_to(root.resolve()):
        raise UsageError(
            f"{path}: a symlink to {target}, outside the upload folder {root}; the package cannot carry it. "
            f"Replace it with a copy, or add `{rel}` to {root / IGNORE_FILE}"
        )


def pack(root: str | Path, dest: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> PackResult:
    """Pack the folder ``root`` into the tar.gz ``dest``. Raises UsageError over ``max_bytes`` (packed size)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"UPLOAD_DIR {root} is not a folder; set REQUIRED.UPLOAD_DIR to your code folder "
                         "(relative to the job file)")
    result = PackResult(path=Path(dest))
    sizes: list[tuple[int, str]] = []
    walker = _Walker(root)
    with open(dest, "wb") as raw:
        limited = _LimitedWriter(raw, max_bytes)
        try:
            with gzip.GzipFile(fileobj=limited, mode="wb", compresslevel=6, mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, path in walker:
                    if path.is_symlink():
                        _check_link(root, rel, path)
                    info = tar.gettarinfo(str(path), arcname=rel)
                    if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                        raise UsageError(f"{path}: not a regular file, folder or symlink (a device, socket or "
                                         f"pipe); add `{rel}` to {root / IGNORE_FILE}")
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if info.isfile():
                        with open(path, "rb") as fh:
                            tar.addfile(info, fh)
                        result.files += 1
                        result.source_bytes += info.size
                        sizes.append((info.size, rel))
                    else:
                        tar.addfile(info)
        except _OverLimit:
            sizes = sorted(((p.lstat().st_size, rel) for rel, p in _Walker(root) if p.is_file()
                            and not p.is_symlink()), reverse=True)
            top = ", ".join(f"{rel} ({human_bytes(size)})" for size, rel in sizes[:5])
            raise UsageError(
                f"the code package from {root} is over the {human_bytes(max_bytes)} limit "
                f"({len(sizes)} files, {human_bytes(sum(s for s, _ in sizes))} before compression); largest: {top}. "
                f"Leave data and checkpoints out with {root / IGNORE_FILE} (datasets belong in the dataspace), "
                "or raise the limit with --max-package-size"
            ) from None
        finally:
            result.ignored = walker.ignored
    result.packed_bytes = Path(dest).stat().st_size
    sizes.sort(reverse=True)
    result.largest = sizes[:5]
    return result


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ---------------------------------------------------------------------------------------- crypto


def _derive_key(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2 ** log2_n, r=r, p=p).derive(password.encode("utf-8"))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def encrypt_file(src: str | Path, dest: str | Path, password: str, chunk_size: int = CHUNK_SIZE) -> str:
    """Encrypt ``src`` into ``dest`` with ``password``; returns the sha256 (hex) of the encrypted file."""
    if not password:
        raise UsageError("the job password is empty; set REQUIRED.JOB_PASSWD")
    salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, KDF_SCRYPT, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, salt, prefix,
                          chunk_size)
    aead = AESGCM(_derive_key(password, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P))
    digest = hashlib.sha256(header)
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fout.write(header)
        index, chunk = 0, fin.read(chunk_size)
        while True:
            following = fin.read(chunk_size) if len(chunk) == chunk_size else b""
            last = not following
            sealed = aead.encrypt(_nonce(prefix, index, last), chunk, header)
            fout.write(sealed)
            digest.update(sealed)
            if last:
                break
            index, chunk = index + 1, following
    return digest.hexdigest()


def _read_header(fin: io.BufferedReader, source: str) -> tuple[bytes, tuple[int, int, int, bytes, bytes, int]]:
    header = fin.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        raise IntegrityError(f"{source} is not an AIDI code package (no AIDIPKG header); was it uploaded by "
                             "traincli submit?")
    _, version, kdf, log2_n, r, p, salt, prefix, chunk_size = _HEADER.unpack(header)
    if version != FORMAT_VERSION or kdf != KDF_SCRYPT:
        raise IntegrityError(f"{source}: package format version {version} (kdf {kdf}) is not supported by this "
                             f"aidi (format {FORMAT_VERSION}); upgrade aidi in the job image")
    if not (10 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16 and 1024 <= chunk_size <= 64 << 20):
        raise IntegrityError(f"{source}: the package header has implausible parameters; the file is damaged "
                             "or tampered with — submit the job again")
    return header, (log2_n, r, p, salt, prefix, chunk_size)


def decrypt_file(src: str | Path, dest: str | Path, password: str) -> None:
    """Decrypt a package made by :func:`encrypt_file`. Raises IntegrityError for a wrong password or any change."""
    source = str(src)
    with open(src, "rb") as fin:
        header, (log2_n, r, p, salt, prefix, chunk_size) = _read_header(fin, source)
        aead = AESGCM(_derive_key(password, salt, log2_n, r, p))
        sealed_size = chunk_size + TAG_SIZE
        with open(dest, "wb") as fout:
            index, block = 0, fin.read(sealed_size)
            while True:
                following = fin.read(sealed_size) if len(block) == sealed_size else b""
                last = not following
                try:
                    fout.write(aead.decrypt(_nonce(prefix, index, last), block, header))
                except InvalidTag:
                    raise IntegrityError(
                        f"{source}: the code package does not decrypt — the password is wrong, or the file was "
                        "changed or cut short after it was made. Check the job's Secret (key `password`) or "
                        "submit the job again"
                    ) from None
                if last:
                    return
                index, block = index + 1, following


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- unpacking


def _check_member(member: tarfile.TarInfo, dest: Path, source: str) -> None:
    """Refuse anything that could write outside ``dest`` or create something other than files and folders."""
    name = member.name

    def refuse(why: str) -> IntegrityError:
        return IntegrityError(f"{source}: refusing to unpack entry {name!r}: {why}; the package is unsafe — "
                              "it was not made by traincli, or was tampered with")

    posix = PurePosixPath(name)
    if posix.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise refuse("an absolute path")
    if ".." in posix.parts or "\\" in name:
        raise refuse("a path that climbs out of the folder")
    target = (dest / name).resolve()
    if not target.is_relative_to(dest):
        raise refuse("it would land outside the destination")
    if member.issym():
        link = member.linkname
        if os.path.isabs(link) or not (target.parent / link).resolve().is_relative_to(dest):
            raise refuse(f"a symlink to {link!r}, outside the package")
    elif member.islnk():
        hard = PurePosixPath(member.linkname)
        if hard.is_absolute() or ".." in hard.parts or not (dest / hard).resolve().is_relative_to(dest):
            raise refuse(f"a hard link to {member.linkname!r}, outside the package")
    elif not (member.isfile() or member.isdir()):
        raise refuse("a device, pipe or other special file")


def unpack(archive: str | Path, dest: str | os.PathLike[str]) -> int:
    """Unpack the tar.gz ``archive`` into ``dest`` after checking every entry. Returns the number of files."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    source = str(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, dest, source)
            # The standard library's own "data" filter too, as a second line: it also drops setuid bits
            # (Python 3.11.4 and later; our checks above stand alone before that).
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise IntegrityError(f"{source}: refusing to unpack: {exc}") from None
        raise IntegrityError(f"{source}: not a readable tar.gz ({exc}); submit the job again") from None
    return sum(1 for m in members if m.isfile())


def unpack_encrypted(package: str | Path, password: str, dest: str | os.PathLike[str],
                     sha256: str | None = None) -> int:
    """Verify (sha256 if given), decrypt and safely unpack an encrypted package into ``dest``. Returns file count.

    The whole package is authenticated before a single file is written, so a bad package leaves nothing behind.
    """
    if sha256 is not None:
        actual = sha256_file(package)
        if actual != sha256:
            raise IntegrityError(f"{package}: sha256 is {actual}, expected {sha256} (from the TrainJob's "
                                 "codePackage); the upload is damaged or was replaced — submit the job again")
    with tempfile.TemporaryDirectory(prefix="aidi-codepkg-") as tmp:
        plain = Path(tmp) / "package.tar.gz"
        decrypt_file(package, plain, password)
        return unpack(plain, dest)


@dataclass
class EncryptedPackage:
    """A packed and encrypted UPLOAD_DIR, ready to upload."""

    path: Path
    sha256: str
    size: int
    pack: PackResult


def build(root: str | Path, password: str, workdir: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> EncryptedPackage:
    """Pack ``root`` and encrypt it with ``password`` into ``workdir``; the plain tar.gz is removed at once."""
    workdir = Path(workdir)
    plain = workdir / "package.tar.gz"
    packed = pack(root, plain, max_bytes)
    encrypted = workdir / "package.tar.gz.enc"
    try:
        digest = encrypt_file(plain, encrypted, password)
    finally:
        plain.unlink(missing_ok=True)
    return EncryptedPackage(path=encrypted, sha256=digest, size=encrypted.stat().st_size, pack=packed)


__all__ = [
    "DEFAULT_MAX_BYTES", "IGNORE_FILE", "EncryptedPackage", "IgnoreRules", "PackResult", "build", "decrypt_file",
    "encrypt_file", "human_bytes", "pack", "sha256_file", "unpack", "unpack_encrypted",
]
