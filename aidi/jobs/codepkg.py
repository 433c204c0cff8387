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

import contextlib
import fnmatch
import gzip
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import stat
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
# What a reader accepts: the values we write plus one step of margin. The header is read before anything
# is authenticated, so these bounds are all that stands between a forged header and the reader's memory:
# at most 128 * 2^16 * 8 bytes = 64 MiB and ~0.3 s for scrypt, 4 MiB per chunk.
_LOG2_N_RANGE = (SCRYPT_LOG2_N - 1, SCRYPT_LOG2_N + 1)
_R_RANGE = (SCRYPT_R, SCRYPT_R)
_P_RANGE = (SCRYPT_P, SCRYPT_P + 1)
_CHUNK_RANGE = (64 * 1024, 4 * CHUNK_SIZE)


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
    for what, value, (low, high) in (("scrypt log2(N)", log2_n, _LOG2_N_RANGE), ("scrypt r", r, _R_RANGE),
                                      ("scrypt p", p, _P_RANGE), ("chunk size", chunk_size, _CHUNK_RANGE)):
        if not low <= value <= high:
            raise IntegrityError(f"{source}: the package header's {what} is {value}, expected {low}..{high}; the "
                                 "file is damaged or tampered with (or made by an incompatible aidi) — submit the "
                                 "job again")
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
#
# The extractor is our own, not tarfile.extractall: the standard library's "data" filter was bypassable
# until Python 3.11.13 (CVE-2025-4517: symlinks made by the archive itself, hidden by PATH_MAX in
# os.path.realpath). Our rules do not depend on the Python version:
#   1. every entry name is checked lexically (no absolute path, no "..", no backslash, no duplicates,
#      no entry below another entry that is a symlink or a file);
#   2. files and folders are written first, into a fresh staging folder, with O_NOFOLLOW|O_EXCL: while
#      they are written no symlink exists in the tree, so no write can be redirected;
#   3. symlinks are made last; each one's target is resolved component by component against what is
#      really on disk (following the links already made) and must never step above the package's root;
#   4. hard links may only name a regular file of the same archive written before them;
#   5. sizes, counts and the expansion ratio are checked while decompressing, so a bomb stops early;
#   6. the staging folder is renamed into place only when everything passed; on any refusal it is removed.

DEFAULT_UNPACK_MAX_BYTES = 4 << 30
DEFAULT_UNPACK_MAX_FILES = 100_000
DEFAULT_UNPACK_MAX_RATIO = 200
# The ratio is judged only past this much output: tiny text packages legitimately compress 20-50x
# and a few MiB cannot hurt anyone.
RATIO_FLOOR_BYTES = 16 << 20
MAX_NAME_BYTES = 1024  # well under PATH_MAX (4096) even below a deep --dest
MAX_DEPTH = 64
MAX_LINK_HOPS = 40  # as Linux's own limit on symlink hops in one lookup
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class UnpackLimits:
    """What an archive may expand to. Each is configurable (``aidi fetch-code --max-unpacked-mib`` ...)."""

    max_bytes: int = DEFAULT_UNPACK_MAX_BYTES
    max_files: int = DEFAULT_UNPACK_MAX_FILES
    max_ratio: float = DEFAULT_UNPACK_MAX_RATIO

    @classmethod
    def from_env(cls) -> UnpackLimits:
        """Defaults, overridden by ``AIDI_UNPACK_MAX_MIB``, ``AIDI_UNPACK_MAX_FILES``, ``AIDI_UNPACK_MAX_RATIO``."""
        def number(var: str, default: float) -> float:
            raw = os.environ.get(var)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"{var}={raw!r} is not a number; unset it or give a positive number") from None
            if value <= 0:
                raise UsageError(f"{var}={raw!r} must be positive")
            return value
        return cls(max_bytes=int(number("AIDI_UNPACK_MAX_MIB", DEFAULT_UNPACK_MAX_BYTES >> 20)) << 20,
                   max_files=int(number("AIDI_UNPACK_MAX_FILES", DEFAULT_UNPACK_MAX_FILES)),
                   max_ratio=number("AIDI_UNPACK_MAX_RATIO", DEFAULT_UNPACK_MAX_RATIO))


