"""Full-CelebA scale: scan, cache and training cost at growing copy sizes, extrapolated to 202,599.

Makes synthetic CelebA copies (official layout, the real 202,599-row annotation files) of each
size from the shared subset: file ``i`` is named like the i-th image of the official list and
holds one of the subset's 4,014 distinct images, cycled, re-encoded with a small deterministic
change (brightness offset, JPEG quality, a pixel shift) so that every file is a distinct real
JPEG. The largest copy is written once under --workdir; the smaller ones are hard links to its
first files. Then, per size, each phase runs in a fresh process (its peak RSS is that phase's):

  scan      fresh cache dir, CelebADataModule(loader='per_sample').prepare_data()
  cache     same cache dir, loader='cached' prepare_data(): the scan is reused, so the build
  first     another fresh cache dir, loader='cached' prepare_data() in one go
  second    prepare_data() again on that warm cache: must build nothing
  train     train.py (celeba_gender.train): ResNet-18 from scratch at 48 px for --train-steps
            steps, then --eval-batches test batches; images/s from the run's metrics.json

Usage:

    python benchmarks/scale.py [--images 4000,20000,50000] [--json OUT] [--workdir DIR]
                               [--train-steps 40] [--eval-batches 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from celeba_gender.data.annotations import canonical_name
from celeba_gender.data.cache import atomic_write
from celeba_gender.data.errors import DataError
from celeba_gender.data.images import decode_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "celeba-subset"
FULL_CELEBA = 202_599
ANNOTATION_FILES = ("Anno/list_attr_celeba.txt", "Anno/identity_CelebA.txt")
PARTITION_FILE = "Eval/list_eval_partition.txt"
IMAGE_FOLDER = "img_align_celeba"
# The change that makes the k-th reuse of a subset image a distinct file: 4 brightness offsets
# x 6 JPEG qualities x (k // 24) pixels of horizontal shift, so copies of any size stay distinct.
BRIGHTNESS_OFFSETS = (1, -1, 2, -2)
JPEG_QUALITIES = (95, 94, 93, 92, 91, 90)
# Raise when the generated pixels change: a copy made by another version is made again.
GENERATOR_VERSION = 1
COMPLETE_MARKER = "complete.json"
MEMORY_SAMPLE_SECONDS = 0.01
TABLE_KEYS = (
    ("images", "images", "{:,}"),
    ("scan_seconds", "scan s", "{:.1f}"),
    ("cache_seconds", "cache s", "{:.1f}"),
    ("first_run_seconds", "1st run s", "{:.1f}"),
    ("second_run_seconds", "2nd run s", "{:.2f}"),
    ("cache_bytes", "cache GB", "{:.3f}"),
    ("peak_rss_mb", "train RSS MB", "{:,.0f}"),
    ("peak_anon_mb", "anon MB", "{:,.0f}"),
    ("train_images_per_second", "train img/s", "{:,.0f}"),
    ("eval_images_per_second", "eval img/s", "{:,.0f}"),
)


# ---------------------------------------------------------------- the synthetic copies
def distinct_sources(subset_root: Path) -> list[Path]:
    """The subset's images without its exact ``NNNNNN(1).jpg`` copies, in name order."""
    folder = subset_root / IMAGE_FOLDER
    names = sorted(p.name for p in folder.iterdir() if canonical_name(p.name) == p.name)
    if not names:
        raise DataError(f"No images in {folder}; pass --root a CelebA copy (official layout).")
    return [folder / name for name in names]


def image_name(index: int) -> str:
    """The official name of the ``index``-th image (0-based): 0 -> 000001.jpg."""
    return f"{index + 1:06d}.jpg"


