"""Inference latency: ms per image of every backbone at batch 1 and a larger batch, and face
detection + alignment per photo, on this machine (CPU, or the GPU when there is one).

Random weights (speed does not depend on their values), the architecture's own input size
(224, 299 for Inception-v3), evaluation mode, torch.inference_mode; the median of --repeats
timed calls after warm-up calls.

    python benchmarks/latency.py [--models resnet18 vgg16] [--batch 32] [--output F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from PIL import Image

from celeba_gender.config import compose_config
from celeba_gender.data.transforms import ALIGNED_HEIGHT, ALIGNED_WIDTH
from celeba_gender.models import GenderClassifier, model_names


def _median_ms(call, repeats: int, warmup: int, device: torch.device) -> float:
    times = []
    for index in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def model_latency(name: str, batch: int, repeats: int, warmup: int, device: torch.device) -> dict:
    cfg = compose_config("config", [f"model={name}", "treatment=scratch_bce"])
    size = cfg.model.image_size
    model: GenderClassifier = instantiate(cfg.module).to(device).eval()
    row = {"model": name, "image_size": size}
    with torch.inference_mode():
        for label, n in (("batch_1", 1), (f"batch_{batch}", batch)):
            images = torch.randn(n, 3, size, size, device=device)
            ms = _median_ms(lambda images=images: model(images), repeats, warmup, device)
            row[f"{label}_ms_per_image"] = ms / n
    return row


def detection_latency(repeats: int, device: torch.device) -> list[dict]:
    from celeba_gender.inference import FaceAligner

    aligner = FaceAligner.from_config(device=str(device))
    rows = []
    sample = Path(__file__).resolve().parents[1] / "celeba_gender/assets/celeba_sample"
    first = sorted((sample / "img_align_celeba").glob("*.jpg"))[0]
    face = Image.open(first).convert("RGB")
    for width in (640, 1280, 1920):
        photo = face.resize((width // 3, round(width // 3 * ALIGNED_HEIGHT / ALIGNED_WIDTH)))
        canvas = Image.new("RGB", (width, width * 3 // 4), (90, 110, 130))
        canvas.paste(photo, (width // 3, 10))
        ms = _median_ms(lambda canvas=canvas: aligner.find(canvas), repeats, 1, device)
        rows.append({"photo": f"{canvas.width}x{canvas.height}", "detect_align_ms": ms})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=model_names())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        + str(torch.get_num_threads())
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
    )
    print(f"machine: {machine}; torch {torch.__version__}; device {device}")
    rows = []
    for name in args.models:
        rows.append(model_latency(name, args.batch, args.repeats, args.warmup, device))
        print(json.dumps(rows[-1]))
    detection = detection_latency(args.repeats, device)
    for row in detection:
        print(json.dumps(row))
    if args.output:
        args.output.write_text(
            json.dumps(
                {"machine": machine, "device": str(device), "models": rows, "detection": detection},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
