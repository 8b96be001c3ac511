"""Checking every image file once: readable or not, its content hash, its size and mode.

The check decodes each file fully (a truncated JPEG opens fine and fails only on decode), so
its result is cached per folder, keyed on each file's size and modification time: a second
run, or the other 29 jobs of a sweep, re-check only files that changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from celeba_gender.data.cache import atomic_write, cache_folder
from celeba_gender.data.errors import DataError
from celeba_gender.data.images import (
    ImageDecodeError,
    describe_os_error,
    file_kind,
    read_file_bytes,
    read_image,
)

SCAN_COLUMNS = ["file", "size", "mtime_ns", "problem", "sha1", "width", "height", "mode", "format"]
# 2: the check is images.read_image (every mode read, tiny images refused, non-regular files).
_SCAN_CACHE_VERSION = 2


def _record(name: str, size: int = -1, mtime_ns: int = -1, problem: str = "") -> dict:
    return {
        "file": name,
        "size": size,
        "mtime_ns": mtime_ns,
        "problem": problem,
        "sha1": "",
        "width": 0,
        "height": 0,
        "mode": "",
        "format": "",
    }


def check_image(path: Path) -> dict:
    """Decode one file completely with ``images.read_image`` (the decode every reader uses);
    ``problem`` is empty when it is a usable image, else says why not. Never raises for the
    file's sake: a file deleted, replaced by a folder or FIFO, or unreadable since it was listed
    is a row with a problem. ``width`` and ``height`` are the upright picture's."""
    try:
        status = path.stat()
    except OSError as error:
        return _record(path.name, problem=describe_os_error(error, path))
    record = _record(path.name, status.st_size, status.st_mtime_ns)
    try:
        data = read_file_bytes(path, path.name)
        record["sha1"] = hashlib.sha1(data).hexdigest()
        decoded = read_image(data, name=path.name)
    except ImageDecodeError as error:
        if error.transient:
            # Not the content's fault (permission denied, gone, out of memory): size -1 keeps
            # the row out of the scan cache, so a chmod (which keeps size and mtime) is seen.
            return _record(path.name, problem=error.reason)
        record["problem"] = error.reason
        return record
    record.update(
        width=decoded.image.width,
        height=decoded.image.height,
        mode=decoded.mode,
        format=decoded.format,
    )
    return record


def _cache_file(image_dir: Path, cache_dir: Path | None) -> Path:
    return cache_folder(image_dir, cache_dir) / f"scan-v{_SCAN_CACHE_VERSION}.csv"