def variant(index: int, sources: int) -> tuple[int, int, int]:
    """(brightness offset, JPEG quality, pixel shift) of file ``index``: each reuse of a source
    image differs from the others."""
    reuse = index // sources
    combos = len(BRIGHTNESS_OFFSETS) * len(JPEG_QUALITIES)
    return (
        BRIGHTNESS_OFFSETS[reuse % len(BRIGHTNESS_OFFSETS)],
        JPEG_QUALITIES[(reuse // len(BRIGHTNESS_OFFSETS)) % len(JPEG_QUALITIES)],
        reuse // combos,
    )


def write_variant(task: tuple[str, str, int, int, int]) -> None:
    """Re-encode one source image with its change (a worker of ``make_source_copy``)."""
    source, target, offset, quality, shift = task
    pixels = np.asarray(decode_image(source), dtype=np.int16) + offset
    if shift:  # the columns shifted out on the right come back as copies of the left edge
        pixels = np.concatenate([np.repeat(pixels[:, :1], shift, axis=1), pixels[:, :-shift]], 1)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    image.save(target, format="JPEG", quality=quality)


def _complete_count(folder: Path, subset_root: Path) -> int:
    """How many leading files of ``folder`` a previous run finished with this generator."""
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return 0
    same = marker.get("version") == GENERATOR_VERSION and marker.get("source") == str(subset_root)
    return int(marker.get("images", 0)) if same else 0


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link of ``source`` (the annotation files are 31 MB, read only),
    or a copy where a link cannot be made (another file system)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def make_source_copy(
    subset_root: Path, folder: Path, count: int, processes: int = 2
) -> float | None:
    """Make ``folder`` a CelebA copy of ``count`` distinct images, writing only the files a
    previous run did not finish; returns the seconds spent, None when it was complete."""
    started = time.perf_counter()
    done = _complete_count(folder, subset_root)
    if done >= count:
        return None
    for relative in (IMAGE_FOLDER, *ANNOTATION_FILES, PARTITION_FILE):
        if not (subset_root / relative).exists():
            raise DataError(
                f"{subset_root / relative} does not exist: pass --root a CelebA copy in the "
                "official layout with its full annotation files (e.g. the shared subset)."
            )
    sources = distinct_sources(subset_root)
    image_dir = folder / IMAGE_FOLDER
    image_dir.mkdir(parents=True, exist_ok=True)
    for relative in (*ANNOTATION_FILES, PARTITION_FILE):
        link_or_copy(subset_root / relative, folder / relative)
    tasks = [
        (str(sources[i % len(sources)]), str(image_dir / image_name(i)), *variant(i, len(sources)))
        for i in range(done, count)
    ]
    with multiprocessing.Pool(processes) as pool:
        for _ in pool.imap_unordered(write_variant, tasks, chunksize=64):
            pass
    record = {"version": GENERATOR_VERSION, "source": str(subset_root), "images": count}
    atomic_write(folder / COMPLETE_MARKER, json.dumps(record).encode())
    return time.perf_counter() - started


def link_copy(source_copy: Path, folder: Path, count: int) -> Path:
    """A copy of the first ``count`` images of ``source_copy`` as hard links (no extra disk),
    in a folder of its own so that its caches are its own."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / IMAGE_FOLDER).mkdir(parents=True)
    for relative in (*ANNOTATION_FILES, PARTITION_FILE):
        link_or_copy(source_copy / relative, folder / relative)
    for i in range(count):
        name = image_name(i)
        os.link(source_copy / IMAGE_FOLDER / name, folder / IMAGE_FOLDER / name)
    return folder


# ---------------------------------------------------------------- one phase in a fresh process
class MemoryProbe:
    """This process's peak RSS (the kernel's VmHWM) and peak anonymous RSS (RssAnon, sampled
    every 10 ms: memory-mapped file pages count in RSS but not in it)."""

    def __init__(self) -> None:
        self.peak_anon_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _status() -> dict[str, int]:
        with open("/proc/self/status", encoding="ascii") as status:
            return {
                key: int(value.split()[0])
                for key, _, value in (line.partition(":") for line in status)
                if key in ("VmHWM", "RssAnon")
            }

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_SECONDS):
            self.peak_anon_kb = max(self.peak_anon_kb, self._status()["RssAnon"])

    def __enter__(self) -> MemoryProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, float]:
        status = self._status()
        anon = max(self.peak_anon_kb, status["RssAnon"])
        return {"peak_rss_mb": status["VmHWM"] / 1024, "peak_anon_mb": anon / 1024}


def child_prepare(root: str, cache_dir: str, loader: str) -> dict[str, Any]:
    """``CelebADataModule(...).prepare_data()`` timed, with what its data report says."""
    from celeba_gender.data import CelebADataModule

    module = CelebADataModule(root, loader=loader, cache_dir=cache_dir)
    started = time.perf_counter()
    module.prepare_data()
    seconds = time.perf_counter() - started
    report = module.index.report
    return {
        "seconds": seconds,
        "images_usable": report.get("images_usable"),
        "scan_checked": report.get("scan", {}).get("checked"),
        "cache_built_now": report.get("tensor_cache", {}).get("built_now"),
    }


def child_train(overrides: Sequence[str]) -> dict[str, Any]:
    """The training entry point (``celeba-gender-train``) with ``overrides``."""
    from celeba_gender.train import main

    sys.argv = ["celeba-gender-train", *overrides]
    main()
    return {}


def run_child(out: Path, phase: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run one phase in a fresh Python process; its figures and peak memory, or a DataError
    naming the phase and the end of its output."""
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase]
    command += ["--phase-arguments", json.dumps(arguments), "--phase-output", str(out)]
    out.unlink(missing_ok=True)  # a figure left by an earlier run is never read as this one's
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise DataError(f"The {phase} phase failed (exit {result.returncode}):\n{tail}")
    return json.loads(out.read_text())


