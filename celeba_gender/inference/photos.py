"""Reading user photos: files, folders or globs, decoded by the project's one decode
(``data.images.decode_image``: any format PIL opens, EXIF orientation, first frame, alpha over
white, decompression bombs refused); an unusable file raises PhotoError naming it (the caller
gives it its row and goes on with the rest)."""

from __future__ import annotations

import glob
from pathlib import Path

from PIL import Image

from celeba_gender.data.images import ImageDecodeError, decode_image, photo_suffixes

# File name endings a folder lists as videos (predict samples their frames: inference/video.py).
# Any file named so is a video, listed or given by name; other files are photos.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
     ".flv", ".wmv", ".ogv", ".3gp", ".y4m"}
)  # fmt: skip


class PhotoError(Exception):
    """One photo cannot be used; the message names the file and says why."""


def is_photo_name(path: Path) -> bool:
    return path.suffix.lower() in photo_suffixes()


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(inputs: str | Path | list) -> list[Path]:
    """Files, folders (their files of any format PIL opens and their videos, sorted, not
    recursive; entries named like photos or videos that are not files, such as dangling links,
    too) and globs,
    in the order given; a path that matches nothing, or a file given by name whatever it holds,
    is kept so that its row can say what it is."""
    specs = inputs if isinstance(inputs, list | tuple) else [inputs]
    found: list[Path] = []
    for spec in map(str, specs):
        path = Path(spec).expanduser()
        if path.is_dir():
            # Every entry named like a photo but a folder: a dangling or looping link, a FIFO
            # or an unreadable file is listed too, and its row says what it is.
            found += sorted(
                p
                for p in path.iterdir()
                if (is_photo_name(p) or is_video_name(p)) and not p.is_dir()
            )
        elif path.is_file() or not glob.has_magic(spec):
            found.append(path)
        else:
            found += sorted(
                Path(p) for p in glob.glob(str(path), recursive=True) if not Path(p).is_dir()
            )
    return list(dict.fromkeys(found))  # once each, first position kept


def load_photo(path: Path, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """An RGB photo, turned upright by its EXIF orientation. Raises PhotoError for a missing,
    unreadable or truncated file, one over ``max_pixels`` (a decompression bomb) or under
    ``min_side`` pixels on a side (default: decode_image's)."""
    limits = {"max_pixels": max_pixels} | ({} if min_side is None else {"min_side": min_side})
    try:
        return decode_image(path, name=str(path), **limits)
    except ImageDecodeError as error:
        reason = error.reason
        if not reason.startswith(("refused", "too small", "no such file")):
            reason = f"not a readable image: {reason}"
        raise PhotoError(f"{error.name}: {reason}") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is this photo's alone
        raise PhotoError(
            f"{path}: not a readable image ({type(error).__name__}: {error})"
        ) from None
