"""Image checks and encoding for the packer: a fast JPEG structure check for pass-through, and
decode → resize → encode with Pillow otherwise."""

from __future__ import annotations

import io
import struct

from PIL import Image, UnidentifiedImageError

# Pillow refuses images over ~179 Mpixel by default, which a dataset may legitimately hold.
Image.MAX_IMAGE_PIXELS = None

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


class BadImage(Exception):
    """The reason an image cannot be packed (becomes a problem line: file and reason)."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG, checking its structure: markers up to the scan and the end marker.

    This catches truncated and garbled files without decoding every pixel, which is what lets
    pass-through run at disk speed.
    """
    size = len(data)
    pos, found = 2, None
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            raise BadImage(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF_MARKERS and pos + 9 <= size:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            found = (width, height)
        if marker == 0xDA:
            break
        pos += 2 + length
    else:
        raise BadImage("corrupt JPEG: it ends before the image data")
    if found is None or 0 in found:
        raise BadImage("corrupt JPEG: no frame header with the image size")
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise BadImage("truncated JPEG: the end-of-image marker is missing")
    return found


def target_size(width: int, height: int, resize: int | tuple[int, int] | None) -> tuple[int, int]:
    """The packed size: unchanged, shorter edge to ``resize`` (as im2rec's --resize), or exact (W, H)."""
    if resize is None:
        return width, height
    if isinstance(resize, int):
        if width <= height:
            return resize, max(1, round(height * resize / width))
        return max(1, round(width * resize / height)), resize
    return int(resize[0]), int(resize[1])


def _unreadable(exc: Exception) -> BadImage:
    if isinstance(exc, UnidentifiedImageError):
        return BadImage("not an image (no format Pillow knows: JPEG, PNG, ...)")
    return BadImage(f"not a readable image ({exc})")


def open_image(data: bytes) -> Image.Image:
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise _unreadable(exc) from None
    return image


def reencode(data: bytes, resize: int | tuple[int, int] | None, quality: int) -> tuple[bytes, tuple[int, int],
                                                                                        tuple[int, int]]:
    """Decode, resize and encode as JPEG; return (JPEG, original size, packed size)."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        original = image.size
        target = target_size(*original, resize)
        if image.format == "JPEG" and resize is not None:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller.
            image.draft("RGB", target)
        image.load()
    except Exception as exc:
        raise _unreadable(exc) from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != target:
        image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue(), original, target
