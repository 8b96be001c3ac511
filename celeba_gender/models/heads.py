"""Loss heads: how logits become a loss and a probability of 'male' (the positive class).

The LightningModule only calls ``loss`` and ``male_probability``, so every metric has the
same meaning whichever head trained the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LossHead(nn.Module):
    """A loss strategy: ``num_outputs`` logits per image, a loss, and P(male)."""

    num_outputs: int

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def male_probability(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_losses(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's loss and its weight in the mean: ``loss`` of a set of images is
        ``losses.sum() / weights.sum()``, so losses kept per image average exactly over any
        subset (evaluation de-duplicates DDP's repeated images before averaging)."""
        raise NotImplementedError


class BCEHead(LossHead):
    """One logit; BCEWithLogitsLoss, optionally with a positive-class weight and label
    smoothing (training targets eps/2 and 1 - eps/2, as CrossEntropyLoss smooths two classes)."""

    num_outputs = 1

    def __init__(self, pos_weight: float | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        weight = torch.tensor([float(pos_weight)]) if pos_weight is not None else None
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=weight)
        self.label_smoothing = float(label_smoothing)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels.to(logits.dtype)
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        return self.criterion(logits.squeeze(1), targets)

    def male_probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.squeeze(1).float())

    def image_losses(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # BCEWithLogitsLoss's mean divides by the number of images, whatever pos_weight.
        losses = nn.functional.binary_cross_entropy_with_logits(
            logits.squeeze(1).float(),
            labels.float(),
            pos_weight=None
            if self.criterion.pos_weight is None
            else self.criterion.pos_weight.float(),
            reduction="none",
        )
        return losses, torch.ones_like(losses)


class CEHead(LossHead):
    """Two logits (female, male); CrossEntropyLoss, optionally with class weights and label
    smoothing."""

    num_outputs = 2

    def __init__(
        self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        weight = torch.tensor([float(w) for w in class_weights]) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=float(label_smoothing))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, labels.long())

    def male_probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1)[:, 1]

    def image_losses(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # CrossEntropyLoss's mean with class weights divides by the weights of the labels.
        weight = None if self.criterion.weight is None else self.criterion.weight.float()
        losses = nn.functional.cross_entropy(
            logits.float(), labels.long(), weight=weight, reduction="none"
        )
        weights = weight[labels.long()] if weight is not None else torch.ones_like(losses)
        return losses, weights.to(losses.dtype)


HEADS = {"bce": BCEHead, "ce": CEHead}


def create_head(
    name: str, class_weights: dict | None = None, label_smoothing: float = 0.0
) -> LossHead:
    """``name`` 'bce' or 'ce'; ``class_weights`` from the data module (balance=loss_weights);
    ``label_smoothing`` applies to the training loss only (evaluation losses are plain)."""
    if name not in HEADS:
        raise ValueError(f"Unknown loss head {name!r}; choose one of {', '.join(HEADS)}.")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1).")
    if name == "bce":
        return BCEHead((class_weights or {}).get("pos_weight"), label_smoothing)
    return CEHead((class_weights or {}).get("class_weights"), label_smoothing)
