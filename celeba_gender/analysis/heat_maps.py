"""Mean Grad-CAM heat maps of a configuration's test images, by gender and by right or wrong:
does a model look at hair, jaw or background, and does that differ where it errs?

Per configuration the lowest-seed successful run (the run of the report's other per-run
pictures) is explained with its evaluated checkpoint (``evaluated_checkpoint`` in its
metrics.json: the validation-best weights whose predictions are in test_predictions.csv).
Its test images fall into four cells (female/male x correct/wrong at the metrics' 0.5 rule);
at most ``images_per_cell`` of each, drawn with a seed, are read as evaluation read them (the
decode, the image cache's size, the checkpoint's face box, size and normalisation) and
explained toward the class the model predicted; a cell's maps and images are averaged. The
maps come from ``inference.explain`` (captum): without it, or without the checkpoint or the
data copy, the report says why and goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from celeba_gender.analysis.statistics import correct
from celeba_gender.data import DataError
from celeba_gender.data.cache import resized_rgb
from celeba_gender.data.images import ImageDecodeError, decode_image
from celeba_gender.training.outputs import METRICS_FILE

# (column title, label, whether the prediction is right), in the grid's order.
CELLS: tuple[tuple[str, int, bool], ...] = (
    ("female correct", 0, True),
    ("female wrong", 0, False),
    ("male correct", 1, True),
    ("male wrong", 1, False),
)


@dataclass
class MeanMap:
    """One cell: the mean of its images (H, W, 3, 0..1) and of their maps (H, W, 0..1)."""

    count: int
    face: np.ndarray | None = None
    heat: np.ndarray | None = None


def cell_samples(predictions: pd.DataFrame, per_cell: int, seed: int) -> dict[str, pd.DataFrame]:
    """The test predictions of each cell, at most ``per_cell`` of them: a seeded draw from the
    cell's rows sorted by file name (the same images whatever order the CSV has)."""
    right = correct(predictions)
    samples = {}
    for name, label, is_right in CELLS:
        cell = predictions[(predictions["label"] == label).to_numpy() & (right == is_right)]
        cell = cell.sort_values("file_name", kind="stable")
        samples[name] = cell.sample(n=min(per_cell, len(cell)), random_state=seed)
    return samples


def evaluated_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint whose test predictions the run saved, found in the run's folder now (the
    sweep may have moved since it was recorded). DataError when there is none."""
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{run_dir / METRICS_FILE} cannot be read ({error})") from None
    recorded = record.get("evaluated_checkpoint")
    if not recorded or recorded == "last epoch":
        raise DataError(
            f"{run_dir.name} was tested on its last epoch's weights and kept no checkpoint of "
            "them (trained with ~callbacks.model_checkpoint, or best.ckpt holds other weights)"
        )
    # Only inside the run's folder as it is now: the recorded path may be another copy's (the
    # sweep copied without checkpoints, the original since retrained).
    recorded = Path(recorded)
    candidates = [run_dir / "checkpoints" / recorded.name]
    output_dir = record.get("output_dir")
    if output_dir and recorded.is_relative_to(output_dir):
        candidates.insert(0, run_dir / recorded.relative_to(output_dir))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{run_dir.name}: its evaluated checkpoint {recorded.name} is gone (deleted, or the "
        "sweep was copied without checkpoints/)"
    )


def read_as_evaluated(path: Path, eval_transform: dict) -> Image.Image:
    """An image as the run's test loader had it before its transform: the project's decode,
    resized to the image cache's size when the run used one (the checkpoint records it)."""
    try:
        image = decode_image(path, name=path.name)
    except ImageDecodeError as error:
        raise DataError(f"heat maps: test image {error}") from None
    cache_size = eval_transform.get("cache_size")
    if cache_size:
        image = Image.fromarray(resized_rgb(image, *cache_size).transpose(1, 2, 0))
    return image


def mean_maps(
    checkpoint: Path,
    image_dir: Path,
    predictions: pd.DataFrame,
    per_cell: int,
    seed: int,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict[str, MeanMap]:
    """Each cell's mean image and mean Grad-CAM map (toward the predicted class) for the model
    of ``checkpoint``, over at most ``per_cell`` of its test images (``predictions``' rows)."""
    from celeba_gender.inference.explain import CropExplainer
    from celeba_gender.inference.predictor import GenderPredictor

    predictor = GenderPredictor.load(checkpoint, device, batch_size)
    explainer = CropExplainer.from_predictor(predictor)  # ONNX or no captum: ExplainUnavailable
    cells = {}
    for name, rows in cell_samples(predictions, per_cell, seed).items():
        images = [
            read_as_evaluated(image_dir / file_name, predictor.eval_transform)
            for file_name in rows["file_name"]
        ]
        if not images:
            cells[name] = MeanMap(0)
            continue
        size = images[0].size  # a source with images of several sizes: the first one's
        faces, heats = [], []
        for image, heat in zip(images, explainer.explain(images), strict=True):
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
                heat = np.asarray(
                    Image.fromarray(heat.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
                )
            faces.append(np.asarray(image, dtype=np.float32) / 255)
            heats.append(heat)
        cells[name] = MeanMap(len(images), np.mean(faces, axis=0), np.mean(heats, axis=0))
    return cells
