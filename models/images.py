"""Decoding of encoded image files (JPEG, PNG) into RGB frames, with size checks before decoding.

One rule per Pillow mode, so every file means the same pixels to every caller:

| mode (from) | rule |
|---|---|
| RGB (JPEG, PNG), YCbCr | as stored / YCbCr -> RGB |
| L (JPEG, PNG), 1 (bilevel PNG) | gray repeated on R, G, B; bilevel 1 -> 255 |
| LA, RGBA (PNG) | alpha dropped: the colour channels as stored, not composited |
| P (palette PNG), with or without transparency | palette colours; transparency dropped |
| I;16, I;16B, I;16L, I;16N (16-bit gray PNG) | x -> x >> 8 (the high byte), gray |
| I (older Pillow's 16-bit gray PNG) | clipped to 0..65535, then as I;16 |
| CMYK (Adobe JPEG) | Pillow's CMYK -> RGB |

Every 16-bit PNG keeps the high byte of each sample (x >> 8), gray or colour: Pillow decodes 16-bit colour
(48-bit RGB, 64-bit RGBA, 32-bit gray + alpha) that way itself, and one rule for all makes the same
sample the same pixel in every mode (it is at most 1 away from round(x / 257)). JPEG frames, including MPO (a
JPEG with an MPF segment, as phones write; its first image is used), are turned upright by their EXIF
Orientation. Colour profiles (ICC) are not applied.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .preprocessing import FrameError

__all__ = ["decode_image", "image_to_rgb"]

_FORMATS = ("JPEG", "PNG")  # Pillow's JPEG plugin opens MPO too
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_NOT_INTERLACED = ((0, 0, 1, 1),)  # (first column, first row, column step, row step) of each pass
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_PIECE = 1 << 20


def decode_image(data: bytes, *, max_side: int, max_pixels: int) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [H, W, 3] RGB, by the rules in this module's docstring.

    The header is checked first, so a small file that would decode to gigapixels (or to a frame
    the raw path would refuse) is refused before any pixel memory is allocated. The whole image is
    then decoded at once, so a truncated file is refused rather than half-decoded.
    """
    try:
        with _pillow_warnings_ignored(), Image.open(io.BytesIO(data), formats=_FORMATS) as image:
            _check_size(image.size, max_side, max_pixels)
            image.load()
            if image.format == "PNG":
                _check_png_complete(data)
            else:
                ImageOps.exif_transpose(image, in_place=True)
            return image_to_rgb(image)
    except FrameError:
        raise
    except UnidentifiedImageError:
        raise FrameError(
            f"corrupt or unreadable image ({len(data)} bytes starting {data[:8]!r}): not a JPEG or PNG "
            "file, or one cut short inside its header"
        ) from None
    except Image.DecompressionBombError as error:
        raise FrameError(f"image is over the pixel limit of {max_pixels}: {error}") from None
    except (OSError, SyntaxError, ValueError, zlib.error) as error:
        raise FrameError(
            f"truncated or corrupt image ({len(data)} bytes): {error}; send the complete JPEG or PNG file"
        ) from None


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded image of any mode JPEG or PNG yield -> uint8 [H, W, 3] RGB (rules: module docstring)."""
    convert = _TO_RGB.get(image.mode)
    if convert is None:
        raise FrameError(f"image mode {image.mode} is not supported; send an 8- or 16-bit JPEG or PNG")
    return convert(image)


@contextmanager
def _pillow_warnings_ignored() -> Iterator[None]:
    """Pillow warns about pixel counts `_check_size` bounds anyway, and about metadata it could not
    read and skipped (malformed MPF or EXIF: the frame is then used as stored); whatever spoils the
    pixels raises instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _check_size(size: tuple[int, int], max_side: int, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise FrameError(f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels")
    if not (0 < width <= max_side and 0 < height <= max_side):
        raise FrameError(
            f"image size {width}x{height} (width x height) outside 1..{max_side} per side; scale it down"
        )


def _converted(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _palette(image: Image.Image) -> np.ndarray:
    """Through RGBA: Pillow warns when a palette with transparency goes straight to RGB."""
    return np.asarray(image.convert("RGBA"))[..., :3]


def _sixteen_bit_gray(image: Image.Image) -> np.ndarray:
    """Pillow's own conversion clips 16-bit gray at 255, turning a whole frame white."""
    samples = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    gray = (samples >> 8).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


_TO_RGB: dict[str, Callable[[Image.Image], np.ndarray]] = {
    **dict.fromkeys(("RGB", "YCbCr", "L", "1", "LA", "RGBA", "CMYK"), _converted),
    "P": _palette,
    **dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N", "I"), _sixteen_bit_gray),
}


def _check_png_complete(data: bytes) -> None:
    """Pillow fills the rows missing from a short but well-formed pixel stream with black without a
    word, so the stream's decompressed size is measured against what the header declares."""
    chunks = _png_chunks(memoryview(data))
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack_from(">IIBBBBB", next(chunks)[1])
    bits_per_pixel = bit_depth * _PNG_CHANNELS[colour_type]
    passes = _ADAM7 if interlace else _NOT_INTERLACED
    expected = sum(_pass_bytes(width, height, bits_per_pixel, *grid) for grid in passes)
    found = _inflated_size((payload for kind, payload in chunks if kind == b"IDAT"), limit=expected)
    if found < expected:
        raise FrameError(
            f"truncated or corrupt image ({len(data)} bytes): its pixel data ends after {found} of the "
            f"{expected} bytes a {width}x{height} PNG needs; send the complete PNG file"
        )


def _png_chunks(data: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """(type, payload) of each chunk after the signature, up to where the data ends."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        yield kind, data[offset + 8 : offset + 8 + length]
        offset += 12 + length


def _pass_bytes(width: int, height: int, bits_per_pixel: int, x0: int, y0: int, dx: int, dy: int) -> int:
    """Filtered bytes of one interlace pass: a filter byte, then the packed pixels, per row."""
    columns = max(0, -(-(width - x0) // dx))
    rows = max(0, -(-(height - y0) // dy))
    return rows * (1 + (columns * bits_per_pixel + 7) // 8) if columns else 0


def _inflated_size(payloads: Iterator[memoryview], limit: int) -> int:
    """Decompressed size of the IDAT stream, inflated in pieces and only just past `limit`, so a
    zlib bomb costs neither memory nor time."""
    inflater = zlib.decompressobj()
    size = 0
    for payload in payloads:
        pending: bytes | memoryview = payload
        while pending and size <= limit:
            size += len(inflater.decompress(pending, _INFLATE_PIECE))
            pending = inflater.unconsumed_tail
    return size