def _phase_main(phase: str, arguments: str, output: str) -> None:
    phases: dict[str, Callable[..., dict[str, Any]]] = {
        "prepare": child_prepare,
        "train": child_train,
    }
    with MemoryProbe() as probe:
        figures = phases[phase](**json.loads(arguments))
    atomic_write(Path(output), json.dumps({**figures, **probe.figures()}).encode())


# ---------------------------------------------------------------- one size
def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def training_overrides(args: argparse.Namespace, root: Path, cache: Path, run: Path) -> list[str]:
    return [
        "model=resnet18",
        "treatment=scratch_bce",
        f"trainer={args.trainer}",
        "logger=none",
        f"data.root={root}",
        f"data.cache_dir={cache}",
        "data.image_size=48",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",  # workers' memory would not be this process's peak RSS
        "++trainer.max_epochs=-1",  # ++: set whether or not the trainer file has it
        f"++trainer.max_steps={args.train_steps}",
        "++trainer.limit_val_batches=1",
        f"++trainer.limit_test_batches={args.eval_batches}",
        "++trainer.limit_predict_batches=1",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        # No best.ckpt (45 MB at ResNet-18; written outside the timed batches anyway): the
        # test uses the last weights. last.ckpt is written only on a stop signal.
        "~callbacks.model_checkpoint",
        f"hydra.run.dir={run}",
        *args.train_override,
    ]


