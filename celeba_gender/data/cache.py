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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

CACHE_ENV = "CELEBA_GENDER_CACHE"


def cache_folder(image_dir: Path, cache_dir: Path | None = None) -> Path:
    """The cache folder of one image folder: ``<cache_dir>/<folder name>-<path hash>``.

    ``cache_dir`` defaults to $CELEBA_GENDER_CACHE, else ~/.cache/celeba_gender, so read-only
    dataset copies work and two copies never share entries.
    """
    base = cache_dir or Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "celeba_gender"))
    resolved = str(Path(image_dir).resolve())
    digest = hashlib.sha1(resolved.encode()).hexdigest()[:12]
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
        # NamedTemporaryFile is owner-only (0600); results are for colleagues too.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


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
    """Decode one image to a uint8 (3, height, width) array: grey, RGBA and CMYK become RGB."""
    with Image.open(path) as image:
        image = image.convert("RGB")
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
        key = hashlib.sha1("\n".join(fingerprints).encode()).hexdigest()[:16]
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

            with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
                list(pool.map(fill, range(len(files))))
            target.flush()
            os.replace(partial, path)
            atomic_write(
                meta_path,
                json.dumps(
                    {"count": len(files), "height": height, "width": width, "key": key}
                ).encode(),
            )
        return cls(path, len(files), height, width), True
