"""Checking every image file once: readable or not, its content hash, its size and mode.

The check decodes each file fully (a truncated JPEG opens fine and fails only on decode), so
its result is cached, keyed by what survives a copy: the file's name, size and a content
sample (sha1 of the size and the first and last 4 KiB), not its path or mtime. A second run,
the other jobs of a sweep, and a copy of the folder on a node's local disk (``cp`` without
``-p``, ``rsync`` without ``-t``) re-check nothing. The sample costs 8 KiB per file; a memo
per path, keyed by (name, size, mtime), saves even that on the same copy.

When the run also wants a decoded-image cache that does not exist yet, the check fills it
(``tensor_size``): each file is read and decoded once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from celeba_gender.data.cache import (
    ImageTensorCache,
    TensorCacheWriter,
    atomic_write,
    cache_root,
    changed_since_scan,
    decode_rgb,
    exclusive_lock,
    parallel,
    path_hash,
    record_use,
    resized_rgb,
    tensor_cache_meta,
    tensor_cache_path,
    tensor_folder,
)
from celeba_gender.data.errors import DataError
from celeba_gender.data.images import (
    ImageDecodeError,
    describe_os_error,
    file_kind,
    read_file_bytes,
    read_image,
)

SCAN_COLUMNS = [
    "file", "size", "mtime_ns", "sample", "problem", "sha1", "width", "height", "mode", "format"
]  # fmt: skip
# What the scan cache keeps: every column but the mtime, which a copy does not keep.
_CACHED_COLUMNS = [column for column in SCAN_COLUMNS if column != "mtime_ns"]
_CONTENT_KEY = ["file", "size", "sample"]
_MEMO_COLUMNS = ["file", "size", "mtime_ns", "sample"]
SAMPLE_BYTES = 4096
# Pixels of stale files held in memory while checking whether their cache exists (_check_and_fill):
# about 2,200 images at 218x178, 27,000 at 64x52.
HELD_PIXEL_BYTES = 256 << 20
# 3: keyed by content (name, size, sample), shared by every copy of a folder.
_SCAN_CACHE_VERSION = 3
_INTEGERS = {"size": "int64", "mtime_ns": "int64", "width": "int64", "height": "int64"}
_TEXTS = {"file": str, "sample": str, "problem": str, "sha1": str, "mode": str, "format": str}


def _record(name: str, size: int = -1, mtime_ns: int = -1, problem: str = "") -> dict:
    return {
        "file": name,
        "size": size,
        "mtime_ns": mtime_ns,
        "sample": "",
        "problem": problem,
        "sha1": "",
        "width": 0,
        "height": 0,
        "mode": "",
        "format": "",
    }


def _sample_digest(size: int, head: bytes, tail: bytes) -> str:
    return hashlib.sha1(f"{size}\n".encode() + head + tail).hexdigest()


def content_sample(path: Path, size: int) -> str:
    """sha1 of the size and the first and last SAMPLE_BYTES (the whole of a small file): what
    tells a file's content from another's without reading it all. "" when it cannot be read
    (the full check then says why)."""
    try:
        # O_NONBLOCK: a file replaced by a FIFO since the listing must not block the scan.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return ""
        head = os.pread(descriptor, SAMPLE_BYTES, 0)
        tail = os.pread(descriptor, SAMPLE_BYTES, max(size - SAMPLE_BYTES, SAMPLE_BYTES))
        return _sample_digest(size, head, tail)
    except OSError:
        return ""
    finally:
        os.close(descriptor)


def _check(
    path: Path, tensor_size: tuple[int, int] | None, name: str | None = None
) -> tuple[dict, np.ndarray | None]:
    """``check_image``, and the picture at ``tensor_size`` when asked and usable. The row is
    named ``name`` (a relative path under the scanned folder), else by the file's name."""
    name = name or path.name
    try:
        status = path.stat()
    except OSError as error:
        return _record(name, problem=describe_os_error(error, path)), None
    record = _record(name, status.st_size, status.st_mtime_ns)
    try:
        data = read_file_bytes(path, path.name)
        record["sha1"] = hashlib.sha1(data).hexdigest()
        # The sample of the bytes read, so the cached row describes exactly this content.
        tail = data[max(len(data) - SAMPLE_BYTES, SAMPLE_BYTES) :]
        record.update(size=len(data), sample=_sample_digest(len(data), data[:SAMPLE_BYTES], tail))
        decoded = read_image(data, name=path.name)
    except ImageDecodeError as error:
        if error.transient:
            # Not the content's fault (permission denied, gone, out of memory): size -1 keeps
            # the row out of the scan cache, so a chmod (which keeps size and mtime) is seen.
            return _record(name, problem=error.reason), None
        record["problem"] = error.reason
        if not record["sample"]:  # refused unread (empty, too large): sampled to be cached
            record["sample"] = content_sample(path, record["size"])
        return record, None
    record.update(
        width=decoded.image.width,
        height=decoded.image.height,
        mode=decoded.mode,
        format=decoded.format,
    )
    pixels = resized_rgb(decoded.image, *tensor_size) if tensor_size else None
    return record, pixels