def measure_size(args: argparse.Namespace, source_copy: Path, images: int) -> dict[str, Any]:
    """Every figure of one copy size; its caches and run are deleted unless --keep."""
    work = Path(args.workdir_resolved)
    root = link_copy(source_copy, work / f"celeba-{images}", images)
    scan_cache, cache = work / "caches" / f"{images}-scan", work / "caches" / f"{images}"
    run = work / "runs" / f"{images}"
    for folder in (scan_cache, cache, run):
        shutil.rmtree(folder, ignore_errors=True)
    out = work / "phases"
    out.mkdir(exist_ok=True)

    def prepare(name: str, cache_dir: Path, loader: str) -> dict[str, Any]:
        arguments = {"root": str(root), "cache_dir": str(cache_dir), "loader": loader}
        return run_child(out / f"{images}-{name}.json", "prepare", arguments)

    scan = prepare("scan", scan_cache, "per_sample")
    if scan["images_usable"] != images:
        raise DataError(
            f"{root} has {scan['images_usable']} usable distinct images, not {images}: "
            f"delete {source_copy} and run again to make the copy anew."
        )
    built = prepare("cache", scan_cache, "cached")
    cache_bytes = folder_bytes(scan_cache)
    shutil.rmtree(scan_cache)  # the next cache dir holds the same: one at a time on the disk
    first = prepare("first", cache, "cached")
    second = prepare("second", cache, "cached")
    train = run_child(
        out / f"{images}-train.json",
        "train",
        {"overrides": training_overrides(args, root, cache, run)},
    )
    metrics = json.loads((run / "metrics.json").read_text())
    if metrics.get("status") != "ok":
        raise DataError(f"The training run in {run} ended with status {metrics.get('status')}.")
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
    train_ips = metrics["train_images_per_second"]
    return {
        "images": images,
        "scan_seconds": scan["seconds"],
        "cache_seconds": built["seconds"],
        "cache_bytes": cache_bytes,
        "peak_rss_mb": train["peak_rss_mb"],
        "train_images_per_second": train_ips,
        "eval_images_per_second": metrics["test_images_per_second"],
        # Extra figures: the one-go first run, the warm second run, and where memory went.
        "first_run_seconds": first["seconds"],
        "second_run_seconds": second["seconds"],
        "second_run_scan_checked": second["scan_checked"],
        "second_run_cache_built_now": second["cache_built_now"],
        "second_run_built_nothing": second["scan_checked"] == 0
        and second["cache_built_now"] is False,
        "peak_anon_mb": train["peak_anon_mb"],
        "scan_peak_rss_mb": scan["peak_rss_mb"],
        "cache_peak_rss_mb": built["peak_rss_mb"],
        "cache_peak_anon_mb": built["peak_anon_mb"],
        "train_steps": args.train_steps,
        "batch_size": args.batch_size,
        "train_images": round(train_ips * metrics["train_seconds"]),
        "eval_images": metrics["test_images"],
    }