def _list_folder(image_dir: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The folder's non-hidden regular files (name, size, mtime_ns) to check, and a problem
    row for every other entry: a folder, FIFO, socket or device, a dangling symlink, a symlink
    loop, an entry that cannot be stat'ed or vanished while listing."""
    try:
        with os.scandir(image_dir) as listing:
            entries = [entry for entry in listing if not entry.name.startswith(".")]
    except OSError as error:
        raise DataError(
            f"Cannot list the image folder {image_dir}: {describe_os_error(error, image_dir)}. "
            "Check that it exists and that this user may read it."
        ) from None
    regular: list[tuple[str, int, int]] = []
    special: list[dict] = []
    for entry in sorted(entries, key=lambda entry: entry.name):
        try:
            status = entry.stat()  # follows symlinks: a link to an image is that image
        except OSError as error:
            special.append(_record(entry.name, problem=describe_os_error(error, entry.path)))
            continue
        if stat.S_ISREG(status.st_mode):
            regular.append((entry.name, status.st_size, status.st_mtime_ns))
        else:
            kind = file_kind(stat.S_IFMT(status.st_mode))
            special.append(
                _record(
                    entry.name, status.st_size, status.st_mtime_ns, f"not a regular file ({kind})"
                )
            )
    current = pd.DataFrame(regular, columns=["file", "size", "mtime_ns"]).astype(
        {"file": str, "size": "int64", "mtime_ns": "int64"}
    )
    return current, special


def _list_names(image_dir: Path, names: Sequence[str]) -> tuple[pd.DataFrame, list[dict]]:
    """``_list_folder`` for given relative paths (an image folder tree, a CSV's files): each
    one stat'ed, a problem row for any that is not a regular file or cannot be stat'ed."""
    regular: list[tuple[str, int, int]] = []
    special: list[dict] = []
    for name in sorted(set(names)):
        path = image_dir / name
        try:
            status = path.stat()
        except OSError as error:
            special.append(_record(name, problem=describe_os_error(error, path)))
            continue
        if stat.S_ISREG(status.st_mode):
            regular.append((name, status.st_size, status.st_mtime_ns))
        else:
            kind = file_kind(stat.S_IFMT(status.st_mode))
            special.append(
                _record(name, status.st_size, status.st_mtime_ns, f"not a regular file ({kind})")
            )
    current = pd.DataFrame(regular, columns=["file", "size", "mtime_ns"]).astype(
        {"file": str, "size": "int64", "mtime_ns": "int64"}
    )
    return current, special


def _check_named(image_dir: Path, name: str) -> dict:
    # check_image names a row by the file's base name; a relative path keeps its folders.
    return {**check_image(image_dir / name), "file": name}


def scan_image_folder(
    image_dir: str | Path,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Check every non-hidden entry of ``image_dir``, reusing cached results for regular files.

    ``names`` (relative paths under ``image_dir``, '/'-separated) replaces the folder's
    listing: those files are checked, and the ``file`` column holds the relative path.
    Returns one row per entry (``SCAN_COLUMNS``; entries that are not regular files, or that
    cannot be read, have a ``problem``) and how many were checked versus reused.
    """
    image_dir = Path(image_dir)
    cache_file = _cache_file(image_dir, Path(cache_dir) if cache_dir else None)
    current, special = _list_folder(image_dir) if names is None else _list_names(image_dir, names)
    cached = _read_cache(cache_file)
    if cached is not None:
        merged = current.merge(cached, on=["file", "size", "mtime_ns"], how="left", indicator=True)
        reused = merged[merged["_merge"] == "both"].drop(columns="_merge")
        stale = merged.loc[merged["_merge"] == "left_only", "file"].tolist()
    else:
        reused = pd.DataFrame(columns=SCAN_COLUMNS)
        stale = current["file"].tolist()

    checked = pd.DataFrame(columns=SCAN_COLUMNS)
    if stale:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            # PIL decoding and hashlib release the GIL, so threads use every core.
            checked = pd.DataFrame(list(pool.map(lambda n: _check_named(image_dir, n), stale)))
    frames = [frame for frame in (reused, checked) if len(frame)]
    files = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCAN_COLUMNS)
    files = files.sort_values("file", ignore_index=True)[SCAN_COLUMNS]
    if stale:
        # Only files whose content was checked: a vanished or unreadable file's row (size -1)
        # must be checked again next time.
        _write_cache(cache_file, files[files["size"] >= 0])
    frames = [frame for frame in (files, pd.DataFrame(special, columns=SCAN_COLUMNS)) if len(frame)]
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCAN_COLUMNS)
    result = result.sort_values("file", ignore_index=True)[SCAN_COLUMNS]
    result = result.astype(
        {"file": str, "size": "int64", "mtime_ns": "int64", "width": "int64", "height": "int64"}
    )
    return result, {
        "checked": len(stale),
        "reused_from_cache": len(files) - len(stale),
        "not_regular_files": len(special),
        "cache_file": str(cache_file),
    }


def _read_cache(cache_file: Path) -> pd.DataFrame | None:
    try:
        if not cache_file.is_file():
            return None
        frame = pd.read_csv(
            cache_file,
            dtype={"file": str, "problem": str, "sha1": str, "mode": str, "format": str},
            keep_default_na=False,
            encoding="utf-8",
            encoding_errors="surrogateescape",
        )
    except (pd.errors.ParserError, ValueError, OSError):
        return None  # A damaged cache is only a cache: check again.
    if list(frame.columns) != SCAN_COLUMNS or frame["file"].duplicated().any():
        return None
    try:
        return frame.astype(
            {"size": "int64", "mtime_ns": "int64", "width": "int64", "height": "int64"}
        )
    except (TypeError, ValueError):
        return None


def _write_cache(cache_file: Path, frame: pd.DataFrame) -> None:
    # A read-only cache folder costs a re-check next time, nothing more.
    with contextlib.suppress(OSError):
        # File names that are not UTF-8 (surrogate-escaped by os.scandir) round-trip as bytes.
        atomic_write(cache_file, frame.to_csv(index=False).encode("utf-8", "surrogateescape"))
