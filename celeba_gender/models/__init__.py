"""Models: the backbone factory, the loss heads, and the LightningModule."""

from celeba_gender.models.backbones import (
    PretrainedWeightsUnavailable,
    create_backbone,
    model_names,
    pretrained_weights_file,
)
from celeba_gender.models.checkpoints import load_classifier
from celeba_gender.models.heads import BCEHead, CEHead, create_head
from celeba_gender.models.module import GenderClassifier

__all__ = [
    "BCEHead",
    "CEHead",
    "GenderClassifier",
    "PretrainedWeightsUnavailable",
    "create_backbone",
    "create_head",
    "load_classifier",
    "model_names",
    "pretrained_weights_file",
]