# ---------------------------------------------------------------- the report
def print_table(rows: list[dict[str, Any]]) -> None:
    widths = [max(len(title), 9) for _, title, _ in TABLE_KEYS]
    print("  ".join(f"{title:>{w}}" for (_, title, _), w in zip(TABLE_KEYS, widths, strict=True)))
    for row in rows:
        cells = []
        for (key, _, form), width in zip(TABLE_KEYS, widths, strict=True):
            value = row[key] / 1e9 if key == "cache_bytes" else row[key]
            cells.append(f"{form.format(value):>{width}}")
        print("  ".join(cells))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image cost ratios (largest vs smallest size), RSS growth, and a linear
    extrapolation of times and bytes to the full 202,599 images."""
    small, large = min(rows, key=lambda r: r["images"]), max(rows, key=lambda r: r["images"])

    def per_image(row: dict[str, Any], key: str) -> float:
        return row[key] / row["images"]

    ratios = {
        key: per_image(large, key) / per_image(small, key)
        for key in ("scan_seconds", "cache_seconds", "first_run_seconds", "cache_bytes")
    }
    extrapolated = {
        key: per_image(large, key) * FULL_CELEBA
        for key in ("scan_seconds", "cache_seconds", "first_run_seconds", "cache_bytes")
    }
    # One epoch of the identity split's training part (80%) at the largest size's speed.
    extrapolated["train_epoch_seconds"] = 0.8 * FULL_CELEBA / large["train_images_per_second"]
    return {
        "smallest": small["images"],
        "largest": large["images"],
        "per_image_ratio_largest_vs_smallest": ratios,
        "peak_rss_growth_mb": large["peak_rss_mb"] - small["peak_rss_mb"],
        "peak_anon_growth_mb": large["peak_anon_mb"] - small["peak_anon_mb"],
        "second_runs_built_nothing": all(r["second_run_built_nothing"] for r in rows),
        "linear_extrapolation_to_202599": extrapolated,
    }


def print_summary(facts: dict[str, Any]) -> None:
    ratios, full = (
        facts["per_image_ratio_largest_vs_smallest"],
        facts["linear_extrapolation_to_202599"],
    )
    print(
        f"\nper-image cost, {facts['largest']:,} vs {facts['smallest']:,} images (target <= 1.3x):"
    )
    for key, value in ratios.items():
        print(f"  {key:<18} {value:5.2f}x")
    print(
        f"training peak RSS growth: {facts['peak_rss_growth_mb']:+,.0f} MB "
        f"(anonymous {facts['peak_anon_growth_mb']:+,.0f} MB; target < 300 MB)"
    )
    print(f"second run on a warm cache built nothing: {facts['second_runs_built_nothing']}")
    print(f"linear extrapolation to {FULL_CELEBA:,} images (per-image cost at the largest size):")
    print(
        f"  scan {full['scan_seconds']:,.0f} s, cache build {full['cache_seconds']:,.0f} s, "
        f"first run {full['first_run_seconds']:,.0f} s, cache {full['cache_bytes'] / 1e9:.1f} GB, "
        f"one training epoch (80%) {full['train_epoch_seconds']:,.0f} s"
    )


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise DataError(
            f"--images {text!r}: give sizes as integers, e.g. 4000,20000,50000"
        ) from None
    if not sizes or sizes[0] < 1 or sizes[-1] > FULL_CELEBA:
        raise DataError(f"--images {text!r}: each size must be between 1 and {FULL_CELEBA:,}.")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="4000,20000,50000", help="copy sizes, comma-separated")
    parser.add_argument(
        "--root",
        default=os.environ.get("CELEBA_SUBSET", str(DEFAULT_ROOT)),
        help="the CelebA subset the copies are made from",
    )
    parser.add_argument("--json", default=None, help="write one object per size here")
    parser.add_argument(
        "--workdir",
        default=None,
        help="copies, caches and runs (default: a temporary folder, deleted)",
    )
    parser.add_argument("--train-steps", type=int, default=40)
    # 3 x 128 images fit in the test part of the smallest copy (~400 at 4,000), so every size
    # evaluates, and reads from its cache, the same number of images.
    parser.add_argument("--eval-batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--trainer", default="cpu", help="conf/trainer group: cpu | gpu")
    parser.add_argument(
        "--train-override",
        action="append",
        default=[],
        help="one more train.py override (repeatable)",
    )
    parser.add_argument("--processes", type=int, default=2, help="processes making the copy")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep copies, caches and runs (default: delete what was made)",
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--phase-arguments", help=argparse.SUPPRESS)
    parser.add_argument("--phase-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        _phase_main(args.phase, args.phase_arguments, args.phase_output)
        return
    try:
        run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    sizes = parse_sizes(args.images)
    if args.train_steps < 1 or args.eval_batches < 1:
        raise DataError("--train-steps and --eval-batches must be at least 1.")
    temporary = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="celeba-scale-")).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.workdir_resolved = str(work)
    source_copy = work / "source"
    try:
        made = make_source_copy(Path(args.root), source_copy, sizes[-1], args.processes)
        print(
            f"copy of {sizes[-1]:,} images in {source_copy}: "
            + ("reused" if made is None else f"made in {made:.0f} s"),
            flush=True,
        )
        rows = []
        for images in sizes:
            rows.append(measure_size(args, source_copy, images))
            print(f"{images:,} images measured", flush=True)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:  # a given workdir keeps the source copy for the next run
            for name in ("caches", "runs", "phases", *(f"celeba-{n}" for n in sizes)):
                shutil.rmtree(work / name, ignore_errors=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPU cores, GPU {gpu}; python "
        f"{platform.python_version()}; ResNet-18 48 px, batch {args.batch_size}, "
        f"{args.train_steps} training steps, {args.eval_batches} test batches, "
        f"trainer={args.trainer}"
    )
    print_table(rows)
    facts = summary(rows)
    print_summary(facts)
    if args.json:
        atomic_write(Path(args.json), json.dumps(rows, indent=2).encode())


if __name__ == "__main__":
    main()
