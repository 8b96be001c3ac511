"""What a run leaves in its output folder: metrics.json, test predictions, TensorBoard extras."""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from celeba_gender.data.cache import atomic_write
from celeba_gender.models.evaluation import EvaluationOutputs
from celeba_gender.spreadsheet import safe_frame

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"
VAL_PREDICTIONS_FILE = "val_predictions.csv"  # same columns, the evaluated checkpoint on val


def run_facts(config: DictConfig, facts: Mapping[str, str], strict: bool = False) -> dict[str, Any]:
    """The values of ``facts`` (name: config key) in ``config``, as metrics.json, TensorBoard's
    hparams table and the analysis hold them: scalars, a list as one string of its items, a
    class path as its class name, a numeric precision as text (32 and "16-mixed" alike). A key
    the config lacks (one scheduler's setting, when another is chosen) gives None; ``strict``:
    a value that does not resolve is an error, not a None."""
    values = {}
    for name, key in facts.items():
        value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=strict)
        if isinstance(value, ListConfig):
            value = " ".join(str(item) for item in value)
        elif isinstance(value, DictConfig):
            value = str(OmegaConf.to_container(value))
        elif key.endswith("_target_") and value is not None:
            value = str(value).rsplit(".", 1)[-1]
        elif key.endswith("precision") and value is not None:
            value = str(value)
        values[name] = value
    return values


def write_json(path: Path, data: dict[str, Any]) -> Path:
    def clean(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    text = json.dumps({k: clean(v) for k, v in data.items()}, indent=2, default=str)
    atomic_write(path, text.encode())
    return path


def write_failure(output_dir: Path, error: BaseException, context: dict[str, Any]) -> Path:
    """Record a failed job where its results would have been, so a sweep summary shows it."""
    return write_json(
        output_dir / METRICS_FILE,
        {
            **context,
            "status": "failed",
            "error_type": type(error).__name__,
            "error": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        },
    )


def write_predictions(path: Path, outputs: EvaluationOutputs, images: pd.DataFrame) -> Path:
    """One row per image: file, label (1 = male), P(male); DDP padding removed."""
    rows = outputs.rows.numpy()
    table = pd.DataFrame(
        {
            "row": rows,
            "file_name": images["file_name"].to_numpy()[rows],
            "label": outputs.labels.numpy(),
            "p_male": outputs.p_male.numpy(),
        }
    ).drop_duplicates("row")  # DistributedSampler repeats images to even out ranks
    safe_frame(table.sort_values("row").drop(columns="row")).to_csv(path, index=False)
    return path


def log_confusion_matrix(logger: Any, confusion: torch.Tensor, tag: str, step: int) -> None:
    """Add the confusion matrix as a figure to a TensorBoard logger (others are skipped)."""
    experiment = getattr(logger, "experiment", None)
    if experiment is None or not hasattr(experiment, "add_figure"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(3.2, 3.0))
    axes.imshow(confusion.numpy(), cmap="Blues")
    for (i, j), count in zip(
        [(0, 0), (0, 1), (1, 0), (1, 1)], confusion.flatten().tolist(), strict=True
    ):
        axes.text(j, i, str(int(count)), ha="center", va="center")
    axes.set_xticks([0, 1], ["female", "male"])
    axes.set_yticks([0, 1], ["female", "male"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    figure.tight_layout()
    experiment.add_figure(tag, figure, global_step=step)
    plt.close(figure)
