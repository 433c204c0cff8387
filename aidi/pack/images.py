"""Image checks and encoding for the packer: a fast JPEG structure check for pass-through, and
decode → resize → encode otherwise: JPEGs decoded by simplejpeg, the rest by OpenCV (Pillow decodes the
formats OpenCV does not know); resize and encode with OpenCV.

Why OpenCV for the resize: on real photos Pillow's antialiased resize cost ~2.5 ms an image against
~0.5 ms for cv2's (docs/benchmarks.md, "Packing"), which made re-encoding slower than im2rec. The
antialiasing comes from the decode instead: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
scaling, a proper low-pass) whenever the target is that much smaller, so what is left to resize is a
factor under 2, where bilinear interpolation does not alias. Larger factors without that help (PNG
sources) use area averaging. cv2 and simplejpeg are imported only here, on the re-encode path:
pass-through packing, the operator and the other CLIs never load them.
"""

from __future__ import annotations

import functools
import io
import struct
from types import ModuleType
from typing import Any

import numpy as np
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


@functools.cache
def _cv2() -> ModuleType:
    try:
        import cv2
    except ImportError:
        raise RuntimeError("resizing or re-encoding images needs OpenCV: pip install 'aidi[cli]' "
                           "(opencv-python-headless); pass-through packing (resize = None) does not") from None
    return cv2


def one_thread_per_process() -> None:
    """For the packer's worker processes: they are the parallelism (``-j``). OpenCV's own thread pool on top
    would split each resize across the same cores, and on a busy machine wait for its slowest helper."""
    _cv2().setNumThreads(1)


@functools.cache
def _simplejpeg() -> ModuleType:
    try:
        import simplejpeg
    except ImportError:
        raise RuntimeError("resizing or re-encoding images needs simplejpeg: pip install 'aidi[cli]'; "
                           "pass-through packing (resize = None) does not") from None
    return simplejpeg


def _dct_scale(draft: tuple[int, int, int, int]) -> int:
    """The largest of 8, 4, 2 (else 1) that a JPEG of ``draft``'s (width, height) can be divided by and still
    cover its (target width, target height)."""
    for scale in (8, 4, 2):
        if draft[0] // scale >= draft[2] and draft[1] // scale >= draft[3]:
            return scale
    return 1


def _decode(data: bytes, draft: tuple[int, int, int, int] | None) -> Any:
    """BGR pixels; with ``draft`` (width, height, target width, target height), a JPEG at the smallest DCT
    scale that still covers the target. Stored pixels as they are (no EXIF rotation), as pass-through."""
    if draft is not None:
        # simplejpeg's libjpeg-turbo decodes the same pixels as OpenCV's, 8-10 % faster on the bench's
        # photos (OpenCV's imdecode adds its own work around the same library). Only 1/1, 1/2, 1/4 and
        # 1/8 are asked for: those are the SIMD-accelerated scales; libjpeg-turbo's M/8 ones were slower.
        scale = _dct_scale(draft)
        try:
            return _simplejpeg().decode_jpeg(data, "BGR", min_width=-(-draft[0] // scale),
                                             min_height=-(-draft[1] // scale))
        except ValueError:
            pass  # a file libjpeg-turbo refuses: OpenCV or Pillow below decode it or say what is wrong
    cv2 = _cv2()
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is not None:
        return pixels
    # Not a format OpenCV reads (GIF, ...) or not an image: Pillow decodes it or says what is wrong.
    return cv2.cvtColor(np.asarray(open_image(data).convert("RGB")), cv2.COLOR_RGB2BGR)


def resized(data: bytes, resize: int | tuple[int, int] | None) -> tuple[Any, tuple[int, int], tuple[int, int]]:
    """Decode and resize: (BGR pixels, original size, packed size). ``bench/pack.py`` scores this for quality."""
    cv2 = _cv2()
    # A JPEG's structure is checked first (libjpeg decodes a truncated file into grey without failing),
    # and its size tells the decoder how far it may scale down.
    size = jpeg_size(data) if is_jpeg(data) else None
    draft = None
    if size is not None and resize is not None:
        draft = (*size, *target_size(size[0], size[1], resize))
    pixels = _decode(data, draft)
    decoded: tuple[int, int] = (pixels.shape[1], pixels.shape[0])
    original = size or decoded
    target = target_size(*original, resize)
    if decoded != target:
        shrink = decoded[0] >= 2 * target[0] and decoded[1] >= 2 * target[1]
        pixels = cv2.resize(pixels, target, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return pixels, original, target


def reencode(data: bytes, resize: int | tuple[int, int] | None, quality: int) -> tuple[bytes, tuple[int, int],
                                                                                        tuple[int, int]]:
    """Decode, resize and encode as JPEG; return (JPEG, original size, packed size)."""
    pixels, original, target = resized(data, resize)
    ok, encoded = _cv2().imencode(".jpg", pixels, [_cv2().IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BadImage(f"could not encode the {target[0]}×{target[1]} image as JPEG")
    return encoded.tobytes(), original, target
