"""The caches on clusters: keyed by content (a node-local copy reuses them), one decode on a
first run, disk space checked before writing, locks that degrade on network filesystems,
and ``python -m celeba_gender.data cache --list | --clear``. Real CelebA files throughout."""

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import forked_python
import numpy as np
import pytest
from conftest import (
    REPO,
    _subset_names,
    _write_official_annotations,
    can_drop_read_override,
    run_script,
    without_read_override,
)

from celeba_gender.data import CelebADataModule, DataError
from celeba_gender.data import cache as cache_module
from celeba_gender.data import scan as scan_module
from celeba_gender.data.__main__ import main as data_main
from celeba_gender.data.cache import decode_rgb, exclusive_lock, human_bytes

FACE = {"top": 30, "left": 0, "height": 178, "width": 178}


def _copy(subset_root: Path, root: Path, count: int = 24) -> list[str]:
    """An official-layout copy of ``count`` subset images, annotations cut down to them."""
    names = _subset_names(subset_root, count)
    (root / "img_align_celeba").mkdir(parents=True)
    for name in names:
        # shutil.copy, like cp without -p: the copy's files get new mtimes.
        shutil.copy(subset_root / "img_align_celeba" / name, root / "img_align_celeba" / name)
    _write_official_annotations(subset_root, root, names, root / "Anno", root / "Eval")
    return names


def _module(root: Path, cache: Path, **overrides) -> CelebADataModule:
    options = dict(split="all", image_size=48, face_crop=FACE, cache_dir=cache, num_workers=0)
    return CelebADataModule(root, **{**options, **overrides})


@pytest.fixture
def full_reads(monkeypatch) -> collections.Counter:
    """File name -> how many times its whole content was read: by the scan's check
    (``read_file_bytes``) or by a decode into the image cache (``decode_image``)."""
    counts: collections.Counter = collections.Counter()
    read_file_bytes, decode_image = scan_module.read_file_bytes, cache_module.decode_image

    def counted_read(path, name, *args, **kwargs):
        counts[Path(path).name] += 1
        return read_file_bytes(path, name, *args, **kwargs)

    def counted_decode(source, *args, **kwargs):
        counts[Path(source).name] += 1
        return decode_image(source, *args, **kwargs)

    monkeypatch.setattr(scan_module, "read_file_bytes", counted_read)
    monkeypatch.setattr(cache_module, "decode_image", counted_decode)
    return counts


def test_a_first_run_reads_each_file_once(subset_root, tmp_path, full_reads, capsys):
    root = tmp_path / "celeba"
    names = _copy(subset_root, root)
    module = _module(root, tmp_path / "cache")
    module.prepare_data()
    module.setup()
    assert full_reads == dict.fromkeys(names, 1)  # the check and the cache build share a decode
    tensor = module.summary()["tensor_cache"]
    assert tensor["built_now"] is True and tensor["seconds"] > 0
    assert tensor["bytes"] == len(names) * 3 * 218 * 178 == os.path.getsize(tensor["file"])
    # The cache holds what the decode gives, row by row.
    for row in range(len(names)):
        cache_row = module.index.images["cache_row"].iloc[row]
        expected = decode_rgb(module.index.paths()[row], 218, 178)
        assert np.array_equal(module.cache.gather([cache_row])[0], expected)
    # Before building: one line saying how many images, how big, where, how to go elsewhere.
    said = capsys.readouterr().err
    assert f"Decoding {len(names)} images into a {human_bytes(tensor['bytes'])} cache" in said
    assert str(tmp_path / "cache") in said and "data.cache_dir" in said


