"""What an evaluation epoch (validation, test, or a prediction pass over the validation part)
hands on: every image's prediction once, across all ranks, as named columns, and its
confusion matrix. The LightningModule fills one per stage; the run writes its files from it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import binary_confusion_matrix

# The per-image columns each rank keeps during an epoch, stacked in this order into one tensor
# (all_gather moves one tensor), then named again here.
COLUMNS = ("row", "label", "p_male", "loss", "weight")


def stack_batch(
    rows: torch.Tensor,
    labels: torch.Tensor,
    p_male: torch.Tensor,
    losses: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """One batch's per-image values in ``COLUMNS`` order."""
    return torch.stack([rows.float(), labels.float(), p_male, losses, weights], 1)


@dataclass(frozen=True)
class EvaluationOutputs:
    """One stage's outputs: each image once, ordered by its row in the data index."""

    rows: torch.Tensor  # the image's row in the data module's index (long)
    labels: torch.Tensor  # 1 = male (long)
    p_male: torch.Tensor
    losses: torch.Tensor  # each image's loss, times its weight
    weights: torch.Tensor  # each image's loss weight

    @classmethod
    def from_stacked(cls, stacked: torch.Tensor) -> EvaluationOutputs:
        columns = dict(zip(COLUMNS, stacked.unbind(1), strict=True))
        return cls(
            rows=columns["row"].long(),
            labels=columns["label"].long(),
            p_male=columns["p_male"],
            losses=columns["loss"],
            weights=columns["weight"],
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def loss(self) -> torch.Tensor:
        """The epoch's loss: weighted mean over its images."""
        return self.losses.sum() / self.weights.sum()

    @property
    def confusion(self) -> torch.Tensor:
        """[[TN, FP], [FN, TP]], male the positive class."""
        return binary_confusion_matrix(self.p_male, self.labels).cpu()
