"""On-disk caches shared by runs: where they live, safe writes, and the decoded-image tensor cache.

JPEG decoding of the same 178x218 files every epoch is the input bottleneck once a GPU trains
the model. ``ImageTensorCache`` decodes each usable image once into a uint8 (N, 3, H, W)
file that batches are read from (``pread``, a row at a time). It depends only on the images'
content (not on the split, image size, augmentations or where the folder lies), so every job
of a sweep, later runs and a copy of the folder on a node's local disk reuse it.

Layout under the cache root (data.cache_dir, else $CELEBA_GENDER_CACHE, else
~/.cache/celeba_gender)::

    scan-v3/<folder name>.csv          file checks, keyed by (name, size, content sample)
    scan-v3/paths/<folder>-<hash>.csv  per path: (name, size, mtime) -> content sample
    images/images-HxW-N-<key>.u8       decoded pixels; .json: what and who used it; .lock
    images/images-HxW-N-<key>-<mtime>-sum2x2.i16  its 2x2 pixel blocks' sums (small sizes)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from celeba_gender.data.errors import DataError
from celeba_gender.data.images import ImageDecodeError, decode_image
from celeba_gender.progress import progress

CACHE_ENV = "CELEBA_GENDER_CACHE"
# Raise when ``images.decode_image`` gives other pixels for some file (2: every mode read with
# wide samples scaled, alpha composited, EXIF upright; floats beyond 0..1 stretched).
DECODE_VERSION = 2
TENSOR_FOLDER = "images"
# Said in every message about the cache's disk: the three ways to need less of it there.
ELSEWHERE = (
    "point the cache at a disk with room (data.cache_dir=/scratch/$USER/celeba_cache, or "
    f"{CACHE_ENV}=...), make it smaller (data.cache_size=[109,89]) or decode per image "
    "without a cache (data.loader=per_sample)"
)
# flock fails this way on some NFS, Lustre and FUSE mounts.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}
_warned_no_locks = False


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: ``cache_dir``, else $CELEBA_GENDER_CACHE, else ~/.cache/celeba_gender
    (read-only dataset copies work: nothing is written beside the images)."""
    base = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "celeba_gender"
    return Path(base).expanduser()


def tensor_folder(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / TENSOR_FOLDER


def path_hash(path: Path) -> str:
    """A short hash of a resolved path (bytes: a name that is not UTF-8 still hashes)."""
    return hashlib.sha1(os.fsencode(str(Path(path).resolve()))).hexdigest()[:12]


def legacy_cache_folder(image_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """Where caches of one image folder lived before they were keyed by content
    (``<parent>-<folder>-<path hash>``): listed and cleared by ``python -m celeba_gender.data
    cache``."""
    resolved = Path(image_dir).resolve()
    return cache_root(cache_dir) / f"{resolved.parent.name}-{resolved.name}-{path_hash(resolved)}"


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A file handle whose content replaces ``path`` only once it is complete and on disk: a
    reader, or a run killed mid-write, sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, before the rename
        dir=path.parent, prefix=f".{path.name}.", delete=False
    )
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile is owner-only (0600); results are for colleagues too, with the
        # permissions any new file of this user gets.
        os.chmod(handle.name, 0o666 & ~current_umask())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


_PROC_STATUS = "/proc/self/status"
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it.

    ``os.umask`` can only be read by setting it: setting 0 and back lets any file another
    thread creates in between (the scan and cache builds use thread pools) be world-writable.
    Linux states it in /proc/self/status; elsewhere the set-and-restore is the only way.
    """
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # One thread at a time: two interleaved set-and-restores leave the umask at 077 for good.
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # the fallback's window leaves files private, not open to all
        os.umask(umask)
    return umask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so concurrent readers see the old file or the new, never half."""
    with atomic_output(path) as handle:
        handle.write(data)


def _warn_no_locks(path: Path, error: OSError) -> None:
    global _warned_no_locks
    if _warned_no_locks:
        return
    _warned_no_locks = True
    warnings.warn(
        f"Cannot lock {path} ({error.strerror or error}): this filesystem does not support "
        "file locks. Concurrent jobs may build the same cache twice; results stay correct "
        "because every cache file is replaced atomically.",
        RuntimeWarning,
        stacklevel=3,
    )


def _open_lock_file(path: Path) -> BinaryIO | None:
    """The lock file, opened to be flock'ed: for writing, else read-only where this user may
    not write it (a prepared cache shared read-only; flock works on either); None when it
    cannot be created there (a read-only cache folder: nothing can be built in it anyway)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab")  # noqa: SIM115 - the callers close it
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return open(path, "rb")  # noqa: SIM115
    except OSError:
        return None


def _flock(handle: BinaryIO, operation: int, path: Path) -> bool:
    """flock; False when another process holds it (LOCK_NB). Where the filesystem has no
    locks it warns once and says True: atomic replaces keep the files whole."""
    try:
        fcntl.flock(handle, operation)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            raise
        _warn_no_locks(path, error)
    return True


@contextlib.contextmanager
def exclusive_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an advisory lock so concurrent jobs (sweep jobs, DDP ranks) build a cache once.

    Yields True when held. Non-blocking, yields False when another process holds it (or, for
    a decoded-image cache, a run reads it: ``ImageTensorCache.hold``). Where the filesystem
    has no locks (some NFS, Lustre, FUSE mounts) it warns once and yields True unlocked:
    atomic replaces keep the files whole, at worst work is done twice. In a read-only cache
    folder without the lock file it yields True unlocked: nobody writes there.
    """
    handle = _open_lock_file(path)
    if handle is None:
        yield True
        return
    with handle:
        if not _flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB), path):
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):  # a filesystem without locks: none to release
                fcntl.flock(handle, fcntl.LOCK_UN)


