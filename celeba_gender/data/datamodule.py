"""CelebADataModule: from a CelebA folder (or an image folder or CSV of another face set) to
train/val/test batches, with a data report."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from celeba_gender.data.balance import (
    effective_male_fraction,
    loss_class_weights,
    rebalance_rows,
    sampler_weights,
)
from celeba_gender.data.cache import (
    ImageTensorCache,
    PooledTensorCache,
    atomic_write,
    tensor_folder,
)
from celeba_gender.data.datasets import CachedImageDataset, PerSampleImageDataset, prebatched
from celeba_gender.data.errors import DataError
from celeba_gender.data.index import MISSING, CelebAIndex, build_index
from celeba_gender.data.sampling import (
    EpochSampler,
    ResumableDataLoader,
    ignore_stop_signals,
    seed_batch_streams,
)
from celeba_gender.data.sources import DEFAULT_CLASS_NAMES, OTHER_SOURCES
from celeba_gender.data.splits import PARTS, assign_split
from celeba_gender.data.transforms import (
    BatchTransform,
    crop_box,
    per_sample_transform,
    progressive_image_size,
    progressive_settings,
)
from celeba_gender.library_internals import batches_ready

DIGEST_BYTES = 20  # a sha1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOADERS = ("cached", "per_sample")
# The parts a Lightning stage reads: a training run fits, then tests the best weights, so an
# empty test part must stop it before the first epoch. (No validation part is allowed: the
# run then tests the last epoch's weights.)
PARTS_NEEDED = {"fit": ("train", "test"), "test": ("test",), "validate": ("val",)}


class CelebADataModule(L.LightningDataModule):
    """Reads a CelebA copy (official or study layout), or another face set as a folder per class
    or a CSV (``source``, ``class_names``, ``csv_columns``: see ``data/sources.py``), splits,
    rebalances and batches it.

    ``loader='cached'`` decodes every image once into a uint8 cache file and augments whole
    batches on their device in ``on_after_batch_transfer``; ``loader='per_sample'`` decodes
    and augments image by image in the workers. Both give the same evaluation tensors.
    """

    def __init__(
        self,
        root: str | Path,
        source: str = "auto",
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        csv_columns: Mapping[str, str | None] | None = None,
        split: str = "identity",
        split_seed: int = 42,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        final_fit: bool = False,
        seed_protocol_train_per_class: int = 1500,
        balance: str = "none",
        balance_seed: int = 0,
        shuffle_seed: int = 0,
        augmentation_seed: int = 0,
        image_size: int = 224,
        face_crop: Mapping[str, int] | None = None,
        augmentations: Sequence[Mapping[str, Any]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        loader: str = "cached",
        cache_dir: str | Path | None = None,
        cache_size: Sequence[int] = (218, 178),
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        scan_workers: int | None = None,
        summary_path: str | Path | None = None,
        progressive_resizing: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.source = source
        self.class_names = [str(name) for name in class_names]
        self.csv_columns = dict(csv_columns) if csv_columns else None
        self.split = split
        self.split_seed = split_seed
        self.split_fractions = [float(f) for f in split_fractions]
        self.final_fit = bool(final_fit)
        self.seed_protocol_train_per_class = seed_protocol_train_per_class
        self.balance = balance
        self.balance_seed = balance_seed
        self.shuffle_seed = shuffle_seed
        self.augmentation_seed = augmentation_seed
        self.image_size = image_size
        self.face_crop = dict(face_crop) if face_crop else None
        self.augmentations = [dict(a) for a in augmentations or []]
        self.mean, self.std = list(mean), list(std)
        self.loader = loader
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.cache_size = tuple(int(s) for s in cache_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.scan_workers = scan_workers
        self.summary_path = Path(summary_path) if summary_path else None
        try:  # a config passed the schema's check of it; a library caller hears the same rule
            self.progressive_resizing = progressive_settings(
                progressive_resizing, image_size, loader
            )
        except ValueError as problem:
            raise DataError(
                f"data.progressive_resizing={dict(progressive_resizing)}: {problem}."
            ) from None

        self.batch_transform = BatchTransform(
            image_size, self.face_crop, self.augmentations, self.mean, self.std, self.cache_size
        )
        crop_box(self.face_crop, *self.cache_size)  # a bad box fails now, not mid-epoch
        self.index: CelebAIndex | None = None
        self.cache: ImageTensorCache | None = None
        self.pooled_cache: PooledTensorCache | None = None
        self.parts: dict[str, np.ndarray] = {}
        self.train_rows: np.ndarray | None = None
        self.final_fit_images = 0
        self.datasets: dict[str, torch.utils.data.Dataset] = {}

    # ----------------------------------------------------------------- reading and caching
    def _ensure_index(self) -> CelebAIndex:
        if self.index is None:
            # The cached loader's first run fills its tensor cache during the file check.
            tensor_size = self.cache_size if self.loader == "cached" else None
            self.index = build_index(
                self.root,
                self.cache_dir,
                self.scan_workers,
                tensor_size,
                source=self.source,
                class_names=self.class_names,
                csv_columns=self.csv_columns,
            )
        return self.index

    def _ensure_cache(self) -> ImageTensorCache:
        if self.cache is None:
            index = self._ensure_index()
            image_dir = index.layout.image_dir
            start = time.perf_counter()
            self.cache, built = ImageTensorCache.build_or_open(
                [image_dir / name for name in index.cache_files],
                index.cache_content,
                tensor_folder(self.cache_dir),
                *self.cache_size,
                workers=self.scan_workers,
                used_by=image_dir.resolve(),
            )
            filled = index.report["scan"].get("tensor_cache", {})
            self.index.report["tensor_cache"] = {
                "file": str(self.cache.path),
                "shape": list(self.cache.shape),
                "bytes": self.cache.bytes,
                # Built by this run: now, or while the scan checked the files.
                "built_now": built or filled.get("file") == str(self.cache.path),
                "seconds": round(time.perf_counter() - start + filled.get("seconds", 0.0), 3),
            }
            if any(map(self.batch_transform.reads_pooled, self.training_sizes())):
                self._ensure_pooled_cache(image_dir.resolve())
        return self.cache

    def _ensure_pooled_cache(self, image_dir: Path) -> None:
        """The 2x2 block sums small training sizes read. Only a speed-up: where it cannot be
        written (a read-only or full cache disk), training reads the full frames."""
        try:
            self.pooled_cache = PooledTensorCache.of(self.cache, used_by=image_dir)
        except (DataError, OSError) as error:
            reason = error if isinstance(error, DataError) else f"{error.strerror or error}"
            warnings.warn(
                f"Training reads the full frames (the same batches, more work per batch): the "
                f"optional cache of their 2x2 block sums (half the full cache's size) could not "
                f"be written: {reason}",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self.index.report["tensor_cache"]["pooled_file"] = str(self.pooled_cache.path)

    def prepare_data(self) -> None:
        # Runs once per node before setup: the file check and the decode happen here, once.
        self._ensure_index()
        if self.loader == "cached":
            self._ensure_cache()

    # ----------------------------------------------------------------- splitting
    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self._build_datasets()
        self.check_parts(PARTS_NEEDED.get(stage or "", ()))

    def _build_datasets(self) -> None:
        index = self._ensure_index()
        images = index.images
        part = assign_split(
            images,
            self.split,
            seed=self.split_seed,
            fractions=self.split_fractions,
            train_per_class=self.seed_protocol_train_per_class,
            # Image folders and CSVs often name no person: those images split one by one
            # (the report says so); a CelebA copy without identity_CelebA.txt is refused.
            unknown_identity_alone=not self._is_celeba(),
        ).to_numpy()
        validation = part == "val"
        if self.final_fit:
            if not validation.any():
                raise DataError(
                    f"data.final_fit=true trains on the validation part too, but "
                    f"split={self.split} has none for {self.root}: the run would be an ordinary "
                    "one labelled a final fit. Use a split with a validation part (identity, "
                    "official) or data.final_fit=false."
                )
            # A chosen recipe's final model learns from the validation images too; the test
            # part is untouched, so it stays as disjoint from training as the split made it.
            part = np.where(part == "val", "train", part)
        self.parts = {name: np.flatnonzero(part == name) for name in PARTS}
        labels = images["male"].to_numpy(dtype=np.int64)
        if len(self.parts["train"]):
            chosen = rebalance_rows(labels[self.parts["train"]], self.balance, self.balance_seed)
            self.train_rows = self.parts["train"][chosen]
        else:
            self.train_rows = self.parts["train"]
        if self.final_fit:  # those balancing kept (undersampling drops, oversampling repeats)
            self.final_fit_images = int(validation[np.unique(self.train_rows)].sum())
        rows_by_part = {
            "train": self.train_rows,
            "val": self.parts["val"],
            "test": self.parts["test"],
        }

        if self.loader == "cached":
            cache = self._ensure_cache()
            cache_rows = images["cache_row"].to_numpy(dtype=np.int64)
            for name, rows in rows_by_part.items():
                self.datasets[name] = CachedImageDataset(
                    cache,
                    cache_rows[rows],
                    labels[rows],
                    rows,
                    pooled=self.pooled_cache if name == "train" else None,
                )
        else:
            paths = index.paths()
            for name, rows in rows_by_part.items():
                transform = per_sample_transform(
                    self.image_size,
                    self.face_crop,
                    self.augmentations,
                    self.mean,
                    self.std,
                    train=name == "train",
                )
                self.datasets[name] = PerSampleImageDataset(
                    [paths[r] for r in rows], labels[rows], rows, transform
                )
        if self.summary_path is not None and self._is_global_zero():
            self.write_summary(self.summary_path)  # before the check: it shows which is empty

    def empty_parts(self, needed: Sequence[str]) -> list[str]:
        """The parts of ``needed`` that hold no image (train: after balancing)."""
        if not self.datasets:
            self._build_datasets()
        return [name for name in needed if len(self.datasets[name]) == 0]

    def check_parts(self, needed: Sequence[str]) -> None:
        """Refuse, at setup, a split whose part a run needs is empty: found now, not after
        every training epoch."""
        empty = self.empty_parts(needed)
        if not empty:
            return
        sizes = ", ".join(f"{name} {len(self.datasets[name])}" for name in PARTS)
        fractions = f" {self.split_fractions}" if self.split == "identity" else ""
        if self.final_fit and "val" in empty:
            raise DataError(
                f"The val part is empty for {self.root}: data.final_fit=true trained on the "
                f"validation images ({self.final_fit_images}); a run needs {' and '.join(needed)}. "
                "Set data.final_fit=false to keep a validation part."
            )
        raise DataError(
            f"The {' and '.join(empty)} part{'s' if len(empty) > 1 else ''} of "
            f"split={self.split} {'are' if len(empty) > 1 else 'is'} empty for {self.root} "
            f"({sizes} images); a run needs {' and '.join(needed)}. Choose another data.split "
            f"or data.split_fractions{fractions}."
        )

    def _is_celeba(self) -> bool:
        return self._ensure_index().layout.name not in OTHER_SOURCES

    def _is_global_zero(self) -> bool:
        if self.trainer is not None:
            return self.trainer.is_global_zero
        # Set up before a trainer exists (a DDP child rank re-runs the job): the launcher's
        # environment says which process this is.
        from celeba_gender.ranks import global_rank

        return global_rank() == 0

    # ----------------------------------------------------------------- loaders
    def _loader(self, part: str, train: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        self.check_parts([part])
        dataset = self.datasets[part]
        common = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "collate_fn": prebatched if self.loader == "cached" else None,
            "worker_init_fn": ignore_stop_signals if self.num_workers > 0 else None,
        }
        if not train:
            # Its own generator: creating an evaluation iterator draws a worker seed, which
            # must not move the global stream that augmentation and dropout draw from.
            return DataLoader(
                dataset,
                batch_size=self.eval_batch_size,
                shuffle=False,
                generator=torch.Generator().manual_seed(self.shuffle_seed),
                **common,
            )
        # The order of each epoch comes from (shuffle_seed, epoch) alone, so a resumed run
        # replays it exactly; weighted_sampler draws with replacement the same way.
        world_size, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        )
        weights = None
        if self.balance == "weighted_sampler":
            weights = torch.as_tensor(sampler_weights(np.asarray(dataset.labels)))
        sampler = EpochSampler(len(dataset), self.shuffle_seed, world_size, rank, weights)
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            before_epoch=self._choose_training_cache,
            # A last batch of one image breaks BatchNorm in training.
            drop_last=len(dataset) > self.batch_size,
            # Workers started anew each epoch, with seeds from (seed, epoch, rank).
            **{**common, "persistent_workers": False},
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        """The validation images again, for ``trainer.predict``: a run saves the evaluated
        checkpoint's validation predictions (threshold tuning) without logging metrics."""
        return self._loader("val", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Seed a training batch's random draws; cached loader: crop, resize, augment and
        normalise the batch on its device."""
        train = bool(self.trainer is not None and self.trainer.training)
        if train:
            # Augmentation here, mixup and dropout in the step draw from (seed, epoch, rank,
            # batch): ranks differ, and a run resumed at any step draws what it drew before.
            # ``ready`` counts this epoch's earlier batches, restored on resume.
            seed_batch_streams(
                self.augmentation_seed,
                self.trainer.current_epoch,
                self.trainer.global_rank,
                batches_ready(self.trainer),
            )
        if self.loader != "cached":
            return batch
        images, labels, rows = batch
        size = self.training_image_size() if train else None
        return self.transform_batch(images, train, size), labels, rows

    def _choose_training_cache(self) -> None:
        """As a training epoch starts: its batches come from the pooled cache (a quarter of the
        pixels, the same images) when their size allows it."""
        dataset = self.datasets["train"]
        if isinstance(dataset, CachedImageDataset) and dataset.pooled is not None:
            dataset.read_pooled = self.batch_transform.reads_pooled(self.training_image_size())

    def training_sizes(self) -> list[int]:
        """Every side training batches may have: ``image_size``, and under progressive
        resizing each size its ramp can take."""
        if not self.progressive_resizing:
            return [self.image_size]
        start = self.progressive_resizing["start_size"]
        multiple = self.progressive_resizing["multiple"]
        between = range(start // multiple * multiple + multiple, self.image_size, multiple)
        if self.progressive_resizing["ramp"][0] == self.progressive_resizing["ramp"][1]:
            between = range(0)  # a step, no ramp
        return sorted({start, *between, self.image_size})

    def training_image_size(self) -> int:
        """The side of this epoch's training batches: ``image_size``, or less early in training
        under ``progressive_resizing``."""
        if not self.progressive_resizing or self.trainer is None:
            return self.image_size
        # The schema makes sure a run has a number of epochs to ramp over.
        return progressive_image_size(
            self.trainer.current_epoch,
            int(self.trainer.max_epochs),
            self.image_size,
            **self.progressive_resizing,
        )

    def transform_batch(
        self, images: torch.Tensor, train: bool, size: int | None = None
    ) -> torch.Tensor:
        self.batch_transform.to(images.device)
        return self.batch_transform(images, train, size)

    # ----------------------------------------------------------------- facts
    def eval_transform_settings(self) -> dict[str, Any]:
        """What evaluation needs to see images as this module shows them (stored in checkpoints)."""
        return {
            "image_size": self.image_size,
            "face_crop": self.face_crop,
            "mean": self.mean,
            "std": self.std,
            "cache_size": list(self.cache_size),
        }

    def state_dict(self) -> dict[str, Any]:
        """Lightning saves this in every checkpoint, weights-only ones too: what the model
        trained on, so that testing it on another split or copy can say which of its test
        images it has already seen (``images_seen_in_training``)."""
        if not self.datasets:
            return {}
        rows = np.unique(self.train_rows)
        return {
            "trained_on": {
                "images": len(rows),
                # Each image's content (sha1 of its file's bytes), 20 bytes each, sorted: a
                # renamed or moved copy of an image is still recognised; a re-encoded one not.
                "content_sha1": b"".join(sorted(self._content_digests(rows))),
                "final_fit": self.final_fit,
                "split": self.split,
                "split_seed": self.split_seed,
                "root": str(self.root),
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore on resume: the same config rebuilds the same parts."""

    def images_seen_in_training(self, trained_on: Mapping[str, Any], part: str = "test") -> int:
        """How many images of ``part`` have the content of an image in ``trained_on`` (a
        checkpoint's ``state_dict()['trained_on']``)."""
        self.setup()
        packed = bytes(trained_on["content_sha1"])
        trained = {packed[i : i + DIGEST_BYTES] for i in range(0, len(packed), DIGEST_BYTES)}
        return sum(digest in trained for digest in self._content_digests(self.parts[part]))

    def _content_digests(self, rows: np.ndarray) -> list[bytes]:
        fingerprints = self._ensure_index().images["fingerprint"].to_numpy()[rows]
        # fingerprint: name:size:sha1 (index.py); a name may hold ':', the sha1 cannot.
        return [bytes.fromhex(fingerprint.rsplit(":", 1)[1]) for fingerprint in fingerprints]

    def attribute_names(self, requested: Sequence[str]) -> list[str]:
        """``requested`` attribute names checked against the annotation file; ``["all"]``
        stands for every attribute but the label (multi-task training targets)."""
        available = self._ensure_index().attributes
        if requested and not self._is_celeba():
            raise DataError(
                f"attribute_targets={list(requested)} needs CelebA's attribute file, but "
                f"{self.index.layout.root} is a data.source={self.index.layout.name} copy "
                "(labels only). "
                "Use attribute_targets=[]."
            )
        if list(requested) == ["all"]:
            return list(available)
        unknown = [name for name in requested if name not in available]
        if unknown:
            raise DataError(
                f"Unknown attribute_targets {', '.join(unknown)}: "
                f"{self.index.layout.attributes_file} has {', '.join(available)} (or use [all])."
            )
        return list(requested)

    def attribute_table(self, names: Sequence[str]) -> torch.Tensor:
        """The 0/1 values of ``names`` for every image, one row per index row (the ``rows``
        of each batch), as float32."""
        columns = self.attribute_names(names)
        return torch.as_tensor(self.index.images[columns].to_numpy(dtype=np.float32))

    @property
    def class_weights(self) -> dict[str, Any] | None:
        """The loss' class weights from the training labels with the ``loss_weights`` balance;
        None (an unweighted loss) otherwise. The one place that decides it."""
        if self.train_rows is None:
            self.setup()
        if self.balance != "loss_weights":
            return None
        labels = self.index.images["male"].to_numpy(dtype=np.int64)[self.train_rows]
        return loss_class_weights(labels)

    def summary(self) -> dict[str, Any]:
        """The data report: what was read, dropped and split, and the balance applied."""
        if not self.parts:
            self.setup()
        images = self.index.images
        identities = {}
        parts = {}
        for name, rows in self.parts.items():
            part = images.iloc[rows]
            known = part.loc[part["identity"] != MISSING, "identity"]
            identities[name] = set(known)
            parts[name] = {
                "images": int(len(part)),
                "male": int(part["male"].sum()),
                "female": int(len(part) - part["male"].sum()),
                "identities": len(identities[name]) if len(known) else None,
            }
        shared = {
            f"{a}-{b}": len(identities[a] & identities[b])
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
        }
        disjoint, identity_note = self._identity_disjointness(shared)
        train_labels = images["male"].to_numpy(dtype=np.int64)[self.train_rows]
        balance: dict[str, Any] = {
            "method": self.balance,
            "seed": self.balance_seed,
            "train_images_per_epoch": int(len(self.train_rows)),
            "male_fraction_before": float(images["male"].to_numpy()[self.parts["train"]].mean())
            if len(self.parts["train"])
            else None,
            "effective_male_fraction": effective_male_fraction(train_labels, self.balance)
            if len(train_labels)
            else None,
        }
        weights = self.class_weights
        if weights is not None:
            balance["loss_class_weights"] = weights
        return {
            **self.index.report,
            "split": {
                "method": self.split,
                "seed": self.split_seed,
                "fractions": self.split_fractions if self.split == "identity" else None,
                "train_per_class": self.seed_protocol_train_per_class
                if self.split == "seed_protocol"
                else None,
                # The validation images that trained instead (data.final_fit): no part left to
                # choose a checkpoint by, so the run tests its last epoch.
                "final_fit": self.final_fit,
                "validation_images_trained_on": self.final_fit_images,
            },
            "parts": parts,
            "shared_identities": shared,
            "identity_disjoint": disjoint,
            "identity_note": identity_note,
            "balance": balance,
            "loader": self.loader,
            "image_size": self.image_size,
            "face_crop": self.face_crop,
            "augmentations": self.augmentations,
            "progressive_resizing": self.progressive_resizing,
        }

    def _identity_disjointness(self, shared: Mapping[str, int]) -> tuple[bool | None, str | None]:
        """Whether no person is in two parts (None: fewer than two parts hold images), and a
        sentence when that cannot be known for every image."""
        images = self.index.images
        if sum(len(rows) > 0 for rows in self.parts.values()) < 2:
            return None, None
        unknown = int((images["identity"] == MISSING).sum())
        if not unknown:
            return not any(shared.values()), None
        where = {
            "image_folder": "person folders (<class>/<person>/image)",
            "csv": "an identity column (data.csv_columns.identity)",
        }.get(self.index.layout.name, "an identity file (identity_CelebA.txt)")
        if self.split != "identity":
            # Only split=identity groups by person: the known ones are not kept apart either.
            return False, (
                f"{unknown} of {len(images)} images have no identity, and split={self.split} "
                "does not keep persons apart (only split=identity does, given "
                f"{where}): shared_identities counts known identities only."
            )
        return False, (
            f"{unknown} of {len(images)} images have no identity: the split keeps known "
            "identities apart but cannot keep unknown ones apart; give "
            f"{where} for an identity-disjoint split."
        )

    def write_summary(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.summary(), indent=2, default=str).encode())
        return path