def test_a_copy_at_another_path_reuses_both_caches(subset_root, tmp_path, full_reads):
    first_root = tmp_path / "celeba"
    names = _copy(subset_root, first_root)
    first = _module(first_root, tmp_path / "cache")
    first.prepare_data()
    assert first.index.report["tensor_cache"]["built_now"] is True
    # The same run again: nothing read, not even the content samples (the per-path memo).
    full_reads.clear()
    again = _module(first_root, tmp_path / "cache")
    again.prepare_data()
    scan = again.index.report["scan"]
    assert (scan["checked"], scan["sampled"]) == (0, 0) and not full_reads
    assert again.index.report["tensor_cache"]["built_now"] is False

    # A node-local copy made with cp without -p: other path, other mtimes, same content.
    copy_root = tmp_path / "node_local" / "celeba"
    shutil.copytree(first_root, copy_root, copy_function=shutil.copy)
    original = first_root / "img_align_celeba" / names[0]
    copied = copy_root / "img_align_celeba" / names[0]
    assert copied.stat().st_mtime_ns != original.stat().st_mtime_ns
    full_reads.clear()
    on_copy = _module(copy_root, tmp_path / "cache")
    on_copy.prepare_data()
    scan = on_copy.index.report["scan"]
    assert (scan["checked"], scan["sampled"]) == (0, len(names))  # 8 KiB each, no decode
    assert not full_reads
    tensor = on_copy.index.report["tensor_cache"]
    assert tensor["built_now"] is False
    assert tensor["file"] == first.index.report["tensor_cache"]["file"]
    # The cache records the folders that used it (what `cache --list` shows).
    meta = json.loads(Path(tensor["file"]).with_suffix(".json").read_text())
    assert meta["image_dirs"] == [
        str((first_root / "img_align_celeba").resolve()),
        str((copy_root / "img_align_celeba").resolve()),
    ]

    # Other content under the same name on the copy: that file alone is checked again.
    copied.write_bytes((subset_root / "img_align_celeba" / names[1]).read_bytes())
    full_reads.clear()
    changed = _module(copy_root, tmp_path / "cache")
    changed.prepare_data()
    assert changed.index.report["scan"]["checked"] == 1
    assert changed.index.report["tensor_cache"]["built_now"] is True  # other pixels: new cache
    assert full_reads[names[0]] == 1 and max(full_reads.values()) == 1


def test_a_smaller_cache_resolution_is_its_own_file(subset_root, tmp_path):
    root = tmp_path / "celeba"
    _copy(subset_root, root, count=12)
    full = _module(root, tmp_path / "cache")
    full.prepare_data()
    small = _module(root, tmp_path / "cache", cache_size=(64, 52))
    small.prepare_data()
    assert small.cache.shape[1:] == (3, 64, 52) and small.cache.path != full.cache.path
    assert small.cache.path.parent == full.cache.path.parent
    assert small.index.report["tensor_cache"]["built_now"] is True
    assert _module(root, tmp_path / "cache").prepare_data() is None  # the full one stays
    assert full.cache.path.is_file()


_BUILD = """
import sys
from celeba_gender.data import CelebADataModule, DataError
module = CelebADataModule({root!r}, split="all", cache_dir={cache!r}, num_workers=0)
try:
    module.prepare_data()
except DataError as error:
    print(f"error: {{error}}", file=sys.stderr)
    sys.exit(2)
"""


def test_a_file_size_limit_is_a_clear_error_and_leaves_no_partial_file(subset_root, tmp_path):
    root = tmp_path / "celeba"
    names = _copy(subset_root, root, count=30)  # a 3.5 MB cache
    limit = 1 << 20

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    script = _BUILD.format(root=str(root), cache=str(tmp_path / "cache"))
    result = forked_python.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        preexec_fn=limited,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    needed = human_bytes(len(names) * 3 * 218 * 178)
    assert f"need {needed}" in error[0] and "free" in error[0]
    assert "data.cache_dir" in error[0] and "CELEBA_GENDER_CACHE" in error[0]
    images = tmp_path / "cache" / "images"
    assert not [p.name for p in images.iterdir() if p.suffix in (".partial", ".u8", ".json")]


