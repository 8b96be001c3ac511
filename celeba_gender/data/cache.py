"""On-disk caches shared by runs: where they live, safe writes, and the decoded-image tensor cache.

JPEG decoding of the same 178x218 files every epoch is the input bottleneck once a GPU trains
the model. ``ImageTensorCache`` decodes each usable image once into a uint8 (N, 3, H, W)
memory-mapped file. It depends only on the image files (not on the split, image size or
augmentations), so all 30 jobs of a sweep and later runs reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from celeba_gender.data.errors import DataError
from celeba_gender.data.images import ImageDecodeError, decode_image

CACHE_ENV = "CELEBA_GENDER_CACHE"
# Raise when ``images.decode_image`` gives other pixels for some file (2: every mode read with
# wide samples scaled, alpha composited, EXIF upright; floats beyond 0..1 stretched).
DECODE_VERSION = 2


def cache_folder(image_dir: Path, cache_dir: Path | None = None) -> Path:
    """The cache folder of one image folder: ``<cache_dir>/<folder name>-<path hash>``.

    ``cache_dir`` defaults to $CELEBA_GENDER_CACHE, else ~/.cache/celeba_gender, so read-only
    dataset copies work and two copies never share entries.
    """
    base = cache_dir or Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "celeba_gender"))
    resolved = str(Path(image_dir).resolve())
    digest = hashlib.sha1(os.fsencode(resolved)).hexdigest()[:12]  # not UTF-8: still a name
    parent = Path(resolved).parent.name
    return Path(base).expanduser() / f"{parent}-{Path(resolved).name}-{digest}"


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


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an advisory lock so concurrent jobs (sweep jobs, DDP ranks) build a cache once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def decode_rgb(path: Path, height: int, width: int) -> np.ndarray:
    """Decode one image with ``images.decode_image`` (the decode the data scan checked) to a
    uint8 (3, height, width) array. Raises ImageDecodeError for a file that cannot be used."""
    image = decode_image(path, name=Path(path).name)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


class ImageTensorCache:
    """A uint8 (N, 3, H, W) memory map of decoded images, one row per file in a fixed order."""

    def __init__(self, path: Path, count: int, height: int, width: int) -> None:
        self.path = path
        self.shape = (count, 3, height, width)
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        # Opened lazily so each DataLoader worker maps the file itself after unpickling.
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return self.shape[0]

    def gather(self, rows: Sequence[int]) -> np.ndarray:
        """Copy rows out of the map; sorted reads are faster, so sort then restore the order."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        batch = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        batch[order] = self.array[rows[order]]
        return batch

    @classmethod
    def build_or_open(
        cls,
        files: Sequence[Path],
        fingerprints: Sequence[str],
        folder: Path,
        height: int,
        width: int,
        workers: int | None = None,
    ) -> tuple[ImageTensorCache, bool]:
        """Open the cache for exactly these files, building it first if needed.

        ``fingerprints`` (one per file, e.g. name:size:mtime) key the cache, so any change to
        the files gives a new cache rather than stale pixels. Returns the cache and whether it
        was built now.
        """
        # The decode's version is part of the key: pixels decoded otherwise are never reused.
        key_text = "\n".join([f"decode-v{DECODE_VERSION}", *fingerprints])
        key = hashlib.sha1(key_text.encode()).hexdigest()[:16]
        path = folder / f"images-{height}x{width}-{len(files)}-{key}.u8"
        meta_path = path.with_suffix(".json")
        with exclusive_lock(path.with_suffix(".lock")):
            if meta_path.is_file() and path.is_file():
                return cls(path, len(files), height, width), False
            partial = path.with_suffix(".partial")
            target = np.memmap(
                partial, dtype=np.uint8, mode="w+", shape=(len(files), 3, height, width)
            )

            def fill(row: int) -> None:
                target[row] = decode_rgb(files[row], height, width)

            try:
                with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
                    list(pool.map(fill, range(len(files))))
            except ImageDecodeError as error:
                del target
                partial.unlink(missing_ok=True)
                raise DataError(
                    f"{Path(files[0]).parent / error.name} changed since the data scan checked "
                    f"it and can no longer be used ({error.reason}). Run again: the scan "
                    "checks changed files anew and leaves broken ones out."
                ) from None
            target.flush()
            os.replace(partial, path)
            atomic_write(
                meta_path,
                json.dumps(
                    {"count": len(files), "height": height, "width": width, "key": key}
                ).encode(),
            )
        return cls(path, len(files), height, width), True
