"""Reading user photos: files, folders or globs; EXIF orientation; refusing decompression bombs
and unreadable files with a message for that file (the caller goes on with the rest)."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class PhotoError(Exception):
    """One photo cannot be used; the message names the file and says why."""


def expand_inputs(inputs: str | Path | list) -> list[Path]:
    """Files, folders (their photos, sorted, not recursive) and globs, in the order given;
    a path that matches nothing is kept so that its row can say so."""
    specs = inputs if isinstance(inputs, list | tuple) else [inputs]
    found: list[Path] = []
    for spec in map(str, specs):
        path = Path(spec).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        elif path.is_file() or not glob.has_magic(spec):
            found.append(path)
        else:
            found += sorted(
                Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()
            )
    return list(dict.fromkeys(found))  # once each, first position kept


def load_photo(path: Path, max_pixels: int) -> Image.Image:
    """An RGB photo, turned upright by its EXIF orientation. Raises PhotoError for a missing,
    unreadable or truncated file, or one over ``max_pixels`` (a decompression bomb)."""
    if not path.is_file():
        raise PhotoError(f"{path}: no such file")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's limit is global; restored below
    try:
        with warnings.catch_warnings():
            # Over the limit PIL warns, over twice the limit it raises: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
                return upright.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PhotoError(
            f"{path}: refused, {error} (raise predict.max_pixels if the photo is genuine)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"{path}: not a readable JPEG/PNG/WebP image ({error})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