@contextlib.contextmanager
def small_filesystem(folder: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` mounted at ``folder`` (root only: skips elsewhere, saying why)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a {megabytes} MB tmpfs here (needs root): {mounted.stderr.strip()}"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_too_small_filesystem_is_refused_before_writing(subset_root, tmp_path):
    with small_filesystem(tmp_path / "small", 2) as small:
        root = tmp_path / "celeba"
        names = _copy(subset_root, root, count=30)
        free = shutil.disk_usage(small).free
        # In a child: a write into a memory map past the disk's end is a SIGBUS, fatal.
        script = _BUILD.format(root=str(root), cache=str(small / "cache"))
        result = forked_python.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("error:") and "Traceback" not in result.stderr
        sizes = re.search(r"need ([\d.]+) MB, ([\d.]+) MB is free", message)
        assert sizes, message
        assert sizes[1] == human_bytes(len(names) * 3 * 218 * 178).split()[0]
        # Free space as checked, after the scan wrote its few kB (shown to 10 kB).
        assert abs(float(sizes[2]) * 1e6 - free) < 100_000, (sizes[2], free)
        assert "data.cache_dir" in message and str(small / "cache" / "images") in message
        written = [p.name for p in (small / "cache" / "images").iterdir()]
        assert not [name for name in written if not name.endswith(".lock")], written


def test_without_file_locks_it_warns_once_and_goes_on(subset_root, tmp_path, monkeypatch):
    """flock fails with ENOLCK on some NFS mounts: one warning in plain words, then work."""

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(cache_module.fcntl, "flock", no_locks)
    monkeypatch.setattr(cache_module, "_warned_no_locks", False)
    root = tmp_path / "celeba"
    _copy(subset_root, root, count=12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = _module(root, tmp_path / "cache")
        module.prepare_data()  # the scan lock, the fill lock, the image cache's lock
        _module(root, tmp_path / "cache").prepare_data()
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 1, said
    assert "may build the same cache twice" in said[0] and "atomically" in said[0]
    assert module.index.report["tensor_cache"]["built_now"] is True


def _listed(capsys, *args: str) -> str:
    capsys.readouterr()
    assert data_main(["cache", *args]) == 0
    return capsys.readouterr().out


def test_cache_list_and_clear(subset_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    mine, other = tmp_path / "mine", tmp_path / "other"
    _copy(subset_root, mine, count=12)
    _copy(subset_root, other, count=8)  # other content: its own image cache
    for root, size in ((mine, (218, 178)), (mine, (64, 52)), (other, (218, 178))):
        _module(root, cache, cache_size=size).prepare_data()
    # A cache of the layout before content keys (<parent>-<folder>-<path hash>/).
    legacy = cache_module.legacy_cache_folder(other / "img_align_celeba", cache)
    legacy.mkdir()
    (legacy / "scan-v2.csv").write_text("file,size\n")

    listing = _listed(capsys, str(mine), "--list", "--cache-dir", str(cache))
    lines = listing.splitlines()
    marked = [line for line in lines if line.startswith("* images")]
    assert len(marked) == 2 and any("64x52" in line for line in marked)
    assert len([line for line in lines if line.startswith("  images")]) == 1  # other's
    assert f"used by {(mine / 'img_align_celeba').resolve()}" in listing
    assert "old layout" in listing and "scan memo" in listing

    images = cache / "images"
    other_cache = next(p for p in images.glob("images-218x178-8-*.u8"))
    memo = scan_module.scan_cache_files(mine / "img_align_celeba", cache)[1]
    memo_bytes = memo.stat().st_size
    cleared = _listed(capsys, str(mine), "--clear", "--cache-dir", str(cache))
    assert sorted(p.name for p in images.glob("*.u8")) == [other_cache.name]
    removed = [line for line in cleared.splitlines() if line.startswith("removed")]
    assert len(removed) == 3  # two image caches and the scan memo of this path
    freed = (12 * 3 * 218 * 178) + (12 * 3 * 64 * 52) + memo_bytes
    assert f"freed {human_bytes(freed)} ({freed} bytes) in 3 entries" in cleared
    assert not memo.exists()
    assert legacy.is_dir()  # another copy's

    # A cache another process is building (its lock held) is never deleted.
    with exclusive_lock(other_cache.with_suffix(".lock")):
        held = forked_python.run(
            [sys.executable, "-m", "celeba_gender.data", "cache", "--clear", "--all",
             "--cache-dir", str(cache)],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
    assert held.returncode == 0, held.stderr
    assert "being built by another process" in held.stdout and other_cache.is_file()
    assert not legacy.exists() and not list(cache.glob("scan-v3/*.csv"))
    _listed(capsys, "--clear", "--all", "--cache-dir", str(cache))
    assert not list(images.glob("*.u8")) and not list(images.glob("*.json"))
    assert "total: 0.0 kB in 0 entries" in _listed(capsys, "--cache-dir", str(cache))


def test_the_pooled_cache_is_shared_listed_and_cleared_and_a_cut_short_cache_is_named(
    subset_root, tmp_path, capsys
):
    cache = tmp_path / "cache"
    root = tmp_path / "celeba"
    _copy(subset_root, root, count=12)
    flip = [{"name": "horizontal_flip"}]
    module = _module(root, cache, image_size=64, augmentations=flip)
    module.prepare_data()
    pooled = module.pooled_cache.path
    assert pooled.stat().st_size == 12 * 3 * 109 * 89 * 2  # int16 sums of 2x2 blocks
    assert module.index.report["tensor_cache"]["pooled_file"] == str(pooled)
    written = pooled.stat().st_mtime_ns
    again = _module(root, cache, image_size=64, augmentations=flip)
    again.prepare_data()  # another run of the same images reuses it
    assert again.pooled_cache.path == pooled and pooled.stat().st_mtime_ns == written
    listing = _listed(capsys, str(root), "--list", "--cache-dir", str(cache))
    assert "109x89 (2x2 sums)" in listing and pooled.name in listing
    full = module.cache.path
    del module, again  # their runs end: their caches are no longer held
    gc.collect()

    # The full cache rebuilt (same images, same name): its sums are made anew, not reused.
    full.unlink()
    rebuilt = _module(root, cache, image_size=64, augmentations=flip)
    rebuilt.prepare_data()
    assert rebuilt.cache.path == full and rebuilt.pooled_cache.path != pooled
    assert np.array_equal(rebuilt.pooled_cache.gather([3]), _block_sums(rebuilt.cache.gather([3])))

    # The full cache cut short after it was written: the run names it and the fix.
    with open(full, "r+b") as handle:
        handle.truncate(rebuilt.cache.bytes // 2)
    cut = _module(root, cache)
    cut.setup("test")  # split=all: every image is in the test part
    damaged = re.escape(f"{full} is damaged ({rebuilt.cache.bytes // 2} bytes where") + ".*--clear"
    with pytest.raises(DataError, match=damaged):
        next(iter(cut.test_dataloader()))  # found at the first batch, whichever rows it reads
    del rebuilt, cut
    gc.collect()
    cleared = _listed(capsys, str(root), "--clear", "--cache-dir", str(cache))
    assert pooled.name in cleared and full.name in cleared
    assert not list((cache / "images").glob("*.i16")) and not full.exists()
    assert not pooled.with_suffix(".json").exists()


def _block_sums(frames: np.ndarray) -> np.ndarray:
    """int16 sums of each 2x2 pixel block, by plain reshaping."""
    count, channels, height, width = frames.shape
    blocks = frames[..., : height // 2 * 2, : width // 2 * 2].astype(np.int16)
    return blocks.reshape(count, channels, height // 2, 2, width // 2, 2).sum((3, 5))


def test_the_data_report_says_where_the_caches_are_and_how_long(subset_root, tmp_path, capsys):
    root = tmp_path / "celeba"
    _copy(subset_root, root, count=12)
    capsys.readouterr()
    report = [str(root), "--split", "all", "--cache-dir", str(tmp_path / "c")]
    assert data_main(report) == 0
    text = capsys.readouterr().out
    scan_file = tmp_path / "c" / "scan-v3" / "img_align_celeba.csv"
    assert f"cache {scan_file}" in text and "12 files checked" in text
    assert "python -m celeba_gender.data cache" in text
    assert data_main([*report, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scan"]["seconds"] >= 0 and summary["scan"]["cache_bytes"] > 0
    module = _module(root, tmp_path / "c")
    module.prepare_data()
    facts = module.summary()["tensor_cache"]
    assert {"file", "bytes", "seconds", "built_now"} <= set(facts)


@pytest.mark.slow
def test_a_48_pixel_run_on_a_64x52_cache_trains_and_evaluates(run_env, smoke_run, tmp_path):
    """The session's smoke run made the shared full-size cache; a run with a small cache
    makes its own beside it, and eval uses the checkpoint's cache_size."""
    run = tmp_path / "run"
    small = ["data.image_size=48", "data.cache_size=[64,52]"]
    overrides = ["experiment=smoke", *small, f"hydra.run.dir={run}"]
    trained = run_script("train.py", *overrides, env=run_env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["tensor_cache"]["shape"][2:] == [64, 52]
    checkpoint = next((run / "checkpoints").glob("*.ckpt"))
    evaluated = run_script(
        "eval.py", f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path / 'eval'}", env=run_env
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    eval_summary = json.loads((tmp_path / "eval" / "data_summary.json").read_text())
    assert eval_summary["tensor_cache"]["file"] == summary["tensor_cache"]["file"]
    images = Path(run_env["CELEBA_GENDER_CACHE"]) / "images"
    sizes = {p.name.split("-")[1] for p in images.glob("images-*.u8")}
    assert {"218x178", "64x52"} <= sizes


# ------------------------------------------------------------------ found in review, fixed
_RUN = """
import json, sys
from celeba_gender.data import CelebADataModule, DataError
from celeba_gender.data import cache as cache_module
decodes = []
decode_image = cache_module.decode_image
def counted(source, *args, **kwargs):
    decodes.append(str(source))
    return decode_image(source, *args, **kwargs)
cache_module.decode_image = counted
module = CelebADataModule({root!r}, split="all", cache_dir={cache!r}, num_workers=0)
try:
    module.prepare_data()
except DataError as error:
    print(f"error: {{error}}", file=sys.stderr)
    sys.exit(2)
report = module.index.report
print(json.dumps({{"decodes": len(decodes), "checked": report["scan"]["checked"],
                  "built_now": report["tensor_cache"]["built_now"]}}))
"""


_RUN_64 = """
from celeba_gender.data import CelebADataModule
module = CelebADataModule(
    {root!r}, split="all", cache_dir={cache!r}, num_workers=0, image_size=64, face_crop={face!r},
    augmentations=[{{"name": "horizontal_flip"}}],
)
module.prepare_data()
print(module.pooled_cache)
"""


def _as_user(script: str) -> subprocess.CompletedProcess:
    """``script`` in a child to which file permissions apply: as root, without the
    capabilities that let root read and write any file."""
    if os.geteuid() == 0 and (reason := can_drop_read_override()) is not None:
        pytest.skip(f"running as root, file permissions cannot apply: {reason}")
    return forked_python.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
        preexec_fn=without_read_override if os.geteuid() == 0 else None,
    )  # fmt: skip


def test_an_unreadable_file_does_not_make_every_run_decode_again(subset_root, tmp_path):
    """A file this user may not read is checked again each run (its problem may go away),
    but the cache of the other files exists: nothing else is decoded, no space reserved."""
    root = tmp_path / "celeba"
    names = _copy(subset_root, root, count=20)
    (root / "img_align_celeba" / names[3]).chmod(0)
    script = _RUN.format(root=str(root), cache=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        result = _as_user(script)
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(json.loads(result.stdout.splitlines()[-1]))
    assert runs[0]["built_now"] is True
    assert runs[1] == {"decodes": 0, "checked": 1, "built_now": False}, runs


def test_a_read_only_cache_folder_serves_its_caches(subset_root, tmp_path):
    """A prepared cache shared read-only (a lab's, a read-only mount) is used as it is; in a
    read-only folder without one, one line says where it cannot write and what to do."""
    root = tmp_path / "celeba"
    _copy(subset_root, root, count=12)
    cache = tmp_path / "cache"
    _module(root, cache).prepare_data()
    for path in [cache, *cache.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        result = _as_user(_RUN.format(root=str(root), cache=str(cache)))
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout.splitlines()[-1])["built_now"] is False
        empty = tmp_path / "empty_cache"
        empty.mkdir(mode=0o555)
        refused = _as_user(_RUN.format(root=str(root), cache=str(empty)))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        message = refused.stderr.strip().splitlines()[-1]
        assert message.startswith(f"error: Cannot write the decoded-image cache in {empty}")
        assert "data.cache_dir" in message and "Nothing was written" in message
        # 64 px would read 2x2 block sums it cannot write there: it reads the full frames.
        small = _as_user(_RUN_64.format(root=str(root), cache=str(cache), face=FACE))
        assert small.returncode == 0, small.stderr[-2000:]
        assert small.stdout.split() == ["None"]  # a training dataset has none to read
        assert "RuntimeWarning: Training reads the full frames" in small.stderr
        assert f"Cannot write the decoded-image cache in {cache / 'images'}" in small.stderr
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_clear_keeps_a_cache_a_run_reads(subset_root, tmp_path):
    """DataLoader workers map the cache anew each epoch: a --clear from another shell while
    a run trains must keep it, or the next epoch fails."""
    root = tmp_path / "celeba"
    _copy(subset_root, root, count=24)
    module = _module(root, tmp_path / "cache", split="identity", batch_size=8, num_workers=1)
    module.prepare_data()
    module.setup()
    loader = module.train_dataloader()
    first = next(iter(loader))
    cleared = forked_python.run(
        [sys.executable, "-m", "celeba_gender.data", "cache", "--clear", "--all",
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert cleared.returncode == 0, cleared.stderr
    assert "in use or being built by another process" in cleared.stdout
    assert module.cache.path.is_file()
    second = next(iter(loader))  # the next epoch's workers map the file again
    assert len(second[0]) == len(first[0])
    del module, loader
    gone = data_main(["cache", "--clear", "--all", "--cache-dir", str(tmp_path / "cache")])
    assert gone == 0 and not list((tmp_path / "cache" / "images").glob("*.u8"))


_KILLED = """
import os, signal
from celeba_gender.data import CelebADataModule
from celeba_gender.data import cache as cache_module
write = cache_module.TensorCacheWriter.write
def write_then_die(self, row, pixels):
    write(self, row, pixels)
    os.kill(os.getpid(), signal.SIGKILL)  # a job killed mid-build (scancel, OOM killer)
cache_module.TensorCacheWriter.write = write_then_die
CelebADataModule({root!r}, split="all", cache_dir={cache!r}, num_workers=0).prepare_data()
"""


def test_a_killed_build_leaves_room_for_the_next_one(subset_root, tmp_path):
    """The killed build's partial file holds its whole reservation; the rerun replaces it, so
    its space is free for the rerun (a disk that fits one cache, not two)."""
    with small_filesystem(tmp_path / "small", 6) as small:
        root = tmp_path / "celeba"
        names = _copy(subset_root, root, count=40)  # a 4.7 MB cache
        cache = str(small / "cache")
        killed = forked_python.run(
            [sys.executable, "-c", _KILLED.format(root=str(root), cache=cache)],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert list((small / "cache" / "images").glob("*.partial"))
        rerun = forked_python.run(
            [sys.executable, "-c", _BUILD.format(root=str(root), cache=cache)],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        built = list((small / "cache" / "images").glob("*.u8"))
        assert [p.stat().st_size for p in built] == [len(names) * 3 * 218 * 178]
        assert not list((small / "cache" / "images").glob("*.partial"))