def resized_rgb(image: Image.Image, height: int, width: int) -> np.ndarray:
    """An RGB picture as the cache stores it: uint8 (3, height, width)."""
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def decode_rgb(path: Path, height: int, width: int) -> np.ndarray:
    """Decode one image with ``images.decode_image`` (the decode the data scan checked) to a
    uint8 (3, height, width) array. Raises ImageDecodeError for a file that cannot be used."""
    return resized_rgb(decode_image(path, name=Path(path).name), height, width)


def human_bytes(count: int) -> str:
    """A size for people: GB, MB or kB as fits."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count / 1e3:.1f} kB"


def changed_since_scan(image_dir: Path, error: ImageDecodeError) -> DataError:
    return DataError(
        f"{image_dir / error.name} changed since the data scan checked it and can no longer "
        f"be used ({error.reason}). Run again: the scan checks changed files anew and leaves "
        "broken ones out."
    )


class TensorCacheWriter:
    """A tensor cache being written: ``<final name>.partial``, its space reserved up front.

    Free space is checked before anything is written, then the whole file is reserved with
    ``posix_fallocate``, and rows go in with ``os.pwrite``: a full disk or a file size limit
    is one DataError (the partial file removed), never a SIGBUS from a written memory map,
    and writing leaves no dirty mapped pages in the process.
    """

    def __init__(
        self,
        partial: Path,
        count: int,
        height: int,
        width: int,
        dtype: np.dtype = np.uint8,
        action: str = "Decoding",
    ) -> None:
        self.partial = partial
        self.count, self.height, self.width = count, height, width
        self.dtype = np.dtype(dtype)
        self.row_bytes = 3 * height * width * self.dtype.itemsize
        self.bytes = count * self.row_bytes
        self._fd = -1
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            # A build killed before (its file reserved in full) leaves a partial file that
            # this one replaces (the caller holds its lock): its space counts as free.
            free = shutil.disk_usage(partial.parent).free + _allocated_bytes(partial)
        except OSError as error:
            raise self._cannot_write(error) from None
        if self.bytes > free:
            raise self._no_room(free, "")
        try:
            self._fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as error:
            raise self._cannot_write(error) from None
        print(
            f"{action} {count} images into a {human_bytes(self.bytes)} cache ({height}x{width}) "
            f"in {partial.parent}; to put it elsewhere (a node's scratch disk): "
            f"data.cache_dir=... or {CACHE_ENV}=...",
            file=sys.stderr,
            flush=True,
        )
        try:
            os.posix_fallocate(self._fd, 0, max(self.bytes, 1))
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.discard()
                raise self._no_room(shutil.disk_usage(partial.parent).free, error) from None
            os.ftruncate(self._fd, self.bytes)  # no reservation here: pwrite reports ENOSPC

    def _no_room(self, free: int, error: OSError | str) -> DataError:
        why = f" ({error.strerror or error})" if isinstance(error, OSError) else ""
        return DataError(
            f"Not enough room for the decoded-image cache in {self.partial.parent}{why}: "
            f"{self.count} images at {self.height}x{self.width} need {human_bytes(self.bytes)}, "
            f"{human_bytes(free)} is free (or a file size limit is lower). Nothing was written; "
            f"{ELSEWHERE}."
        )

    def _cannot_write(self, error: OSError) -> DataError:
        return DataError(
            f"Cannot write the decoded-image cache in {self.partial.parent} "
            f"({error.strerror or error}): {self.count} images at {self.height}x{self.width} "
            f"need {human_bytes(self.bytes)} there. Nothing was written; {ELSEWHERE}."
        )

    def write(self, row: int, pixels: np.ndarray) -> None:
        data = np.ascontiguousarray(pixels, dtype=self.dtype).tobytes()
        try:
            os.pwrite(self._fd, data, row * self.row_bytes)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise self._no_room(shutil.disk_usage(self.partial.parent).free, error) from None
            raise

    def publish(self, path: Path, meta: dict[str, Any]) -> None:
        """Make the complete file ``path`` (data on disk first), with its JSON beside it."""
        os.fsync(self._fd)
        os.fchmod(self._fd, 0o666 & ~current_umask())
        os.close(self._fd)
        self._fd = -1
        os.replace(self.partial, path)
        atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.partial.unlink(missing_ok=True)


def _allocated_bytes(path: Path) -> int:
    """Disk space a file takes (0 when absent)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def tensor_cache_path(
    folder: Path, files: Sequence[Path], content_ids: Sequence[str], height: int, width: int
) -> Path:
    """Where the cache of these files lives: named by the decode version, the resolution and
    every (file name, content id), so any change of content gives a new cache, and a copy of
    the same files at another path (new mtimes included) finds the same one."""
    lines = [f"decode-v{DECODE_VERSION}", f"{height}x{width}"]
    pairs = zip(files, content_ids, strict=True)
    lines += [f"{Path(file).name}\t{content}" for file, content in pairs]
    key = hashlib.sha1("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return folder / f"images-{height}x{width}-{len(files)}-{key}.u8"


def tensor_cache_meta(cache: ImageTensorCache, used_by: Path | None, seconds: float) -> dict:
    count, _, height, width = cache.shape
    return {
        "count": count,
        "height": height,
        "width": width,
        "decode_version": DECODE_VERSION,
        "bytes": cache.bytes,
        "build_seconds": round(seconds, 3),
        "image_dirs": [str(used_by)] if used_by else [],
        "last_used": _now(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def record_use(path: Path, used_by: Path | None) -> None:
    """Note in the cache's JSON that the image folder ``used_by`` used it, and when (what
    ``cache --list`` shows). A read-only cache folder goes without."""
    meta_path = path.with_suffix(".json")
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_text())
        folders = meta.get("image_dirs", [])
        if used_by is not None and str(used_by) not in folders:
            folders.append(str(used_by))
        meta.update(image_dirs=folders, last_used=_now())
        atomic_write(meta_path, json.dumps(meta, indent=1).encode())


class ImageTensorCache:
    """A (N, 3, H, W) file of decoded images, one row per file in a fixed order: uint8 pixels,
    or (``PooledTensorCache``) int16 sums of 2x2 pixel blocks."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, count: int, height: int, width: int) -> None:
        self.path = path
        self.shape = (count, 3, height, width)
        self._file: BinaryIO | None = None
        self._in_use: BinaryIO | None = None

    @property
    def bytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return self.bytes // self.shape[0] if self.shape[0] else 0

    def __getstate__(self) -> dict:
        # Unpickled (a spawned process), it opens the file itself; forked, it shares it.
        return {**self.__dict__, "_file": None, "_in_use": None}

    def hold(self) -> bool:
        """Hold a shared lock on the cache while this object lives, so ``cache --clear`` keeps
        a cache a run reads (DataLoader workers open it anew each epoch, by its name). Waits
        while another process builds it. False when the cache is not (or no longer) there."""
        handle = _open_lock_file(self.path.with_suffix(".lock"))
        if handle is not None:
            _flock(handle, fcntl.LOCK_SH, self.path)
        if not self.complete():
            if handle is not None:
                handle.close()
            return False
        self._in_use = handle  # released when this object (and its forked workers) go
        return True

    def complete(self) -> bool:
        """Whether the cache file is there, published (its JSON is written after it)."""
        return self.path.is_file() and self.path.with_suffix(".json").is_file()

    def __len__(self) -> int:
        return self.shape[0]

    def gather(self, rows: Sequence[int]) -> np.ndarray:
        """Read rows into one new array, in file order. One ``pread`` per row straight into
        its place: a memory map's fancy indexing copied each batch twice and paid a page fault
        per 4 kB, about 10x slower."""
        rows = np.asarray(rows, dtype=np.int64)
        batch = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if self._file is None:
            self._file = self._open_checked()
        size = self.row_bytes
        for item in np.argsort(rows, kind="stable"):
            row = int(rows[item])
            if not 0 <= row < len(self):
                raise IndexError(f"row {row} of a {len(self)}-row cache")
            read = os.preadv(self._file.fileno(), [memoryview(batch[item]).cast("B")], row * size)
            if read != size:  # cut short while this run read it
                raise self._damaged(f"row {row} lies past its end")
        return batch

    def _open_checked(self) -> BinaryIO:
        """The cache file, opened for ``pread`` (a forked DataLoader worker shares it: pread
        keeps no file position), refused when its size is not what its shape needs."""
        handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 - lives with self
        found = os.fstat(handle.fileno()).st_size
        if found != self.bytes and self.bytes:  # (an empty cache is reserved as 1 byte)
            handle.close()
            raise self._damaged(f"{found} bytes where its {len(self)} images need {self.bytes}")
        return handle

    def _damaged(self, why: str) -> DataError:
        return DataError(
            f"{self.path} is damaged ({why}: changed or cut short after it was written). "
            "Delete it (python -m celeba_gender.data cache ROOT --clear) and run again: it is "
            "rebuilt from the images."
        )

    @classmethod
    def build_or_open(
        cls,
        files: Sequence[Path],
        content_ids: Sequence[str],
        folder: Path,
        height: int,
        width: int,
        workers: int | None = None,
        used_by: Path | None = None,
    ) -> tuple[ImageTensorCache, bool]:
        """Open the cache for exactly these files, building it first if needed.

        ``content_ids`` (one per file: its content hash; "" leaves its row zero, for a file
        that is not a usable image) key the cache with the file names (``tensor_cache_path``).
        ``used_by``: the image folder, recorded for ``cache --list``. Returns the cache and
        whether it was built now.
        """
        path = tensor_cache_path(folder, files, content_ids, height, width)
        cache = cls(path, len(files), height, width)
        built = cache._open(lambda: cache._build(files, content_ids, workers, used_by))
        if not built:
            record_use(path, used_by)
        return cache, built

    def _open(self, build: Callable[[], None]) -> bool:
        """Hold the cache, calling ``build`` first (under its lock) if it is not there yet;
        True when built now."""
        built = False
        # Shared first: runs reading the same cache (this process's other modules included)
        # never wait for each other; only a build takes the lock alone.
        while not self.hold():
            with exclusive_lock(self.path.with_suffix(".lock")):
                if not self.complete():
                    build()
                    built = True
        return built

    def _build(
        self,
        files: Sequence[Path],
        content_ids: Sequence[str],
        workers: int | None,
        used_by: Path | None,
    ) -> None:
        """Decode ``files`` into the cache file (the caller holds its lock)."""
        start = time.perf_counter()
        _, _, height, width = self.shape
        writer = TensorCacheWriter(self.path.with_suffix(".partial"), len(files), height, width)

        def fill(row: int) -> None:
            if content_ids[row]:
                writer.write(row, decode_rgb(files[row], height, width))

        try:
            parallel(fill, range(len(files)), workers, desc="Decoding images")
        except ImageDecodeError as error:
            writer.discard()
            raise changed_since_scan(Path(files[0]).parent, error) from None
        except BaseException:
            writer.discard()
            raise
        writer.publish(self.path, tensor_cache_meta(self, used_by, time.perf_counter() - start))


# The pooled cache's block side: its rows are sums of POOL x POOL pixel blocks.
POOL = 2
# Rows summed at a time while building it (~90 MB of memory for 218x178 frames).
_POOL_CHUNK = 256


class PooledTensorCache(ImageTensorCache):
    """Sums of 2x2 pixel blocks of an ``ImageTensorCache`` (int16, a quarter of its pixels).

    A training batch shrunk by an even factor (64 px from a 178-px face box: 2) box-filters
    the frame with exactly these sums first, so reading them instead of the full frame gives
    the very same batch (integer sums are exact in float32) from a quarter of the pixels: no
    full-frame gather, conversion and summing per batch. Built from the full cache, once.
    """

    dtype = np.dtype(np.int16)

    @classmethod
    def of(cls, full: ImageTensorCache, used_by: Path | None = None) -> PooledTensorCache:
        """The pooled cache of ``full``, built first if needed."""
        count, _, height, width = full.shape
        # Named after the full cache's file and its write time: a rebuilt full cache (which
        # keeps its name when the images did not change) never meets an older one's sums.
        written = full.path.stat().st_mtime_ns
        path = full.path.with_name(f"{full.path.stem}-{written:x}-sum{POOL}x{POOL}.i16")
        cache = cls(path, count, height // POOL, width // POOL)
        if not cache._open(lambda: cache._pool(full, used_by)):
            record_use(path, used_by)
        return cache

    def _pool(self, full: ImageTensorCache, used_by: Path | None) -> None:
        start = time.perf_counter()
        count, _, height, width = self.shape
        writer = TensorCacheWriter(
            self.path.with_suffix(".partial"),
            count,
            height,
            width,
            self.dtype,
            action=f"Summing {POOL}x{POOL} pixel blocks of",
        )
        try:
            for first in range(0, count, _POOL_CHUNK):
                frames = full.gather(range(first, min(first + _POOL_CHUNK, count)))
                frames = frames[..., : height * POOL, : width * POOL].astype(self.dtype)
                sums = sum(frames[..., i::POOL, j::POOL] for i in range(POOL) for j in range(POOL))
                writer.write(first, sums)  # these rows, one after another
        except BaseException:
            writer.discard()
            raise
        meta = tensor_cache_meta(self, used_by, time.perf_counter() - start)
        writer.publish(self.path, {**meta, "sums_of_blocks": POOL, "pooled_from": full.path.name})


def parallel(
    work: Callable[[int], Any],
    items: Sequence | range,
    workers: int | None,
    desc: str | None = None,
) -> list:
    """``work`` over ``items`` in threads (PIL decoding and hashlib release the GIL); with
    ``desc``, a progress bar of that name (on a terminal)."""
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(work, items)
        if desc is not None:
            results = progress(results, total=len(items), desc=desc, unit="img")
        return list(results)


# ----------------------------------------------------------------------------- listing, clearing
@dataclass
class CacheEntry:
    """One cache file (or an old-layout folder) under the cache root, for ``cache --list``."""

    kind: str  # images | scan | scan memo | partial | old layout
    path: Path
    bytes: int
    resolution: str = ""
    images: int | None = None
    image_dirs: list[str] = field(default_factory=list)
    last_used: str = ""


_LEGACY_NAME = re.compile(r".+-[0-9a-f]{12}")


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _modified(path: Path) -> str:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return ""
    return datetime.fromtimestamp(stamp, timezone.utc).astimezone().isoformat(timespec="seconds")


def cache_inventory(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """Every cache file under the cache root, biggest first: decoded-image caches (with the
    image folders that used them and when), scan caches, partial builds and old-layout
    folders (caches from before they were keyed by content)."""
    root = cache_root(cache_dir)
    entries: list[CacheEntry] = []
    images = root / TENSOR_FOLDER
    for path in sorted([*images.glob("*.u8"), *images.glob("*.i16")]):
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            meta = {}
        pooled = meta.get("sums_of_blocks")
        entries.append(
            CacheEntry(
                "images",
                path,
                _file_bytes(path),
                f"{meta.get('height', '?')}x{meta.get('width', '?')}"
                + (f" ({pooled}x{pooled} sums)" if pooled else ""),
                meta.get("count"),
                list(meta.get("image_dirs", [])),
                meta.get("last_used", "") or _modified(path),
            )
        )
    for path in sorted(images.glob("*.partial")):
        entries.append(CacheEntry("partial", path, _file_bytes(path), last_used=_modified(path)))
    for path in sorted(root.glob("scan-v*/*.csv")):
        shared = [f"every folder named {path.stem}"]
        entries.append(
            CacheEntry("scan", path, _file_bytes(path), "", None, shared, _modified(path))
        )
    for path in sorted(root.glob("scan-v*/paths/*.csv")):
        entries.append(CacheEntry("scan memo", path, _file_bytes(path), last_used=_modified(path)))
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if not (folder.is_dir() and _LEGACY_NAME.fullmatch(folder.name)):
                continue
            files = [p for p in folder.iterdir() if p.is_file()]
            if any(p.name.startswith(("scan-v", "images-")) for p in files):
                size = sum(_file_bytes(p) for p in files)
                entries.append(CacheEntry("old layout", folder, size, last_used=_modified(folder)))
    return sorted(entries, key=lambda entry: -entry.bytes)


def belongs_to(entry: CacheEntry, image_dir: Path, cache_dir: str | Path | None = None) -> bool:
    """Whether ``entry`` was made for or used by the copy whose images are in ``image_dir``
    (a scan cache is shared by every folder of its name and belongs to none)."""
    resolved = Path(image_dir).resolve()
    if entry.kind == "images":
        return str(resolved) in entry.image_dirs
    if entry.kind == "scan memo":
        return entry.path.name == f"{resolved.name}-{path_hash(resolved)}.csv"
    if entry.kind == "old layout":
        return entry.path == legacy_cache_folder(resolved, cache_dir)
    if entry.kind == "partial":
        return entry.path.name == f"fill-{path_hash(resolved)}.partial"
    return False


def remove_cache_entry(entry: CacheEntry) -> bool:
    """Delete one cache entry unless a process is building it or, for a decoded-image cache,
    a run reads it (its lock is held): True when deleted."""
    if entry.kind == "old layout":
        locks = sorted(entry.path.glob("*.lock"))
        with contextlib.ExitStack() as held:
            if not all(held.enter_context(exclusive_lock(lock, blocking=False)) for lock in locks):
                return False
            shutil.rmtree(entry.path, ignore_errors=True)
        return not entry.path.exists()
    if entry.kind in ("images", "partial"):
        with exclusive_lock(entry.path.with_suffix(".lock"), blocking=False) as held:
            if not held:
                return False
            entry.path.unlink(missing_ok=True)
            entry.path.with_suffix(".json").unlink(missing_ok=True)
        return True
    if entry.kind == "scan memo":  # written atomically, never locked
        entry.path.unlink(missing_ok=True)
        return True
    with exclusive_lock(entry.path.with_suffix(".lock"), blocking=False) as held:
        if not held:
            return False
        entry.path.unlink(missing_ok=True)
    return True
