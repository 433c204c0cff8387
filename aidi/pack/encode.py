"""Turning one item into one record: read, check, encode, pack, frame (in the workers, or on the calling
thread for detection in pass-through: aidi.pack.workers).

Records come back already framed (dmlc frames, IRHeader id 0), so the single writer only sets the id
and appends; the magic-word scan and the JPEG work happen here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aidi import recordio
from aidi.pack.images import BadImage, is_jpeg, jpeg_size, open_image, reencode
from aidi.pack.pack_config import PackConfig
from aidi.pack.sources import Item


@dataclass(frozen=True, slots=True)
class Encoded:
    """A framed record (``recordio.frame_record``, id 0), or the reasons the item was refused (``framed`` None)."""

    index: int
    framed: bytes | None
    objects: int = 0
    problems: tuple[str, ...] = ()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except OSError as exc:
        raise BadImage(f"cannot read the file ({exc.strerror})") from None


def _image(data: bytes, config: PackConfig) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """The JPEG to store, the original size and the packed size."""
    if config.resize is None and is_jpeg(data):
        size = jpeg_size(data)
        return data, size, size
    return reencode(data, config.resize, config.jpeg_quality)


def _framed(index: int, parts: tuple[bytes, ...], objects: int = 0) -> Encoded:
    size = sum(map(len, parts))
    if size > recordio.MAX_RECORD_BYTES:
        return Encoded(index, None, problems=(
            f"the record would be {size} bytes, over RecordIO's limit of {recordio.MAX_RECORD_BYTES} (2^29 - 1, "
            "dmlc-core's, which MXNet reads with); set `resize` in the config",))
    return Encoded(index, recordio.frame_record(*parts), objects)


def encode_detection(item: Item, config: PackConfig) -> Encoded:
    problems = list(item.problems)
    try:
        image, (width, height), packed = _image(_read(item.image), config)
    except BadImage as exc:
        return Encoded(item.index, None, problems=(*problems, str(exc)))
    if item.width is not None and item.height is not None and (item.width, item.height) != (width, height):
        problems.append(f"the annotations say the image is {item.width}×{item.height}, the file is {width}×{height}")
    objects = []
    for box in item.boxes:
        if box.w <= 0 or box.h <= 0:
            problems.append(f"annotation {box.annotation}: empty box [{box.x:g}, {box.y:g}, {box.w:g}, {box.h:g}]")
        elif box.x < 0 or box.y < 0 or box.x + box.w > width or box.y + box.h > height:
            problems.append(f"annotation {box.annotation}: box [{box.x:g}, {box.y:g}, {box.w:g}, {box.h:g}] "
                            f"(x, y, width, height) lies outside the {width}×{height} image")
        else:
            objects.append((box.cls, box.x / width, box.y / height, (box.x + box.w) / width,
                            (box.y + box.h) / height))
    if problems:
        return Encoded(item.index, None, problems=tuple(problems))
    head = recordio.pack_detection(b"", packed[0], packed[1], objects, 0, item.index)
    return _framed(item.index, (head, image), len(objects))


def _mask(item: Item, size: tuple[int, int], packed: tuple[int, int], config: PackConfig) -> bytes:
    assert item.mask is not None
    data = _read(item.mask)
    mask = open_image(data)
    if mask.mode not in ("L", "P"):
        raise BadImage(f"expected an 8-bit one-channel mask (PNG mode L or P, pixel = class id), got mode {mask.mode}")
    if mask.size != size:
        raise BadImage(f"mask size {mask.size[0]}×{mask.size[1]} differs from the image's {size[0]}×{size[1]}")
    values = np.asarray(mask)
    counts = np.bincount(values.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts) if len(config.classes) <= v < recordio.MASK_IGNORE]
    if bad:
        raise BadImage(f"mask has class ids {', '.join(map(str, bad[:8]))} but the scene has {len(config.classes)} "
                       f"classes (0–{len(config.classes) - 1}; {recordio.MASK_IGNORE} = ignore)")
    if mask.mode == "L" and mask.format == "PNG" and packed == size:
        return data
    # Palette masks are stored as plain grey: a decoder asked for one channel must see class ids.
    out = Image.fromarray(values, "L")
    if packed != size:
        out = out.resize(packed, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_parsing(item: Item, config: PackConfig) -> Encoded:
    problems = []
    try:
        image, size, packed = _image(_read(item.image), config)
    except BadImage as exc:
        return Encoded(item.index, None, problems=(str(exc),))
    try:
        mask = _mask(item, size, packed, config)
    except BadImage as exc:
        problems.append(f"mask {item.mask}: {exc}")
    if problems:
        return Encoded(item.index, None, problems=tuple(problems))
    try:
        head = recordio.parsing_head(len(image), len(mask), 0, item.index)
    except recordio.RecordTooLarge as exc:
        return Encoded(item.index, None, problems=(str(exc),))
    return _framed(item.index, (head, image, mask))


def encode(item: Item, config: PackConfig) -> Encoded:
    if item.index < 0:  # a problem of the annotations file itself
        return Encoded(item.index, None, problems=item.problems)
    return (encode_detection if config.task == "detection" else encode_parsing)(item, config)