def check_image(path: Path) -> dict:
    """Decode one file completely with ``images.read_image`` (the decode every reader uses);
    ``problem`` is empty when it is a usable image, else says why not. Never raises for the
    file's sake: a file deleted, replaced by a folder or FIFO, or unreadable since it was listed
    is a row with a problem. ``width`` and ``height`` are the upright picture's."""
    return _check(path, None)[0]


def scan_cache_files(image_dir: Path, cache_dir: Path | None) -> tuple[Path, Path]:
    """The content-keyed scan cache shared by every folder of this name, and this path's memo."""
    name = Path(image_dir).resolve().name or "root"
    folder = cache_root(cache_dir) / f"scan-v{_SCAN_CACHE_VERSION}"
    return folder / f"{name}.csv", folder / "paths" / f"{name}-{path_hash(image_dir)}.csv"


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


def _split_reused(current: pd.DataFrame, cached: pd.DataFrame | None):
    """Rows of ``current`` (with their samples) found in the scan cache, and the names not."""
    if cached is None:
        return pd.DataFrame(columns=SCAN_COLUMNS), current["file"].tolist()
    merged = current.merge(cached, on=_CONTENT_KEY, how="left", indicator=True)
    found = (merged["_merge"] == "both") & (merged["sample"] != "")
    return merged[found].drop(columns="_merge"), merged.loc[~found, "file"].tolist()


