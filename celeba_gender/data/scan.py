"""Checking every image file once: readable or not, its content hash, its size and mode.

The check decodes each file fully (a truncated JPEG opens fine and fails only on decode), so
its result is cached per folder, keyed on each file's size and modification time: a second
run, or the other 29 jobs of a sweep, re-check only files that changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from celeba_gender.data.cache import atomic_write, cache_folder

SCAN_COLUMNS = ["file", "size", "mtime_ns", "problem", "sha1", "width", "height", "mode", "format"]
_SCAN_CACHE_VERSION = 1


def check_image(path: Path) -> dict:
    """Decode one file completely; ``problem`` is empty when it is a usable image."""
    stat = path.stat()
    record = {
        "file": path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "problem": "",
        "sha1": "",
        "width": 0,
        "height": 0,
        "mode": "",
        "format": "",
    }
    if stat.st_size == 0:
        record["problem"] = "zero-byte file"
        return record
    data = path.read_bytes()
    record["sha1"] = hashlib.sha1(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                record.update(
                    width=image.width, height=image.height, mode=image.mode, format=image.format
                )
    except UnidentifiedImageError:
        record["problem"] = "not an image (unknown format)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        record["problem"] = "refused: too many pixels (decompression bomb)"
    except (OSError, SyntaxError, ValueError) as error:
        record["problem"] = f"unreadable: {error}"
    return record


def _cache_file(image_dir: Path, cache_dir: Path | None) -> Path:
    return cache_folder(image_dir, cache_dir) / f"scan-v{_SCAN_CACHE_VERSION}.csv"


def scan_image_folder(
    image_dir: str | Path, cache_dir: str | Path | None = None, workers: int | None = None
) -> tuple[pd.DataFrame, dict]:
    """Check every regular, non-hidden file in ``image_dir``, reusing cached results.

    Returns one row per file (``SCAN_COLUMNS``) and how many were checked versus reused.
    """
    image_dir = Path(image_dir)
    cache_file = _cache_file(image_dir, Path(cache_dir) if cache_dir else None)
    entries = sorted(
        (
            entry
            for entry in os.scandir(image_dir)
            if entry.is_file() and not entry.name.startswith(".")
        ),
        key=lambda entry: entry.name,
    )
    current = pd.DataFrame(
        {
            "file": [entry.name for entry in entries],
            "size": [entry.stat().st_size for entry in entries],
            "mtime_ns": [entry.stat().st_mtime_ns for entry in entries],
        }
    )
    cached = _read_cache(cache_file)
    if cached is not None:
        merged = current.merge(cached, on=["file", "size", "mtime_ns"], how="left", indicator=True)
        reused = merged[merged["_merge"] == "both"].drop(columns="_merge")
        stale = merged.loc[merged["_merge"] == "left_only", "file"].tolist()
    else:
        reused = pd.DataFrame(columns=SCAN_COLUMNS)
        stale = current["file"].tolist()

    if stale:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            # PIL decoding and hashlib release the GIL, so threads use every core.
            checked = pd.DataFrame(list(pool.map(check_image, (image_dir / n for n in stale))))
        frames = [frame for frame in (reused, checked) if len(frame)]
        result = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        result = result.sort_values("file", ignore_index=True)[SCAN_COLUMNS]
        _write_cache(cache_file, result)
    else:
        result = reused.sort_values("file", ignore_index=True)[SCAN_COLUMNS]
    return result, {
        "checked": len(stale),
        "reused_from_cache": len(result) - len(stale),
        "cache_file": str(cache_file),
    }


def _read_cache(cache_file: Path) -> pd.DataFrame | None:
    if not cache_file.is_file():
        return None
    try:
        frame = pd.read_csv(
            cache_file,
            dtype={"file": str, "problem": str, "sha1": str, "mode": str, "format": str},
            keep_default_na=False,
        )
    except (pd.errors.ParserError, ValueError, OSError):
        return None  # A damaged cache is only a cache: check again.
    return frame if list(frame.columns) == SCAN_COLUMNS else None


def _write_cache(cache_file: Path, frame: pd.DataFrame) -> None:
    # A read-only cache folder costs a re-check next time, nothing more.
    with contextlib.suppress(OSError):
        atomic_write(cache_file, frame.to_csv(index=False).encode())
