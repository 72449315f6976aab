"""Decoding of encoded image files (JPEG, PNG) into frames, with a size check before decoding."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .preprocessing import FrameError

__all__ = ["decode_image"]


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [H, W, 3] RGB.

    The header is read first, so a small file that would decode to gigapixels is refused before
    any pixel memory is allocated; truncated files are refused rather than half-decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("JPEG", "PNG"):
                    raise FrameError(f"images must be JPEG or PNG, got {image.format}")
                width, height = image.size
                if width * height > max_pixels:
                    raise FrameError(
                        f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels"
                    )
                return np.asarray(image.convert("RGB"))
    except FrameError:
        raise
    except UnidentifiedImageError:
        raise FrameError(f"corrupt or unreadable image ({len(data)} bytes): not a JPEG or PNG file") from None
    except Image.DecompressionBombError as error:
        raise FrameError(f"image is over the pixel limit of {max_pixels}: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise FrameError(f"corrupt or unreadable image ({len(data)} bytes): {error}") from None
