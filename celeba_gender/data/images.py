"""The one image decode: any file PIL can open becomes an upright 8-bit RGB picture, or is refused
with a reason a person can act on.

The data scan, the decoded-image cache, the training datasets and predict all call
``decode_image``, so a file the scan accepts is decoded the same way everywhere.

PIL's own ``convert("RGB")`` is not enough: it clips 16-bit, 32-bit and float pixels to 255 (a
16-bit face becomes a white square) and drops alpha without compositing, so transparent
areas show whatever colour they happen to store.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pixels above which a file is refused as a possible decompression bomb, unless a caller says
# otherwise (predict.max_pixels). CelebA's in-the-wild photos are at most a few megapixels.
DEFAULT_MAX_PIXELS = 50_000_000
# Files above this many bytes are refused unread: an uncompressed 16-bit RGBA TIFF at the
# pixel limit is 400 MB.
MAX_FILE_BYTES = 1 << 30
# Images smaller than this on either side hold no face a classifier could use.
DEFAULT_MIN_SIDE = 8
# Transparent pixels are shown over white, as an image viewer shows them.
_BACKGROUND = (255, 255, 255)


@functools.cache
def photo_suffixes() -> frozenset[str]:
    """The file name endings (lower case, with the dot) of every format PIL can open:
    .jpg, .png, .webp, .gif, .bmp, .tif, .tiff, ... (a folder lists those files)."""
    Image.init()  # registers every plugin, not only the common ones
    return frozenset(
        suffix.lower()
        for suffix, format_name in Image.registered_extensions().items()
        if format_name in Image.OPEN
    )


def _is_wide(mode: str) -> bool:
    """Modes whose samples are wider than 8 bits (32-bit int, float, every 16-bit variant):
    scaled to 0..255, not clipped."""
    return mode in ("I", "F") or mode.startswith(("I;", "F;"))


class ImageDecodeError(Exception):
    """One file cannot be used as a picture. ``reason`` says why, without the file name."""

    def __init__(self, name: str, reason: str, transient: bool = False) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        # Says nothing of the content (permission denied, gone, out of memory): may differ on
        # another try with the same size and mtime, so never cached.
        self.transient = transient


@dataclass(frozen=True)
class DecodedImage:
    """``decode_image``'s picture with what the file held: its mode, format and frame count."""

    image: Image.Image  # upright 8-bit RGB
    mode: str  # the file's own mode ("L", "I;16", "CMYK", "P", ...)
    format: str  # "JPEG", "PNG", ... ("" when PIL does not say)
    frames: int


