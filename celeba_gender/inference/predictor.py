"""P(male) of aligned 178x218 face crops, from a checkpoint or its ONNX export.

Crops go through the run's own evaluation transform (face box, size, normalisation: stored in
the checkpoint's hyperparameters, and in the ONNX file's metadata), so a photo is seen as the
test images were.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from celeba_gender.data.transforms import per_sample_transform
from celeba_gender.models import GenderClassifier
from celeba_gender.models.checkpoints import (
    CheckpointError,
    check_eval_transform,
    check_model_file,
    is_onnx,
    load_classifier,
    open_onnx,
)

EVAL_TRANSFORM_KEY = "celeba_gender.eval_transform"  # ONNX metadata: the transform, as JSON
BACKBONE_KEY = "celeba_gender.backbone"


class GenderPredictor:
    """``predict(crops)`` -> P(male) per crop, batch by batch."""

    def __init__(self, eval_transform: dict, run_batch, backbone: str, batch_size: int = 32):
        self.eval_transform = dict(eval_transform)
        self.backbone = backbone
        self.batch_size = batch_size
        self._run_batch = run_batch
        self.model: GenderClassifier | None = None  # a checkpoint's (heat maps need it)
        self._transform = per_sample_transform(
            self.eval_transform["image_size"],
            self.eval_transform.get("face_crop"),
            None,
            self.eval_transform["mean"],
            self.eval_transform["std"],
            train=False,
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "cpu", batch_size: int = 32
    ) -> GenderPredictor:
        model = load_model(path).to(device).eval()

        @torch.inference_mode()
        def run_batch(images: torch.Tensor) -> np.ndarray:
            return model(images.to(device)).float().cpu().numpy()

        predictor = cls(
            eval_transform_of(model, path), run_batch, model.hparams.backbone, batch_size
        )
        predictor.model = model
        return predictor

    @classmethod
    def from_onnx(cls, path: str | Path, batch_size: int = 32) -> GenderPredictor:
        session, metadata = open_onnx(path)
        if EVAL_TRANSFORM_KEY not in metadata:
            raise CheckpointError(
                path,
                f"an ONNX model without {EVAL_TRANSFORM_KEY} metadata: export it with "
                "`python -m celeba_gender.inference.export` so predict knows its transform",
            )
        try:
            eval_transform = json.loads(metadata[EVAL_TRANSFORM_KEY])
        except ValueError:
            raise CheckpointError(path, f"its {EVAL_TRANSFORM_KEY} metadata is not JSON") from None
        eval_transform = check_eval_transform(path, eval_transform)
        input_name = session.get_inputs()[0].name

        def run_batch(images: torch.Tensor) -> np.ndarray:
            return session.run(None, {input_name: images.numpy()})[0]

        return cls(
            eval_transform,
            run_batch,
            metadata.get(BACKBONE_KEY, "?"),
            batch_size,
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", batch_size: int = 32) -> GenderPredictor:
        """A checkpoint (.ckpt) or an exported ONNX model (.onnx)."""
        path = check_model_file(path)
        if is_onnx(path):
            return cls.from_onnx(path, batch_size)
        return cls.from_checkpoint(path, device, batch_size)

    def tensors(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """The model's input batch for these crops."""
        return torch.stack([self._transform(crop) for crop in crops])

    def predict(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """P(male) of each crop; ValueError when the model does not give one number per crop
        (an ONNX file of another model), so that the caller can say so in the photos' rows."""
        probabilities = []
        for start in range(0, len(crops), self.batch_size):
            batch = crops[start : start + self.batch_size]
            values = np.asarray(self._run_batch(self.tensors(batch)), dtype=np.float32)
            if values.size != len(batch) or values.ndim > 1 and values.shape[0] != len(batch):
                raise ValueError(
                    f"the model gave output of shape {values.shape} for {len(batch)} faces, "
                    "not one P(male) per face (a model of another task?)"
                )
            if not np.isfinite(values).all():  # NaN is no probability (nor valid JSON)
                raise ValueError(f"the model gave non-finite P(male) values: {values.ravel()}")
            probabilities.append(values.reshape(-1))
        return np.concatenate(probabilities) if probabilities else np.zeros(0, dtype=np.float32)


def load_model(path: str | Path) -> GenderClassifier:
    """A checkpoint's classifier (safely: weights only), or one CheckpointError for any bad
    file (the loader eval, predict and export share)."""
    return load_classifier(path)


def eval_transform_of(model: GenderClassifier, path: str | Path) -> dict:
    """The crop, size and normalisation the model was trained with (saved in its hparams)."""
    settings = model.hparams.get("eval_transform")
    if not settings:
        raise CheckpointError(path, "it records no eval_transform (it predates them; re-train it)")
    return settings