class _Refused(Exception):
    """An entry (or the archive as a whole) that must not be unpacked; the message says why."""

    def __init__(self, why: str, entry: str | None = None) -> None:
        super().__init__(why)
        self.why, self.entry = why, entry


class _CountingReader(io.RawIOBase):
    """Counts the compressed bytes the decompressor has consumed."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.count += n or 0
        return n or 0


class _BombGuard(io.RawIOBase):
    """The decompressed tar stream, stopped as soon as it outgrows the limits — before tarfile buffers it
    (a pax header of a gigabyte of zeros would otherwise be read into memory whole)."""

    def __init__(self, gz: gzip.GzipFile, compressed: _CountingReader, limits: UnpackLimits) -> None:
        self.gz, self.compressed, self.limits, self.count = gz, compressed, limits, 0
        # Tar headers and padding on top of the file bytes: three 512-byte blocks per entry at most (pax).
        self.ceiling = limits.max_bytes + 1536 * (limits.max_files + 16) + (1 << 20)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.gz.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self.count > self.ceiling:
            raise _Refused(f"it expands to more than the {human_bytes(self.limits.max_bytes)} limit "
                           f"(raise it with --max-unpacked-mib or AIDI_UNPACK_MAX_MIB)")
        if self.count > RATIO_FLOOR_BYTES and self.count > self.limits.max_ratio * max(self.compressed.count, 1):
            raise _Refused(f"it expands more than {self.limits.max_ratio:g} times its compressed size, the "
                           "expansion-ratio limit (a decompression bomb?); raise it with --max-ratio or "
                           "AIDI_UNPACK_MAX_RATIO if the package is genuine")
        return n


def _entry_parts(name: str) -> tuple[str, ...]:
    """The checked components of an entry name, or _Refused."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise _Refused(f"a path longer than {MAX_NAME_BYTES} bytes")
    if "\\" in name or "\0" in name:
        raise _Refused("a backslash or NUL in the path")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _Refused("an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Refused("a path that climbs out of the folder")
    if not parts:
        raise _Refused("an empty path")
    if len(parts) > MAX_DEPTH:
        raise _Refused(f"more than {MAX_DEPTH} nested folders")
    return parts


def _resolve_inside(root: Path, start: tuple[str, ...], target: str) -> None:
    """Walk ``target`` from the folder ``start`` (components below ``root``) as the kernel would, following the
    symlinks that really exist under ``root``; _Refused as soon as a step would leave ``root``."""
    if target.startswith("/") or "\\" in target or "\0" in target or not target:
        raise _Refused(f"a symlink to {target!r}: absolute or malformed")
    current = list(start)
    pending = [p for p in target.split("/") if p not in ("", ".")]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not current:
                raise _Refused(f"a symlink to {target!r}, which leads outside the package")
            current.pop()
            continue
        candidate = root.joinpath(*current, part)
        try:
            st = candidate.lstat()
        except FileNotFoundError:
            current.append(part)  # dangling from here on: the rest stays below this point, lexically
            continue
        except OSError as exc:  # ENAMETOOLONG, ELOOP, ...: not a path we will make
            raise _Refused(f"a symlink to {target!r} that cannot be resolved ({exc.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise _Refused(f"a symlink to {target!r} through more than {MAX_LINK_HOPS} links (a loop?)")
            inner = os.readlink(candidate)
            if inner.startswith("/"):
                raise _Refused(f"a symlink to {target!r} through the absolute link {inner!r}")
            pending = [p for p in inner.split("/") if p not in ("", ".")] + pending
            continue
        current.append(part)


def _safe_mode(mode: int, is_dir: bool) -> int:
    """Owner-writable, readable by all, executable if the archive says so; never setuid/setgid/sticky."""
    if is_dir:
        return 0o755
    return 0o755 if mode & 0o111 else 0o644


@dataclass
class _Plan:
    """What the archive holds, in the order it is written: folders and files now, links at the end."""

    kinds: dict[tuple[str, ...], str] = field(default_factory=dict)  # parts -> "dir" | "file" | "link"
    links: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


def _check_parent_chain(plan: _Plan, parts: tuple[str, ...]) -> None:
    for depth in range(1, len(parts)):
        kind = plan.kinds.get(parts[:depth])
        if kind == "link":
            raise _Refused(f"a path below the symlink {'/'.join(parts[:depth])!r} (writing through links is "
                           "not allowed)")
        if kind == "file":
            raise _Refused(f"a path below the file {'/'.join(parts[:depth])!r}")


def _write_file(stage: Path, parts: tuple[str, ...], src: IO[bytes], member: tarfile.TarInfo,
                plan: _Plan, limits: UnpackLimits) -> None:
    target = stage.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        while block := src.read(_COPY_BLOCK):
            plan.bytes += len(block)
            if plan.bytes > limits.max_bytes:
                raise _Refused(f"it expands to more than the {human_bytes(limits.max_bytes)} limit (raise it "
                               "with --max-unpacked-mib or AIDI_UNPACK_MAX_MIB)")
            out.write(block)
    os.chmod(target, _safe_mode(member.mode, False), follow_symlinks=False)


def _extract_to(tar: tarfile.TarFile, stage: Path, limits: UnpackLimits) -> int:
    plan = _Plan()
    entries = 0
    for member in tar:
        entries += 1
        if entries > limits.max_files:
            raise _Refused(f"it holds more than {limits.max_files} entries, the file-count limit (raise it "
                           "with --max-files or AIDI_UNPACK_MAX_FILES)")
        try:
            parts = _entry_parts(member.name)
        except _Refused as refused:
            raise _Refused(refused.why, member.name) from None
        try:
            if parts in plan.kinds:
                if member.isdir() and plan.kinds[parts] == "dir":
                    continue
                raise _Refused("a second entry with the same path")
            _check_parent_chain(plan, parts)
            for depth in range(1, len(parts)):
                plan.kinds.setdefault(parts[:depth], "dir")
            if member.isdir():
                plan.kinds[parts] = "dir"
                stage.joinpath(*parts).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                plan.kinds[parts] = "file"
                plan.files += 1
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has a payload
                _write_file(stage, parts, src, member, plan, limits)
            elif member.issym():
                plan.kinds[parts] = "link"
                plan.links.append((parts, member.linkname))
            elif member.islnk():
                try:
                    source = _entry_parts(member.linkname)
                except _Refused as bad:
                    raise _Refused(f"a hard link to {member.linkname!r}: {bad.why}") from None
                if plan.kinds.get(source) != "file":
                    raise _Refused(f"a hard link to {member.linkname!r}, which is not a file earlier in the "
                                   "package")
                plan.kinds[parts] = "file"
                plan.files += 1
                stage.joinpath(*parts).parent.mkdir(parents=True, exist_ok=True)
                os.link(stage.joinpath(*source), stage.joinpath(*parts), follow_symlinks=False)
            else:
                raise _Refused("a device, pipe or other special file")
        except _Refused as refused:
            raise _Refused(refused.why, refused.entry or member.name) from None
    for parts, target in plan.links:
        try:
            _resolve_inside(stage, parts[:-1], target)
        except _Refused as refused:
            raise _Refused(refused.why, "/".join(parts)) from None
        # The link itself is made only now, so no earlier check could have been fooled by it; later links
        # are resolved through it, as the kernel would.
        os.symlink(target, stage.joinpath(*parts))
    return plan.files


def _check_dest(dest: Path) -> None:
    """``dest`` must be absent or an empty folder: unpacking never merges into, or deletes, what is there."""
    if dest.is_symlink():
        raise UsageError(f"--dest {dest} is a symlink; give the real folder")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"--dest {dest} exists and is not a folder; remove it or choose another folder")
        if any(dest.iterdir()):
            raise UsageError(f"--dest {dest} is not empty; remove its contents or choose an empty folder")


def _staging_folder(dest: Path) -> tuple[Path, bool]:
    """(staging folder, inside_dest). Next to ``dest`` when a rename can put it in place; inside ``dest`` when
    ``dest`` is a mount point (a pod's emptyDir at /job/code), where a rename onto it cannot work."""
    parent = dest.parent
    inside = dest.is_dir() and (os.path.ismount(dest) or dest.stat().st_dev != parent.stat().st_dev)
    base = dest if inside else parent
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.aidi-unpack-", dir=base)), inside


def _move_into_place(stage: Path, dest: Path, inside: bool) -> None:
    if inside:
        for entry in stage.iterdir():
            entry.rename(dest / entry.name)
        stage.rmdir()
        return
    if dest.exists():
        dest.rmdir()  # empty (checked before unpacking): rename cannot replace a folder
    stage.chmod(0o755)
    stage.rename(dest)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; returns the folders it made, deepest first, to remove them again on a refusal."""
    made: list[Path] = []
    for ancestor in [folder, *folder.parents]:
        if ancestor.exists():
            break
        made.append(ancestor)
    folder.mkdir(parents=True, exist_ok=True)
    return made


def unpack(archive: str | Path, dest: str | os.PathLike[str], limits: UnpackLimits | None = None) -> int:
    """Unpack the tar.gz ``archive`` into ``dest``, all or nothing (see the rules above). Returns the file count.

    On any refusal :class:`IntegrityError` names the entry and the rule, and ``dest`` is left as it was.
    """
    limits = limits or UnpackLimits()
    dest = Path(os.path.abspath(dest))
    source = str(archive)
    _check_dest(dest)
    made = _make_parents(dest.parent)
    stage, inside = _staging_folder(dest)
    done = False
    try:
        with open(archive, "rb") as raw:
            compressed = _CountingReader(raw)
            with gzip.GzipFile(fileobj=compressed, mode="rb") as gz:
                guarded = io.BufferedReader(_BombGuard(gz, compressed, limits), buffer_size=_COPY_BLOCK)
                with tarfile.open(fileobj=guarded, mode="r|") as tar:
                    files = _extract_to(tar, stage, limits)
        _move_into_place(stage, dest, inside)
        done = True
    except _Refused as refused:
        entry = f"entry {refused.entry!r}: " if refused.entry else ""
        raise IntegrityError(f"{source}: refusing to unpack: {entry}{refused.why}; nothing was written to "
                             f"{dest}") from None
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IntegrityError(f"{source}: not a readable tar.gz ({exc}); nothing was written to {dest} — submit "
                             "the job again") from None
    except OSError as exc:
        raise IntegrityError(f"{source}: unpacking failed ({exc.strerror or exc}); nothing was written to "
                             f"{dest}") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for folder in made:  # the parents of --dest this call made, and nothing else
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return files


def unpack_encrypted(package: str | Path, password: str, dest: str | os.PathLike[str],
                     sha256: str | None = None, limits: UnpackLimits | None = None) -> int:
    """Verify (sha256 if given), decrypt and safely unpack an encrypted package into ``dest``. Returns file count.

    The whole package is authenticated before a single file is written, and unpacking is all or nothing,
    so a bad package leaves ``dest`` as it was.
    """
    if sha256 is not None:
        actual = sha256_file(package)
        if actual != sha256:
            raise IntegrityError(f"{package}: sha256 is {actual}, expected {sha256} (from the TrainJob's "
                                 "codePackage); the upload is damaged or was replaced — submit the job again")
    with tempfile.TemporaryDirectory(prefix="aidi-codepkg-") as tmp:
        plain = Path(tmp) / "package.tar.gz"
        decrypt_file(package, plain, password)
        return unpack(plain, dest, limits)


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
    "DEFAULT_MAX_BYTES", "IGNORE_FILE", "EncryptedPackage", "IgnoreRules", "PackResult", "UnpackLimits", "build",
    "decrypt_file",
    "encrypt_file", "human_bytes", "pack", "sha256_file", "unpack", "unpack_encrypted",
]
