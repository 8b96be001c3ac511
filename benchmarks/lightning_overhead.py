"""Training images/second: GenderClassifier under Lightning vs a plain PyTorch loop.

Same model, same data module (cached loader, batch transform on the device), same batch size,
optimizer and precision; the first batches of each are discarded as warm-up. Usage:

    python benchmarks/lightning_overhead.py [--root DIR] [--model resnet18] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from celeba_gender.data import CelebADataModule
from celeba_gender.models import GenderClassifier
from celeba_gender.training.callbacks import TrainingThroughput

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "celeba-subset"


def _model(args) -> GenderClassifier:
    torch.manual_seed(0)
    # The study's optimizer, as conf/optimizer/adam.yaml builds it.
    optimizer = instantiate(OmegaConf.load(REPO / "conf" / "optimizer" / "adam.yaml"))
    return GenderClassifier(args.model, "bce", pretrained=False, optimizer=optimizer)


def plain_loop(args, datamodule: CelebADataModule, device: torch.device) -> float:
    model = _model(args).to(device)
    optimizer = model.configure_optimizers()
    autocast = torch.autocast(
        device.type,
        dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
        enabled=args.precision != "32",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    model.train()
    images_seen, started = 0, None
    loader = iter(datamodule.train_dataloader())
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        images, labels, rows = next(loader)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        images = datamodule.transform_batch(images, train=True)
        with autocast:
            loss = model.training_step((images, labels, rows), step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step >= args.warmup:
            images_seen += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images_seen / (time.perf_counter() - started)


class _SkipWarmup(TrainingThroughput):
    def __init__(self, warmup: int) -> None:
        super().__init__()
        self.warmup = warmup

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx < self.warmup:
            self._previous = time.perf_counter()
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def lightning_loop(args, datamodule: CelebADataModule, device: torch.device) -> float:
    throughput = _SkipWarmup(args.warmup)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
    )
    trainer.fit(_model(args), datamodule=datamodule)
    return throughput.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("CELEBA_ROOT", str(DEFAULT_ROOT)))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; medians")
    parser.add_argument("--precision", default="32", choices=["32", "16-mixed", "bf16-mixed"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    datamodule = CelebADataModule(
        args.root,
        image_size=args.size,
        face_crop={"top": 30, "left": 0, "height": 178, "width": 178},
        augmentations=[{"name": "horizontal_flip"}, {"name": "rotation", "degrees": 15}],
        batch_size=args.batch_size,
        num_workers=0,
        cache_dir=args.cache_dir or tempfile.mkdtemp(prefix="celeba-bench-"),
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    plain, lightning = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(args, datamodule, device))
        lightning.append(lightning_loop(args, datamodule, device))
    plain_ips, lightning_ips = statistics.median(plain), statistics.median(lightning)
    overhead = 100 * (plain_ips / lightning_ips - 1)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, device {device}" + (
        f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    )
    print(f"machine: {machine}; torch {torch.__version__}; lightning {L.__version__}")
    print(
        f"{args.model} {args.size}px batch {args.batch_size} precision {args.precision}: "
        f"median of {args.repeats} x {args.steps} steps"
    )
    print(f"plain PyTorch loop: {plain_ips:8.1f} img/s   (runs: {[round(v) for v in plain]})")
    print(
        f"Lightning:          {lightning_ips:8.1f} img/s   (runs: {[round(v) for v in lightning]})"
    )
    print(f"Lightning overhead: {overhead:+.1f}%")
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "model": args.model,
                    "size": args.size,
                    "batch_size": args.batch_size,
                    "precision": args.precision,
                    "plain": plain,
                    "lightning": lightning,
                    "overhead_percent": overhead,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
