"""Inference: reading photos, finding and aligning faces, P(male) from a checkpoint or ONNX,
annotated pictures (``python predict.py ckpt_path=... input=...``)."""

from celeba_gender.inference.faces import Face, FaceAligner
from celeba_gender.inference.photos import PhotoError, expand_inputs, load_photo
from celeba_gender.inference.predictor import GenderPredictor

__all__ = ["Face", "FaceAligner", "GenderPredictor", "PhotoError", "expand_inputs", "load_photo"]
