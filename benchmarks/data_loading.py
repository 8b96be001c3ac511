"""Images/second of the training input pipeline: per-sample PIL loading vs the cached batch path.

(a) per_sample: decode each JPEG with PIL, crop, resize, augment and normalise image by image in
    DataLoader workers (the reference study's loader, with its 45-degree rotation and flip);
(b) cached: read the batch's rows from the decoded-image cache file (uint8 frames; for sizes
    that box-filter by 2x2 first, such as 64 px, the pooled cache's int16 2x2 block sums: a
    quarter of the pixels, the same batch), move it to the device, then crop, resize, augment
    (per image random parameters) and normalise the whole batch.

Both produce the same normalised training batches on the same device. Usage:

    python benchmarks/data_loading.py [--root DIR] [--sizes 224 64] [--batches 60]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from celeba_gender.data import CelebADataModule

STUDY_AUGMENTATIONS = [{"name": "horizontal_flip", "p": 0.5}, {"name": "rotation", "degrees": 45}]
DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celeba-subset"


def images_per_second(module: CelebADataModule, batches: int, device: torch.device) -> float:
    """Time ``batches`` training batches from loader to normalised tensors on ``device``."""
    module.setup("fit")
    loader = module.train_dataloader()
    seen, started = 0, None
    iterator = iter(loader)
    for step in range(batches + 1):
        try:
            images, labels, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            images, labels, _ = next(iterator)
        images = images.to(device, non_blocking=True)
        if module.loader == "cached":
            images = module.transform_batch(images, train=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step == 0:  # the first batch pays for worker start-up
            started = time.perf_counter()
            continue
        seen += len(images)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("CELEBA_ROOT", str(DEFAULT_ROOT)))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--workers", type=int, default=2, help="per-sample loader workers")
    parser.add_argument("--cached-workers", type=int, default=0, help="cached loader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--output", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="celeba-bench-")

    common = dict(
        root=args.root,
        split="seed_protocol",
        balance="undersample",
        face_crop={"top": 30, "left": 0, "height": 178, "width": 178},
        augmentations=STUDY_AUGMENTATIONS,
        batch_size=args.batch_size,
        cache_dir=cache_dir,
    )
    started = time.perf_counter()
    CelebADataModule(**common, loader="cached").prepare_data()
    cache_build_s = time.perf_counter() - started

    rows = []
    for size in args.sizes:
        per_sample = CelebADataModule(
            **common, image_size=size, loader="per_sample", num_workers=args.workers
        )
        cached = CelebADataModule(
            **common, image_size=size, loader="cached", num_workers=args.cached_workers
        )
        started = time.perf_counter()
        cached.prepare_data()  # the 2x2 block sums for sizes that use them: once, like the cache
        prepare_s = time.perf_counter() - started
        # Alternate the two and keep the median of each: a shared machine's speed drifts.
        a, b = [], []
        for _ in range(args.repeats):
            a.append(images_per_second(per_sample, args.batches, device))
            gc.collect()  # ends the per-sample workers before the cached path runs
            b.append(images_per_second(cached, args.batches, device))
        a, b = statistics.median(a), statistics.median(b)
        # What the measured batches were read from (a cache that could not be written falls
        # back to the full frames).
        reads = "pooled 2x2 sums" if cached.datasets["train"].read_pooled else "full frames"
        rows.append(
            {
                "size": size,
                "per_sample": a,
                "cached_batched": b,
                "ratio": b / a,
                "cached_reads": reads,
                "cached_prepare_s": prepare_s,
            }
        )

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
    )
    print(
        f"machine: {machine}; torch {torch.__version__}; batch {args.batch_size}; "
        f"{args.batches} batches; per-sample workers {args.workers}"
    )
    print(f"one-off decode into the tensor cache: {cache_build_s:.1f} s")
    print(f"{'size':>5} {'per-sample img/s':>17} {'cached+batched img/s':>21} {'ratio':>6}  reads")
    for row in rows:
        print(
            f"{row['size']:>5} {row['per_sample']:>17.0f} {row['cached_batched']:>21.0f} "
            f"{row['ratio']:>5.1f}x  {row['cached_reads']}"
        )
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "torch": torch.__version__,
                    "measured_on": datetime.date.today().isoformat(),
                    "batch_size": args.batch_size,
                    "per_sample_workers": args.workers,
                    "cache_build_s": cache_build_s,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
