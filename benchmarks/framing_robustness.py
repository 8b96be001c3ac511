"""Does a face predict the same way as a CelebA crop and inside a larger, rotated photo?

For a trained run: its test images (test_predictions.csv) are re-framed (scaled, rotated,
pasted on a larger random background; celeba_gender/inference/framing.py) and labelled by the
predict pipeline (detect, align, the run's eval transform). Accuracies on the same images:

  as tested       the run's own test predictions
  crop, no detect the predict pipeline on the original aligned files (detect=false)
  crop, detect    the pipeline detecting and re-aligning the original files
  reframed        the pipeline on the re-framed photos (a missed face counts as wrong)

    python benchmarks/framing_robustness.py outputs/runs/<run> [--limit 400] [--output F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from celeba_gender.analysis.collect import read_predictions
from celeba_gender.data.annotations import detect_layout
from celeba_gender.inference import FaceAligner, GenderPredictor
from celeba_gender.inference.framing import Framing, reframe


def _accuracy(p_male: np.ndarray, labels: np.ndarray) -> float:
    return float(((p_male > 0.5) == (labels == 1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--examples", type=Path, default=None, help="save a few reframed photos")
    args = parser.parse_args()
    run = json.loads((args.run_dir / "metrics.json").read_text())
    tested = read_predictions(args.run_dir)
    if args.limit:
        tested = tested.iloc[: args.limit]
    labels = tested["label"].to_numpy()
    image_dir = detect_layout(run["data_root"]).image_dir
    crops = [Image.open(image_dir / name).convert("RGB") for name in tested["file_name"]]
    predictor = GenderPredictor.load(args.run_dir / "checkpoints" / "best.ckpt")
    aligner = FaceAligner.from_config()

    def detected(photos: list[Image.Image]) -> tuple[np.ndarray, int, float]:
        started = time.perf_counter()
        found = [aligner.find(photo) for photo in photos]
        seconds = time.perf_counter() - started
        have = [i for i, faces in enumerate(found) if faces]
        p_male = np.full(len(photos), np.nan)
        p_male[have] = predictor.predict([found[i][0].crop for i in have])
        # A photo without a detected face is a wrong answer, not a skipped one.
        p_male = np.where(np.isnan(p_male), np.where(labels == 1, 0.0, 1.0), p_male)
        return p_male, len(photos) - len(have), seconds / len(photos)

    rng = np.random.default_rng(args.seed)
    framing = Framing()
    reframed = [reframe(crop, framing, rng) for crop in crops]
    if args.examples:
        args.examples.mkdir(parents=True, exist_ok=True)
        for name, photo in list(zip(tested["file_name"], reframed, strict=True))[:8]:
            photo.save(args.examples / name)
    plain = predictor.predict(crops)
    crop_detect, crop_missed, _ = detected(crops)
    framed_detect, framed_missed, seconds = detected(reframed)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "run": str(args.run_dir),
        "model": run["model"],
        "image_size": run["image_size"],
        "test_images": len(tested),
        "framing": asdict(framing),
        "accuracy_as_tested": _accuracy(tested["p_male"].to_numpy(), labels),
        "accuracy_crop_no_detect": _accuracy(plain, labels),
        "accuracy_crop_detect": _accuracy(crop_detect, labels),
        "accuracy_reframed": _accuracy(framed_detect, labels),
        "missed_faces_crop": crop_missed,
        "missed_faces_reframed": framed_missed,
        "detect_align_ms_per_photo": 1000 * seconds,
    }
    result["gap_points"] = 100 * (result["accuracy_as_tested"] - result["accuracy_reframed"])
    for key, value in result.items():
        print(f"{key:28s} {value}")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
