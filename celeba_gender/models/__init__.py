"""Models: the backbone factory, the loss heads, and the LightningModule."""

from celeba_gender.models.backbones import (
    BACKBONES,
    FAMILIES,
    PretrainedWeightsUnavailable,
    create_backbone,
    pretrained_weights_file,
)
from celeba_gender.models.heads import BCEHead, CEHead, create_head
from celeba_gender.models.module import GenderClassifier, load_classifier

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "BCEHead",
    "CEHead",
    "GenderClassifier",
    "PretrainedWeightsUnavailable",
    "create_backbone",
    "create_head",
    "load_classifier",
    "pretrained_weights_file",
]
