"""Hostile code packages, built by code (no binary blobs): each case is a list of tar entries and the words
the refusal must contain. ``tests/hostile/test_archives.py`` runs every case through the real unpacker.

Entries are ``(name, kind, payload_or_linkname)``; kinds are the tarfile type flags. ``OUTSIDE`` in a link
target or name stands for the path of a file outside the destination that the archive tries to reach.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

Entry = tuple[str, bytes, "bytes | str"]
FILE, DIR, SYM, HARD = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@dataclass(frozen=True)
class Case:
    name: str
    entries: Callable[[str], list[Entry]]  # given the absolute path of the victim file outside --dest
    refusal: str  # a regex the IntegrityError message must match
    limits: dict[str, float] | None = None  # UnpackLimits overrides


def write_tar_gz(path: Path, entries: Iterable[Entry], pax: dict[str, str] | None = None) -> None:
    with gzip.open(path, "wb", compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, pax_headers=pax) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o644
            if kind in (SYM, HARD):
                info.linkname = str(data)
                tar.addfile(info)
            elif kind == FILE:
                payload = data if isinstance(data, bytes) else data.encode()
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)


def _cve_2025_4517(victim: str) -> list[Entry]:
    """The public proof of concept for CVE-2025-4517: folders with 247-character names, each hidden behind a
    one-letter symlink, so that os.path.realpath gives up at PATH_MAX and the final link escapes."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    entries: list[Entry] = []
    path = ""
    for step in steps:
        entries.append((f"{path}{comp}", DIR, b""))
        entries.append((f"{path}{step}", SYM, comp))
        path = f"{path}{comp}/"
    link_path = "/".join(steps) + "/" + "l" * 254
    entries.append((link_path, SYM, "../" * len(steps)))
    up = "../" * (victim.count("/") + 4)
    entries.append(("escape", SYM, f"{link_path}/{up}{victim.lstrip('/')}"))
    entries.append(("escape", FILE, b"pwned\n"))
    return entries


def _cve_short(victim: str) -> list[Entry]:
    """The same idea with short names, so that only the symlink rules stand in the way."""
    return [
        ("a", DIR, b""), ("a/b", DIR, b""),
        ("x", SYM, "a/b"),
        ("x/y", SYM, "../../.."),  # written below the link x: lands in a/b/y, but resolves above the root
        ("x/y/victim", FILE, b"pwned\n"),
    ]


def _resolved_through_links(victim: str) -> list[Entry]:
    """Every name and every target is lexically inside; only the links on disk make it leave."""
    return [("sub", DIR, b""), ("sub/c", SYM, ".."), ("sub/b", SYM, "c/../..")]


def _zeros(n: int) -> bytes:
    return bytes(n)


CASES: list[Case] = [
    Case("cve-2025-4517", _cve_2025_4517, r"longer than \d+ bytes|below the symlink|leads outside"),
    Case("cve-2025-4517-short-names", _cve_short, r"below the symlink 'x'"),
    Case("dl-chain", lambda v: [("first.txt", FILE, b"first\n"), ("d", DIR, b""), ("d/l", SYM, ".."),
                                ("d/l/m", SYM, ".."), ("d/l/m/x", FILE, b"pwned\n")], r"below the symlink 'd/l'"),
    Case("links-resolved-on-disk", _resolved_through_links, r"entry 'sub/b'.*leads outside"),
    Case("symlink-absolute", lambda v: [("ok.txt", FILE, b"ok"), ("passwd", SYM, v)], r"absolute"),
    Case("symlink-climbs", lambda v: [("l", SYM, "../" * 8 + v.lstrip("/"))], r"leads outside"),
    Case("symlink-then-write-through", lambda v: [("l", SYM, "."), ("l/x", FILE, b"x")], r"below the symlink"),
    Case("symlink-replaces-folder", lambda v: [("d", DIR, b""), ("d/f", FILE, b"f"), ("d", SYM, "/")],
         r"second entry with the same path"),
    Case("duplicate-file", lambda v: [("run.sh", FILE, b"echo good"), ("run.sh", FILE, b"echo evil")],
         r"second entry"),
    Case("hardlink-outside", lambda v: [("h", HARD, "../../outside")], r"climbs out"),
    Case("hardlink-absolute", lambda v: [("h", HARD, v)], r"absolute"),
    Case("hardlink-to-later-entry", lambda v: [("h", HARD, "later.txt"), ("later.txt", FILE, b"x")],
         r"hard link to 'later.txt'"),
    Case("hardlink-to-symlink", lambda v: [("s", SYM, "."), ("h", HARD, "s")], r"hard link to 's'"),
    Case("hardlink-to-folder", lambda v: [("d", DIR, b""), ("h", HARD, "d")], r"hard link to 'd'"),
    Case("absolute-path", lambda v: [("ok.txt", FILE, b"ok"), (v, FILE, b"pwned\n")], r"absolute path"),
    Case("windows-drive", lambda v: [("C:evil.txt", FILE, b"x")], r"absolute path"),
    Case("dotdot", lambda v: [("ok.txt", FILE, b"ok"), ("a/../../escape.txt", FILE, b"x")], r"climbs out"),
    Case("backslash", lambda v: [("..\\..\\escape.txt", FILE, b"x")], r"backslash"),
    Case("char-device", lambda v: [("ok.txt", FILE, b"ok"), ("null", tarfile.CHRTYPE, b"")], r"device"),
    Case("block-device", lambda v: [("sda", tarfile.BLKTYPE, b"")], r"device"),
    Case("fifo", lambda v: [("pipe", tarfile.FIFOTYPE, b"")], r"pipe"),
    Case("file-then-below-it", lambda v: [("f", FILE, b"x"), ("f/g", FILE, b"y")], r"below the file 'f'"),
    Case("deep-nesting", lambda v: [("/".join(["d"] * 100) + "/f", FILE, b"x")], r"nested folders"),
    # 32 MiB of zeros compress ~1000x: past the ratio floor, the default ratio limit (200) stops it.
    Case("zip-bomb-like", lambda v: [("ok.txt", FILE, b"ok"), ("zeros.bin", FILE, _zeros(32 << 20))],
         r"expands more than 200 times.*--max-ratio"),
    Case("over-size-limit", lambda v: [("a.bin", FILE, b"a" * (3 << 20))], r"more than the 2\.0 MiB limit",
         {"max_bytes": 2 << 20}),
    Case("many-small-files", lambda v: [(f"f{i}", FILE, b"") for i in range(201)],
         r"more than 200 entries.*--max-files", {"max_files": 200}),
]
