"""GenderClassifier: one LightningModule for every backbone x treatment.

Batches are ``(images, labels, rows)`` from ``CelebADataModule``; ``rows`` tie predictions back
to image files. Validation and test metrics are computed once per epoch from every rank's
predictions, gathered and de-duplicated by row: under DDP the evaluation sampler repeats up to
world_size - 1 images to even out the ranks, and those must count once, as they do in the
predictions CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import BinaryAccuracy

from celeba_gender.metrics import binary_metrics
from celeba_gender.models.backbones import (
    aux_head_modules,
    create_backbone,
    split_outputs,
)
from celeba_gender.models.evaluation import COLUMNS, EvaluationOutputs, stack_batch
from celeba_gender.models.heads import create_head

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class GenderClassifier(L.LightningModule):
    def __init__(
        self,
        backbone: str,
        loss: str,
        pretrained: bool,
        backbone_kwargs: Mapping[str, Any] | None = None,
        scratch_kwargs: Mapping[str, Any] | None = None,
        aux_loss_weight: float = 0.0,
        class_weights: dict | None = None,
        allow_download: bool = True,
        channels_last: bool = False,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: Mapping[str, Any] | None = None,
        eval_transform: dict | None = None,
        flip_tta: bool = False,
        mixup_alpha: float = 0.0,
        attribute_targets: Sequence[str] = (),
        attribute_loss_weight: float = 1.0,
        cam_target_layer: str | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        """Built from conf/config.yaml's ``module`` node (``_target_``): the backbone's settings
        come from conf/model/, the loss from conf/treatment/, ``optimizer`` (a partial taking
        the parameters) from conf/optimizer/, ``lr_scheduler`` (Lightning's scheduler config
        whose ``scheduler`` is a partial taking the optimizer) from conf/scheduler/."""
        super().__init__()
        # Plain values only: checkpoints then load with torch.load(weights_only=True).
        # ``eval_transform`` (crop, size, normalisation) lets eval and predict see images as
        # training did. ``logger=False``: a run logs them itself, with its facts (training/
        # loggers.log_run_facts), before fit; Lightning's own logging of them alone at the start
        # of fit would clash with those in MLflow.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"], logger=False)
        self.head = create_head(loss, class_weights, label_smoothing)
        # What a loaded checkpoint's model trained on (models.checkpoints.trained_on), if known.
        self.trained_on: dict[str, Any] | None = None
        # Multi-task: the classifier also predicts these CelebA attributes in training, one
        # extra logit each after the loss head's; evaluation and inference read only P(male).
        self.attribute_targets = list(attribute_targets)
        self.net = create_backbone(
            backbone,
            self.head.num_outputs + len(self.attribute_targets),
            pretrained=pretrained,
            aux_heads=aux_loss_weight > 0,
            allow_download=allow_download,
            aux_outputs=self.head.num_outputs,  # auxiliary heads learn gender only
            kwargs=backbone_kwargs,
            scratch_kwargs=scratch_kwargs,
        )
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if cam_target_layer is not None:  # heat maps' layer (saved in hparams): a typo fails now
            try:
                self.net.get_submodule(str(cam_target_layer))
            except AttributeError:
                raise ValueError(
                    f"model.cam_target_layer={cam_target_layer!r} is not a layer of {backbone} "
                    f"(its top-level layers: {', '.join(n for n, _ in self.net.named_children())})"
                ) from None
        # Attribute values (0/1) of every image, by data-module row: set_attribute_table.
        self.register_buffer(
            "attribute_table", torch.zeros(0, len(self.attribute_targets)), persistent=False
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler = dict(lr_scheduler or {})
        self.train_acc = BinaryAccuracy()
        # Every image this rank saw in the current val / test / predict epoch (evaluation.COLUMNS);
        # at the epoch's end, all ranks' images without repeats (``evaluation(stage)``): the
        # metrics, and the run's test_predictions.csv / val_predictions.csv.
        self._predictions: dict[str, list[torch.Tensor]] = {"val": [], "test": [], "predict": []}
        self._outputs: dict[str, EvaluationOutputs] = {}

    def set_attribute_table(self, table: torch.Tensor) -> None:
        """The ``attribute_targets`` values (0/1) of every image, one row per data-module row
        (``CelebADataModule.attribute_table``); training looks batches up in it by row."""
        if table.ndim != 2 or table.shape[1] != len(self.attribute_targets):
            raise ValueError(
                f"Expected a table of {len(self.attribute_targets)} attribute columns "
                f"({', '.join(self.attribute_targets)}), got shape {tuple(table.shape)}."
            )
        self.attribute_table = table.float().to(self.attribute_table.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """P(male) of each image (evaluation; auxiliary heads and attribute logits unused)."""
        return self._predict(images)[1]

    def _logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """The loss head's logits, the attribute logits, and the auxiliary heads' logits
        (GoogLeNet, Inception-v3 in training)."""
        main, aux = split_outputs(self.net(self._layout(images)))
        width = self.head.num_outputs
        return main[:, :width], main[:, width:], aux

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Main logits, and P(male): with ``flip_tta`` averaged with the mirror image's."""
        main = self._logits(images)[0]
        probability = self.head.male_probability(main)
        if self.hparams.flip_tta:
            mirrored = self._logits(images.flip(-1))[0]
            probability = (probability + self.head.male_probability(mirrored)) / 2
        return main, probability

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, labels, rows = batch
        mix, partners = 1.0, None
        if self.hparams.mixup_alpha > 0:  # mixup (Zhang et al. 2018): blend pairs of images
            mix = float(
                torch.distributions.Beta(
                    self.hparams.mixup_alpha, self.hparams.mixup_alpha
                ).sample()
            )
            partners = torch.randperm(len(images), device=images.device)
            images = mix * images + (1 - mix) * images[partners]
        main, attribute_logits, aux = self._logits(images)

        def blended(loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            # Mixed images: the same blend of the two images' losses.
            loss = loss_fn(logits, targets)
            if partners is not None:
                loss = mix * loss + (1 - mix) * loss_fn(logits, targets[partners])
            return loss

        loss = blended(self.head.loss, main, labels)
        if aux:  # GoogLeNet (two heads) and Inception-v3 (one): the papers' weighted sum
            aux_loss = sum(blended(self.head.loss, a, labels) for a in aux)
            loss = loss + self.hparams.aux_loss_weight * aux_loss
        if self.attribute_targets:
            if len(self.attribute_table) == 0:
                raise RuntimeError(
                    "attribute_targets are set but no attribute table: call "
                    "set_attribute_table(datamodule.attribute_table(names)) before training."
                )
            targets = self.attribute_table[rows.to(self.attribute_table.device)]
            attribute_loss = blended(
                nn.functional.binary_cross_entropy_with_logits, attribute_logits, targets
            )
            self.log(
                "train/attribute_loss", attribute_loss, on_step=False, on_epoch=True, sync_dist=True
            )
            loss = loss + self.hparams.attribute_loss_weight * attribute_loss
        # update, not forward: only the epoch's accuracy is logged, so no per-step compute.
        self.train_acc.update(self.head.male_probability(main.detach()), labels)
        # Each step's loss as this rank saw it (no all-reduce per step); the epoch's mean over
        # every rank's batches.
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple, stage: str) -> torch.Tensor:
        """Keep the batch's predictions and per-image losses for the epoch's metrics; returns
        P(male) of the batch."""
        images, labels, rows = batch
        main, probability = self._predict(images)
        losses, weights = self.head.image_losses(main, labels)
        self._predictions[stage].append(stack_batch(rows, labels, probability, losses, weights))
        return probability

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """P(male) of a labelled batch, kept like test predictions but with no metric or log
        (the run uses it for the evaluated checkpoint's validation predictions)."""
        return self._evaluate(batch, "predict")

    def on_validation_epoch_start(self) -> None:
        self._predictions["val"] = []

    def on_test_epoch_start(self) -> None:
        self._predictions["test"] = []

    def on_predict_epoch_start(self) -> None:
        self._predictions["predict"] = []

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def on_predict_epoch_end(self) -> None:
        self._gather_predictions("predict")

    def _log_epoch_metrics(self, stage: str) -> None:
        """Metrics, loss and confusion matrix of every image of the epoch, each counted once."""
        outputs = self._gather_predictions(stage)
        if len(outputs) == 0:
            return
        values = binary_metrics(outputs.p_male.to(self.device), outputs.labels.to(self.device))
        values["loss"] = outputs.loss.to(self.device)
        # Every rank holds the same gathered rows, hence the same values: the max over ranks
        # keeps them exact (a mean of equal floats may not be).
        self.log_dict(
            {f"{stage}/{name}": value for name, value in values.items()},
            sync_dist=True,
            reduce_fx="max",
        )

    def evaluation(self, stage: str) -> EvaluationOutputs:
        """The last ``stage`` epoch's outputs ("val", "test", or "predict": a prediction pass
        over labelled images), every rank's images once."""
        if stage not in self._outputs:
            raise RuntimeError(f"no {stage} epoch has ended on this model yet")
        return self._outputs[stage]

    def _gather_predictions(self, stage: str) -> EvaluationOutputs:
        """Every rank's prediction rows of ``stage``, each image once, in row order."""
        parts = self._predictions[stage]
        width = len(COLUMNS)
        local = torch.cat(parts) if parts else torch.zeros(0, width, device=self.device)
        local = local.to(self.device)
        # all_gather needs one shape on every rank, but prediction shards are uneven (predict
        # does not pad them): pad to the largest with row index -1, then drop those rows.
        largest = int(self.all_gather(torch.tensor(len(local), device=self.device)).max())
        padded = torch.full((largest, width), -1.0, device=self.device)
        padded[: len(local)] = local
        # all_gather adds a leading world-size dimension under DDP only.
        gathered = self.all_gather(padded).reshape(-1, width).cpu()
        gathered = gathered[gathered[:, 0] >= 0]
        # The evaluation sampler repeats images to give every rank as many: keep each row once.
        order = torch.argsort(gathered[:, 0], stable=True)
        gathered = gathered[order]
        first = torch.ones(len(gathered), dtype=torch.bool)
        first[1:] = gathered[1:, 0] != gathered[:-1, 0]
        self._outputs[stage] = EvaluationOutputs.from_stacked(gathered[first])
        return self._outputs[stage]

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("GenderClassifier needs an optimizer factory to train.")
        optimizer = self.optimizer_factory(params=self.parameters())
        if not self.lr_scheduler.get("scheduler"):
            return optimizer
        factory = self.lr_scheduler["scheduler"]
        extra = {}
        if (
            "total_steps" in getattr(factory, "keywords", {})
            and factory.keywords["total_steps"] is None
        ):
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)  # one-cycle
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                **self.lr_scheduler,
                "scheduler": factory(optimizer=optimizer, **extra),
            },
        }

    def parameter_count(self, inference: bool = True) -> int:
        """Parameters of the network; with ``inference``, without the training-only auxiliary
        heads (GoogLeNet, Inception-v3), i.e. those a deployed model holds."""
        skipped = set()
        if inference:
            skipped = {
                id(p)
                for name in aux_head_modules(self.net)
                for p in self.net.get_submodule(name).parameters()
            }
        return sum(p.numel() for p in self.net.parameters() if id(p) not in skipped)


__all__ = ["GenderClassifier"]