def scan_image_folder(
    image_dir: str | Path,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    tensor_size: tuple[int, int] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Check every non-hidden entry of ``image_dir``, reusing cached results for regular files.

    Returns one row per entry (``SCAN_COLUMNS``, by file name; entries that are not regular
    files, or that cannot be read, have a ``problem``) and facts: how many files were checked,
    sampled (8 KiB read) and reused, the cache files, the seconds taken. With ``tensor_size``
    (height, width), files that must be checked also fill the decoded-image cache of the whole
    listing, one row per entry in this order (``tensor_cache`` in the facts), unless it exists.
    ``names`` (relative paths under ``image_dir``, '/'-separated) replaces the folder's
    listing: those files are checked, and the ``file`` column holds the relative path.
    """
    start = time.perf_counter()
    image_dir = Path(image_dir)
    cache_dir = Path(cache_dir) if cache_dir else None
    scan_file, memo_file = scan_cache_files(image_dir, cache_dir)
    current, special = _list_folder(image_dir) if names is None else _list_names(image_dir, names)
    memo = _read_table(memo_file, _MEMO_COLUMNS)
    if memo is not None:
        current = current.merge(memo, on=["file", "size", "mtime_ns"], how="left")
        current["sample"] = current["sample"].fillna("")
    else:
        current["sample"] = ""
    cached = _read_table(scan_file, _CACHED_COLUMNS)
    # With no scan cache every file is checked, and its check computes the sample.
    unsampled = np.flatnonzero(current["sample"].to_numpy() == "") if cached is not None else []
    if len(unsampled):
        names, sizes = current["file"].to_numpy(), current["size"].to_numpy()
        current.loc[unsampled, "sample"] = parallel(
            lambda i: content_sample(image_dir / names[i], int(sizes[i])),
            unsampled,
            workers,
            desc="Sampling files",
        )
    reused, stale = _split_reused(current, cached)

    checked_rows: list[dict] = []
    tensor_facts: dict | None = None
    if stale:
        # One job checks, the others wait and then find its rows (sweep jobs, DDP ranks).
        with exclusive_lock(scan_file.with_suffix(".lock")):
            reused, stale = _split_reused(current, _read_table(scan_file, _CACHED_COLUMNS))
            if stale and tensor_size:
                checked_rows, tensor_facts = _check_and_fill(
                    image_dir, current, reused, stale, special, cache_dir, tensor_size, workers
                )
            elif stale:
                checked_rows = parallel(
                    lambda name: _check(image_dir / name, None, name)[0],
                    stale,
                    workers,
                    desc="Checking images",
                )
            # Only files whose content was checked: a vanished or unreadable file's row (size
            # -1) must be checked again next time.
            _merge_into_cache(scan_file, [row for row in checked_rows if row["size"] >= 0])
    checked = pd.DataFrame(checked_rows, columns=SCAN_COLUMNS)
    if len(unsampled) or len(checked):
        sampled = pd.concat(
            [current[_MEMO_COLUMNS], checked.loc[checked["sample"] != "", _MEMO_COLUMNS]]
        )
        sampled = sampled[sampled["sample"] != ""].drop_duplicates("file", keep="last")
        _write_table(memo_file, sampled)
    frames = [frame for frame in (reused, checked, pd.DataFrame(special)) if len(frame)]
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCAN_COLUMNS)
    result = result.sort_values("file", ignore_index=True)[SCAN_COLUMNS].astype(_INTEGERS)
    facts = {
        "checked": len(stale),
        "sampled": int(len(unsampled)),
        "reused_from_cache": len(current) - len(stale),
        "not_regular_files": len(special),
        "cache_file": str(scan_file),
        "cache_bytes": _size(scan_file),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if tensor_facts:
        facts["tensor_cache"] = tensor_facts
    return result, facts


def cache_content_ids(scan: pd.DataFrame) -> list[str]:
    """Per scan row, what keys its decoded-image cache row: the content hash of a usable
    image, "" for a row left zero (an entry that is not a usable image)."""
    return scan["sha1"].where(scan["problem"] == "", "").tolist()


def _check_and_fill(
    image_dir: Path,
    current: pd.DataFrame,
    reused: pd.DataFrame,
    stale: list[str],
    special: list[dict],
    cache_dir: Path | None,
    tensor_size: tuple[int, int],
    workers: int | None,
) -> tuple[list[dict], dict | None]:
    """Check the ``stale`` files and fill the decoded-image cache of the whole listing in the
    same pass (a stale file is read once: its check's decode gives its pixels). The cache's
    name depends on the checked contents, so it is filled under a temporary name and kept
    only if no cache of the same content appeared meanwhile.

    A few stale files (a file unreadable on every run, a changed one) are checked first, their
    pixels held: when the cache of the resulting contents exists, nothing else is decoded and
    no space is reserved."""
    start = time.perf_counter()
    names = sorted([*current["file"], *(row["file"] for row in special)])
    row_of = {name: row for row, name in enumerate(names)}
    usable_reused = set(reused.loc[reused["problem"] == "", "file"])
    folder = tensor_folder(cache_dir)
    height, width = tensor_size
    held: dict[str, np.ndarray] = {}
    records: list[dict] = []
    checked_first = len(stale) * 3 * height * width <= HELD_PIXEL_BYTES
    if checked_first:
        checks = parallel(
            lambda name: _check(image_dir / name, tensor_size, name),
            stale,
            workers,
            desc="Checking images",
        )
        for record, pixels in checks:
            records.append(record)
            if pixels is not None:
                held[record["file"]] = pixels
        cache = _listing_cache(image_dir, folder, reused, records, special, tensor_size)
        if cache.complete():
            record_use(cache.path, image_dir.resolve())
            return records, None
    to_check = set() if checked_first else set(stale)
    fill_name = f"fill-{path_hash(image_dir)}"
    with exclusive_lock(folder / f"{fill_name}.lock"):
        writer = TensorCacheWriter(folder / f"{fill_name}.partial", len(names), height, width)

        def work(name: str) -> dict | None:
            record = None
            if name in held:
                pixels = held[name]
            elif name in to_check:
                record, pixels = _check(image_dir / name, tensor_size, name)
            elif name in usable_reused:
                pixels = decode_rgb(image_dir / name, height, width)
            else:
                return None
            if pixels is not None:
                writer.write(row_of[name], pixels)
            return record

        try:
            checked = parallel(work, names, workers, desc="Checking and decoding images")
            records += [r for r in checked if r is not None]
        except ImageDecodeError as error:
            writer.discard()
            raise changed_since_scan(image_dir, error) from None
        except BaseException:
            writer.discard()
            raise
        held.clear()
        cache = _listing_cache(image_dir, folder, reused, records, special, tensor_size)
        with exclusive_lock(cache.path.with_suffix(".lock")):
            if cache.complete():
                writer.discard()  # the same content's cache, made meanwhile or kept from before
                record_use(cache.path, image_dir.resolve())
                return records, None
            seconds = time.perf_counter() - start
            writer.publish(cache.path, tensor_cache_meta(cache, image_dir.resolve(), seconds))
    return records, {"file": str(cache.path), "seconds": round(seconds, 3)}


def _listing_cache(
    image_dir: Path,
    folder: Path,
    reused: pd.DataFrame,
    records: list[dict],
    special: list[dict],
    tensor_size: tuple[int, int],
) -> ImageTensorCache:
    """The decoded-image cache of the whole listing, given every entry's scan row."""
    frames = (reused, pd.DataFrame(records), pd.DataFrame(special))
    scan = pd.concat([frame for frame in frames if len(frame)])
    scan = scan.sort_values("file", ignore_index=True)
    files = [image_dir / name for name in scan["file"]]
    path = tensor_cache_path(folder, files, cache_content_ids(scan), *tensor_size)
    return ImageTensorCache(path, len(files), *tensor_size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame | None:
    try:
        if not path.is_file():
            return None
        frame = pd.read_csv(
            path,
            dtype={column: kind for column, kind in _TEXTS.items() if column in columns},
            keep_default_na=False,
            encoding="utf-8",
            encoding_errors="surrogateescape",
        )
    except (pd.errors.ParserError, ValueError, OSError):
        return None  # A damaged cache is only a cache: check again.
    key = ["file"] if "mtime_ns" in columns else _CONTENT_KEY
    if list(frame.columns) != columns or frame.duplicated(key).any():
        return None
    try:
        return frame.astype({c: kind for c, kind in _INTEGERS.items() if c in columns})
    except (TypeError, ValueError):
        return None


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    # A read-only cache folder costs a re-check next time, nothing more.
    with contextlib.suppress(OSError):
        # File names that are not UTF-8 (surrogate-escaped by os.scandir) round-trip as bytes.
        atomic_write(path, frame.to_csv(index=False).encode("utf-8", "surrogateescape"))


def _merge_into_cache(scan_file: Path, rows: list[dict]) -> None:
    """Add checked rows to the shared scan cache (under its lock): rows of other copies and
    other versions of a file stay, one row per (file, size, sample)."""
    if not rows:
        return
    new = pd.DataFrame(rows, columns=SCAN_COLUMNS)[_CACHED_COLUMNS]
    old = _read_table(scan_file, _CACHED_COLUMNS)
    frames = [frame for frame in (old, new) if frame is not None and len(frame)]
    merged = pd.concat(frames, ignore_index=True).drop_duplicates(_CONTENT_KEY, keep="last")
    _write_table(scan_file, merged.sort_values(_CONTENT_KEY, ignore_index=True))
