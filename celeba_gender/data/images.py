"""The one image decode: any file PIL can open becomes an upright 8-bit RGB picture, or is refused
with a reason a person can act on.

The data scan, the decoded-image cache, the training datasets and predict all call
``decode_image``, so a file the scan accepts is decoded the same way everywhere.

PIL's own ``convert("RGB")`` is not enough: it clips 16-bit, 32-bit and float pixels to 255 (a
16-bit face becomes a white square) and drops alpha without compositing, so transparent
areas show whatever colour they happen to store.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pixels above which a file is refused as a possible decompression bomb, unless a caller says
# otherwise (predict.max_pixels). CelebA's in-the-wild photos are at most a few megapixels.
DEFAULT_MAX_PIXELS = 50_000_000
# Images smaller than this on either side hold no face a classifier could use.
DEFAULT_MIN_SIDE = 8
# Transparent pixels are shown over white, as an image viewer shows them.
_BACKGROUND = (255, 255, 255)
# Modes whose samples are wider than 8 bits: scaled to 0..255 by their range, not clipped.
_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(Exception):
    """One file cannot be used as a picture. ``reason`` says why, without the file name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def decode_image(
    source: str | Path | bytes | BinaryIO,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """The first frame of ``source`` as an upright (EXIF orientation applied) RGB image.

    Palette, 1-bit, grey, grey+alpha, RGBA, CMYK, YCbCr, LAB, HSV, 16/32-bit integer and float
    images are all read; pixels wider than 8 bits are scaled to 0..255 by their value range.
    Raises ImageDecodeError for a missing, empty, unknown, truncated or corrupt file, one over
    ``max_pixels`` (a decompression bomb) or one under ``min_side`` pixels on a side.
    """
    if name is None:
        name = str(source) if isinstance(source, str | Path) else "image"
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError(name, "zero-byte file")
        source = io.BytesIO(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(name, "no such file")
        if path.stat().st_size == 0:
            raise ImageDecodeError(name, "zero-byte file")
    try:
        with warnings.catch_warnings():
            # PIL's global bomb limit (MAX_IMAGE_PIXELS) warns at 1x and raises at 2x; the
            # limit here is the caller's, checked from the header before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        name,
                        f"refused: {width}x{height} pixels is over the limit of {max_pixels} "
                        "(a possible decompression bomb; raise max_pixels if it is genuine)",
                    )
                if min(width, height) < min_side:
                    raise ImageDecodeError(
                        name,
                        f"too small: {width}x{height} pixels (at least {min_side} per side)",
                    )
                image.seek(0)  # multi-frame files (GIF, TIFF, APNG): the first frame
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(name, f"refused: {error}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as error:
        raise ImageDecodeError(name, f"unreadable: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_MODES:
        image = Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Wide samples onto 0..255: by the nominal range their values fit in (0..1 for float,
    0..255, 0..65535), else stretched from their minimum to their maximum."""
    values = pixels.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    values = np.where(finite, values, 0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1.0 and pixels.dtype.kind == "f":
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