def decode_image(
    source: str | Path | bytes | BinaryIO,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """The first frame of ``source`` as an upright (EXIF orientation applied) RGB image.

    Palette, 1-bit, grey, grey+alpha, RGBA, CMYK, YCbCr, LAB, HSV, 16/32-bit integer and float
    images are all read; pixels wider than 8 bits are scaled to 0..255 (see ``_scale_to_uint8``).
    Raises ImageDecodeError for a missing, empty, unknown, truncated or corrupt file, one that
    is not a regular file, one over ``max_pixels`` (a decompression bomb) or one under
    ``min_side`` pixels on a side.
    """
    return read_image(source, name=name, max_pixels=max_pixels, min_side=min_side).image


def read_image(
    source: str | Path | bytes | BinaryIO,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> DecodedImage:
    """``decode_image``, also saying the file's own mode, format and number of frames (the
    data scan reports them)."""
    if name is None:
        name = str(source) if isinstance(source, str | Path) else "image"
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError(name, "zero-byte file")
        return _decode(io.BytesIO(source), name, max_pixels, min_side)
    if isinstance(source, str | Path):
        with open_regular_file(source, name) as handle:
            return _decode(handle, name, max_pixels, min_side)
    return _decode(source, name, max_pixels, min_side)


def _decode(source: BinaryIO, name: str, max_pixels: int, min_side: int) -> DecodedImage:
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
                mode, file_format = image.mode, image.format or ""
                frames = int(getattr(image, "n_frames", 1) or 1)
                image.seek(0)  # multi-frame files (GIF, TIFF, APNG): the first frame
                image.load()
                upright = ImageOps.exif_transpose(image)
                return DecodedImage(_to_rgb(upright), mode, file_format, frames)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(name, f"refused: {error}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image (unknown format)") from None
    except MemoryError:
        raise ImageDecodeError(name, "unreadable: out of memory while decoding", True) from None
    except Exception as error:  # noqa: BLE001 - any decoder failure means this file is unusable
        # Corrupt files make PIL's decoders fail with OSError, SyntaxError, ValueError, but
        # also struct.error, IndexError, KeyError, ZeroDivisionError (bad EXIF, bad headers).
        detail = str(error) or type(error).__name__
        raise ImageDecodeError(name, f"unreadable: {detail}") from None


@contextlib.contextmanager
def open_regular_file(path: str | Path, name: str) -> Iterator[BinaryIO]:
    """A regular file opened for reading, or ImageDecodeError saying why not: missing, a
    dangling symlink or a loop, a folder, a FIFO, a device, no permission, zero bytes. Never
    blocks on a FIFO."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise ImageDecodeError(name, describe_os_error(error, path), True) from None
    try:
        status = os.fstat(descriptor)
    except OSError as error:
        os.close(descriptor)
        raise ImageDecodeError(name, describe_os_error(error, path), True) from None
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        kind = file_kind(stat.S_IFMT(status.st_mode))
        raise ImageDecodeError(name, f"not a regular file ({kind})", True)
    if status.st_size == 0:
        os.close(descriptor)
        raise ImageDecodeError(name, "zero-byte file")
    with os.fdopen(descriptor, "rb") as handle:
        yield handle


def read_file_bytes(path: str | Path, name: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """All bytes of a regular file (``open_regular_file``'s refusals apply), refusing one over
    ``max_bytes`` before reading it (a stray video or disk image named like a photo)."""
    with open_regular_file(path, name) as handle:
        try:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise ImageDecodeError(
                    name,
                    f"too large: {size} bytes (over {max_bytes >> 20} MiB, more than any photo "
                    "within the pixel limit; is it an image?)",
                )
            return handle.read()
        except OSError as error:
            raise ImageDecodeError(name, describe_os_error(error, path), True) from None
        except MemoryError:
            raise ImageDecodeError(name, "unreadable: out of memory while reading", True) from None


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symlink",
}


def file_kind(kind: int) -> str:
    """A file type (``stat.S_IFMT`` of a mode) in words."""
    return _KINDS.get(kind, "not a regular file")


def describe_os_error(error: OSError, path: str | Path) -> str:
    """Why a file cannot be read, in words (no file name: the caller adds it)."""
    if error.errno == errno.ENOENT:
        if os.path.islink(path):
            return "dangling symlink (its target does not exist)"
        return "no such file (deleted or moved while reading?)"
    if error.errno == errno.ELOOP:
        return "symlink loop (the link points back to itself)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (cannot read this file)"
    if error.errno == errno.EISDIR:
        return "not a regular file (a folder)"
    return f"unreadable: {error.strerror or error}"


def _to_rgb(image: Image.Image) -> Image.Image:
    if _is_wide(image.mode):
        image = Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Wide samples onto 0..255, keeping the picture's brightness where its range is known.

    Floats within 0..1 are scaled by 255; other floats have no known range (0..1.3 after a
    filter's overshoot, 0..2, 0..40) and are stretched from their minimum to their maximum,
    not kept as nearly black. Integers within 0..255 are kept; non-negative ones up to 65535
    are read as the bit depth their maximum needs (a 16-bit face by 65535, a 10- or 12-bit one
    stored in 16 bits by 1023 or 4095, not left nearly black); anything else (negative, beyond
    16 bits) is stretched from its minimum to its maximum. NaN and infinite samples become 0.
    """
    values = pixels.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    values = np.where(finite, values, 0.0)
    low, high = float(values.min()), float(values.max())
    is_float = pixels.dtype.kind == "f"
    if low >= 0 and high <= 1.0 and is_float:
        scaled = values * 255.0
    elif is_float and high > low:
        scaled = (values - low) * (255.0 / (high - low))
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        full_scale = 2 ** int(np.ceil(high)).bit_length() - 1
        scaled = values * (255.0 / full_scale)
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
