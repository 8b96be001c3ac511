"""The DataModule end to end: both loaders, the tensor cache, the report, the CLI, the config."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
import sys
from pathlib import Path

import forked_python
import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from celeba_gender.data import CelebADataModule, DataError, build_index
from celeba_gender.data.cache import ImageTensorCache, decode_rgb, tensor_folder
from celeba_gender.data.transforms import BatchTransform

REPO = Path(__file__).resolve().parents[1]
FACE = {"top": 30, "left": 0, "height": 178, "width": 178}
AUGMENT = [{"name": "horizontal_flip"}, {"name": "rotation", "degrees": 20}]


def _module(root, cache, **overrides) -> CelebADataModule:
    options = dict(
        root=root,
        split="identity",
        split_fractions=(0.6, 0.2, 0.2),
        image_size=48,
        face_crop=FACE,
        augmentations=AUGMENT,
        cache_dir=cache,
        batch_size=8,
        num_workers=0,
    )
    return CelebADataModule(**{**options, **overrides})


def test_cached_and_per_sample_loaders_give_the_same_evaluation_batches(defective_copy, tmp_path):
    cached = _module(defective_copy.root, tmp_path, loader="cached")
    per_sample = _module(defective_copy.root, tmp_path, loader="per_sample")
    cached.prepare_data()
    cached.setup("fit")
    per_sample.setup("fit")
    for name in ("train", "val", "test"):
        assert np.array_equal(cached.parts[name], per_sample.parts[name])
    images, labels, rows = next(iter(cached.val_dataloader()))
    assert images.dtype == torch.uint8  # decoded once, transformed on the batch's device
    images = cached.on_after_batch_transfer((images, labels, rows), 0)[0]
    expected, expected_labels, expected_rows = next(iter(per_sample.val_dataloader()))
    assert torch.equal(rows, expected_rows) and torch.equal(labels, expected_labels)
    assert torch.allclose(images, expected, atol=1e-4)
    truth = cached.index.images["male"].to_numpy()[rows.numpy()]
    assert np.array_equal(labels.numpy(), truth)


def test_tensor_cache_holds_the_decoded_images_and_is_reused(defective_copy, tmp_path):
    first = _module(defective_copy.root, tmp_path)
    first.prepare_data()
    assert first.index.report["tensor_cache"]["built_now"] is True
    second = _module(defective_copy.root, tmp_path)
    second.prepare_data()
    assert second.index.report["tensor_cache"]["built_now"] is False
    paths = second.index.paths()
    cache_rows = second.index.images["cache_row"].to_numpy()  # a row per scanned entry
    for row in (0, len(paths) // 2, len(paths) - 1):  # grayscale and CMYK files included
        expected = decode_rgb(paths[row], 218, 178)
        assert np.array_equal(second.cache.gather([cache_rows[row]])[0], expected)
    assert second.index.images["mode"].isin(["L", "CMYK"]).sum() == 2


def _build_cache(args) -> bool:
    root, cache = args
    index = build_index(root, cache)
    _, built = ImageTensorCache.build_or_open(
        [index.layout.image_dir / name for name in index.cache_files],
        index.cache_content,
        tensor_folder(cache),
        218,
        178,
    )
    return built


def test_concurrent_jobs_build_the_tensor_cache_once(defective_copy, tmp_path):
    """Sweep jobs or DDP ranks starting together: one decodes, the others wait and reuse."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        built = pool.map(_build_cache, [(defective_copy.root, tmp_path)] * 2)
    assert sorted(built) == [False, True]


def test_balance_methods_reach_the_training_loader(subset_root, cache_dir):
    for balance, expected in (("undersample", 0.5), ("oversample", 0.5), ("none", None)):
        module = _module(subset_root, cache_dir, balance=balance)
        module.setup("fit")
        labels = module.datasets["train"].labels.numpy()
        fraction = labels.mean()
        summary = module.summary()["balance"]
        assert summary["effective_male_fraction"] == pytest.approx(fraction)
        if expected is not None:
            assert fraction == expected
    weighted = _module(subset_root, cache_dir, balance="weighted_sampler", batch_size=64)
    drawn = np.concatenate([batch[1].numpy() for batch in weighted.train_dataloader()])
    assert abs(drawn.mean() - 0.5) < 0.05
    assert weighted.summary()["balance"]["effective_male_fraction"] == 0.5
    weighted_loss = _module(subset_root, cache_dir, balance="loss_weights")
    assert weighted_loss.class_weights["pos_weight"] > 1  # fewer men than women
    assert _module(subset_root, cache_dir, balance="undersample").class_weights is None


def test_summary_file_reports_the_split(subset_root, cache_dir, tmp_path):
    module = _module(
        subset_root,
        cache_dir,
        split="seed_protocol",
        summary_path=tmp_path / "run" / "data_summary.json",
    )
    module.setup("fit")
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["images_usable"] == 4014
    assert len(summary["duplicates"]) == 17
    assert summary["parts"]["train"] == {
        "images": 3000,
        "male": 1500,
        "female": 1500,
        "identities": summary["parts"]["train"]["identities"],
    }
    assert summary["parts"]["test"]["images"] == 4014 - 3000
    assert summary["shared_identities"]["train-test"] > 0  # the study's protocol leaks faces
    identity = _module(subset_root, cache_dir).summary()
    assert identity["shared_identities"] == {"train-val": 0, "train-test": 0, "val-test": 0}
    assert sum(part["images"] for part in identity["parts"].values()) == 4014


def test_a_final_fit_trains_on_the_validation_images_and_leaves_the_test_part_alone(
    subset_root, cache_dir, tmp_path
):
    chosen = _module(subset_root, cache_dir)
    final = _module(subset_root, cache_dir, final_fit=True, summary_path=tmp_path / "s.json")
    chosen.setup("fit")
    final.setup("fit")
    assert len(chosen.parts["val"]) > 300
    assert sorted(final.parts["train"]) == sorted([*chosen.parts["train"], *chosen.parts["val"]])
    assert len(final.parts["val"]) == 0 and len(final.datasets["val"]) == 0
    assert list(final.parts["test"]) == list(chosen.parts["test"])
    assert len(final.datasets["train"]) == len(chosen.datasets["train"]) + len(chosen.parts["val"])
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["split"]["final_fit"] is True
    assert summary["split"]["validation_images_trained_on"] == len(chosen.parts["val"])
    assert summary["identity_disjoint"] is True  # training still shares nobody with the test
    assert chosen.summary()["split"]["final_fit"] is False
    # Validating a final fit has nothing to read: said in the data's words, with the fix.
    with pytest.raises(DataError, match=r"data.final_fit=true trained on the validation images"):
        final.setup("validate")
    # Undersampled, the validation images it trained on are those balancing kept.
    undersampled = _module(subset_root, cache_dir, final_fit=True, balance="undersample")
    undersampled.setup("fit")
    trained = set(undersampled.train_rows.tolist())
    kept = sum(row in trained for row in chosen.parts["val"].tolist())
    assert 0 < kept < len(chosen.parts["val"])
    assert undersampled.summary()["split"]["validation_images_trained_on"] == kept
    # Oversampled, a repeated validation image counts once.
    oversampled = _module(subset_root, cache_dir, final_fit=True, balance="oversample")
    oversampled.setup("fit")
    assert len(oversampled.train_rows) > len(set(oversampled.train_rows.tolist()))
    assert oversampled.final_fit_images == len(chosen.parts["val"])
    # A split with no validation part has nothing to add: refused, not labelled a final fit.
    protocol = _module(subset_root, cache_dir, split="seed_protocol", final_fit=True)
    with pytest.raises(DataError, match=r"split=seed_protocol has none for .*final_fit=false"):
        protocol.setup("fit")


def test_a_checkpoints_data_record_counts_the_test_images_it_trained_on(
    subset_root, sample_root, cache_dir, tmp_path
):
    """CelebADataModule.state_dict (saved in every checkpoint) holds the content of the images
    that trained; another split or copy counts its test images among them by their bytes."""
    chosen = _module(subset_root, cache_dir, balance="undersample")
    final = _module(subset_root, cache_dir, final_fit=True)
    chosen.setup("fit")
    final.setup("fit")
    record = chosen.state_dict()["trained_on"]
    trained = set(chosen.train_rows.tolist())
    assert record["images"] == len(trained) < len(chosen.parts["train"])  # what balancing kept
    assert record["final_fit"] is False and record["split"] == "identity"
    assert len(record["content_sha1"]) == 20 * len(trained)
    assert final.state_dict()["trained_on"]["final_fit"] is True
    # The run's own split: its test part shares no image with its training images.
    assert chosen.images_seen_in_training(record, "test") == 0
    assert final.images_seen_in_training(final.state_dict()["trained_on"], "test") == 0
    # The whole copy as the test part: exactly the images that trained are recognised; a final
    # fit's validation images too.
    everything = _module(subset_root, cache_dir, split="all")
    assert everything.images_seen_in_training(record, "test") == len(trained)
    final_rows = set(final.train_rows.tolist())
    assert len(final_rows) > len(trained)
    seen = everything.images_seen_in_training(final.state_dict()["trained_on"], "test")
    assert seen == len(final_rows)
    # Another copy (the embedded sample: files of the subset, 2 under other names) is matched
    # by content, not by name or folder.
    sample = _module(sample_root, cache_dir, split="all")
    sample.setup()
    names = set(sample.index.images["file"])
    trained_names = set(chosen.index.images["file"].to_numpy()[sorted(trained)])
    in_sample = len(names & trained_names)
    assert 0 < in_sample < len(names)
    assert sample.images_seen_in_training(record, "test") == in_sample
    # Matched by bytes, not names: a class-folder copy of 12 training and 8 test images under
    # new names (one with ':', which fingerprints use as a separator).
    images = chosen.index.images
    picked = [*sorted(trained)[:12], *chosen.parts["test"][:8]]
    for number, row in enumerate(picked):
        folder = tmp_path / "renamed" / ("male" if images["male"].iat[row] else "female")
        folder.mkdir(parents=True, exist_ok=True)
        source = subset_root / "img_align_celeba" / images["file"].iat[row]
        shutil.copy(source, folder / f"x:{number}.jpg")
    renamed = _module(tmp_path / "renamed", cache_dir, split="all")
    assert renamed.images_seen_in_training(record, "test") == 12
    # Oversampling repeats images: each is recorded once.
    oversampled = _module(subset_root, cache_dir, balance="oversample")
    oversampled.setup("fit")
    repeated = oversampled.state_dict()["trained_on"]
    assert len(oversampled.train_rows) > len(set(oversampled.train_rows.tolist()))
    assert repeated["images"] == len(set(oversampled.train_rows.tolist()))
    assert len(repeated["content_sha1"]) == 20 * repeated["images"]
    assert chosen.state_dict()["trained_on"] == record  # the same every save
    assert _module(subset_root, cache_dir).state_dict() == {}  # nothing set up, nothing said


class _TinyClassifier(L.LightningModule):
    """Records what reaches training_step, to prove the batch transform ran on the device."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.seen.append((images.dtype, tuple(images.shape), float(images.mean())))
        return torch.nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.seen.append((images.dtype, tuple(images.shape), float(images.mean())))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit_briefly(
    model: L.LightningModule, module: CelebADataModule, folder: Path, **options: object
) -> None:
    """A real Trainer on CPU: two training batches, then one validation batch (``options``
    change that)."""
    settings = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=folder,
    )
    L.Trainer(**{**settings, **options}).fit(model, datamodule=module)


@pytest.mark.parametrize("loader", ["cached", "per_sample"])
def test_lightning_trainer_receives_normalised_batches(defective_copy, tmp_path, loader):
    module = _module(defective_copy.root, tmp_path, loader=loader)
    model = _TinyClassifier()
    _fit_briefly(model, module, tmp_path)
    assert len(model.seen) == 3
    for dtype, shape, mean in model.seen:
        assert dtype == torch.float32 and shape[1:] == (3, 48, 48)
        assert -2.5 < mean < 2.5  # ImageNet-normalised, not 0..255


def test_data_module_refuses_bad_settings(defective_copy, tmp_path):
    # data.loader is the schema's (tests/test_config_schema.py BAD): the module trusts it.
    with pytest.raises(DataError, match="Unknown data.balance"):
        _module(defective_copy.root, tmp_path, balance="smote").setup()
    with pytest.raises(DataError, match="val part .* is empty"):
        _module(defective_copy.root, tmp_path, split="all").val_dataloader()


def test_a_run_with_an_empty_test_part_is_refused_at_setup_not_after_training(
    defective_copy, tmp_path
):
    module = _module(defective_copy.root, tmp_path, split_fractions=(0.9, 0.1, 0.0))
    with pytest.raises(DataError, match=r"The test part of split=identity is empty .*test 0 "):
        module.setup("fit")  # what a training run calls before its first epoch
    assert len(module.datasets["train"]) > 0  # the split was made: only the check refused it
    module.setup("validate")  # what does not need the test part still works


def test_data_check_exits_non_zero_when_a_part_a_run_needs_is_empty(defective_copy):
    partition = defective_copy.root / "Eval" / "list_eval_partition.txt"
    names = [line.split()[0] for line in partition.read_text().splitlines()]
    # An official partition file that puts nothing in test: a third validation, the rest train.
    partition.write_text("".join(f"{name} {int(i % 3 == 0)}\n" for i, name in enumerate(names)))
    result = _cli(str(defective_copy.root), "--split", "official")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"val +\d+ images", result.stdout)  # the report is printed first
    assert re.search(r"test +0 images", result.stdout)
    assert "The test part of split=official is empty" in result.stderr
    assert "Traceback" not in result.stderr
    evaluation = _cli(str(defective_copy.root), "--split", "all")  # eval needs test only
    assert evaluation.returncode == 0, evaluation.stderr


def _cli(*args: str) -> subprocess.CompletedProcess:
    return forked_python.run(
        [sys.executable, "-m", "celeba_gender.data", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_command_line_summary(subset_root, cache_dir):
    result = _cli(str(subset_root), "--split", "seed_protocol", "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    assert "4014 usable" in result.stdout
    assert "duplicates dropped: 17" in result.stdout
    assert "train    3000 images    1500 male    1500 female" in result.stdout
    as_json = _cli(str(subset_root), "--json", "--cache-dir", str(cache_dir))
    assert json.loads(as_json.stdout)["shared_identities"]["train-test"] == 0


def test_command_line_reports_a_wrong_path_without_a_traceback(tmp_path):
    result = _cli(str(tmp_path / "not-here"))
    assert result.returncode == 2
    assert "not-here does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("data", "split"), [("celeba", "identity"), ("study", "seed_protocol")])
def test_hydra_data_configs_instantiate(subset_root, cache_dir, data, split):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose(
            "config",
            overrides=[
                f"data={data}",
                f"data.root={subset_root}",
                f"data.cache_dir={cache_dir}",
                "data.summary_path=null",  # a run sets it to its output folder
            ],
        )
    module = instantiate(config.data)
    assert isinstance(module, CelebADataModule)
    assert module.split == split
    module.setup("fit")
    assert len(module.datasets["train"]) > 0


class _BatchRecorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: dict[str, list] = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.batches["train"].append((batch[0].clone(), batch[2].clone()))
        return self.weight.sum() * 0 + batch[0].mean() * 0 + self.weight.square().sum()

    def validation_step(self, batch, batch_idx):
        self.batches["val"].append((batch[0].clone(), batch[2].clone()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("loader", ["cached", "per_sample"])
def test_training_batches_are_augmented_and_validation_batches_are_not(
    defective_copy, tmp_path, loader
):
    """With a flip of probability 1, a training batch flipped back is the evaluation view."""
    # 192 px enlarges the 178 px crop: no antialiasing or box pre-filter, so the batch warp and the
    # evaluation resize sample the same points.
    flip = [{"name": "horizontal_flip", "p": 1.0}]
    module = _module(
        defective_copy.root, tmp_path, loader=loader, augmentations=flip, image_size=192
    )
    recorder = _BatchRecorder()
    _fit_briefly(recorder, module, tmp_path)
    reference = _module(
        defective_copy.root, tmp_path, loader=loader, augmentations=[], image_size=192
    )
    reference.setup("fit")
    paths = reference.index.paths()

    def evaluation_view(rows: torch.Tensor) -> torch.Tensor:
        if loader == "cached":
            cache_rows = reference.index.images["cache_row"].to_numpy()[rows.numpy()]
            raw = torch.from_numpy(reference.cache.gather(cache_rows))
            return reference.transform_batch(raw, train=False)
        transform = reference.datasets["val"].transform
        return torch.stack([transform(Image.open(paths[r]).convert("RGB")) for r in rows.tolist()])

    for images, rows in recorder.batches["val"]:
        assert torch.allclose(images, evaluation_view(rows), atol=1e-4)
    for images, rows in recorder.batches["train"]:
        expected = evaluation_view(rows)
        # The batch engine samples the real rows above and below the crop at its edge.
        assert torch.allclose(images.flip(-1)[..., 1:-1, :], expected[..., 1:-1, :], atol=1e-4)
        assert not torch.allclose(images, expected, atol=1e-2)


def test_attribute_table_holds_the_annotation_files_values_by_row(sample_root, tmp_path):
    module = _module(sample_root, tmp_path)
    names = module.attribute_names(["all"])
    assert len(names) == 39 and "Male" not in names and "Smiling" in names
    table = module.attribute_table(["Smiling", "Eyeglasses"])
    # The raw file, read independently: 1 / -1 per image, the first column its name.
    raw = (sample_root / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    header = raw[1].split()
    values = {line.split()[0]: line.split()[1:] for line in raw[2:]}
    images = module.index.images
    assert table.shape == (len(images), 2)
    for row, file_name in enumerate(images["file_name"]):
        expected = [values[file_name][header.index(n)] == "1" for n in ("Smiling", "Eyeglasses")]
        assert table[row].tolist() == [float(e) for e in expected]
    with pytest.raises(DataError, match="Unknown attribute_targets Beard: .*list_attr_celeba.txt"):
        module.attribute_names(["Smiling", "Beard"])


class _WorkerSeeds(torch.utils.data.Dataset):
    """Each item: the torch seed of the DataLoader worker that produced it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        return torch.initial_seed()


def _worker_seeds(rank: int, epoch: int) -> set[int]:
    from celeba_gender.data.sampling import EpochSampler, ResumableDataLoader

    sampler = EpochSampler(8, seed=42, num_replicas=2, rank=rank)
    sampler.set_epoch(epoch)
    loader = ResumableDataLoader(_WorkerSeeds(), batch_size=1, sampler=sampler, num_workers=2)
    return {int(seed) for batch in loader for seed in batch}


def test_each_rank_and_epoch_has_its_own_worker_and_augmentation_streams(defective_copy, tmp_path):
    """Under DDP every rank seeds with `seed`: without streams of their own, all ranks would
    flip, rotate and mix the same way at each batch position."""
    from celeba_gender.data.sampling import seed_batch_streams

    seeds = {(rank, epoch): _worker_seeds(rank, epoch) for rank in (0, 1) for epoch in (0, 1)}
    assert all(len(s) == 2 for s in seeds.values())  # two workers, two streams
    every = [seed for s in seeds.values() for seed in s]
    assert len(set(every)) == len(every)  # no two ranks, epochs or workers share a stream
    assert _worker_seeds(1, 1) == seeds[(1, 1)]  # the same run to run

    module = _module(defective_copy.root, tmp_path, augmentations=AUGMENT)
    module.setup("fit")
    images = torch.from_numpy(module.cache.gather(np.arange(8)))

    def augmented(rank: int, epoch: int, batch: int = 0) -> torch.Tensor:
        seed_batch_streams(42, epoch, rank, batch)
        return module.transform_batch(images, train=True)

    first = augmented(0, 0)
    assert torch.equal(augmented(0, 0), first)
    assert not torch.allclose(augmented(1, 0), first, atol=1e-3)
    assert not torch.allclose(augmented(0, 1), first, atol=1e-3)
    assert not torch.allclose(augmented(0, 0, batch=1), first, atol=1e-3)


class _AnySizeClassifier(_TinyClassifier):
    """Takes any image size; records the dtype of each training batch as the loader made it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2)
        )
        self.loaded: list[torch.dtype] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.training:
            self.loaded.append(batch[0].dtype)
        return batch


class _CacheReadRecorder(L.Callback):
    """Per training epoch: its batch side and whether its batches came from the pooled cache."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        module = trainer.datamodule
        if batch_idx == 0:
            pooled = module.datasets["train"].read_pooled
            self.epochs.append((module.training_image_size(), pooled))


def test_small_training_sizes_read_the_pooled_block_sums_and_get_the_same_batches(
    defective_copy, tmp_path
):
    """64 px from a 178-px face box box-filters each 2x2 block first: the pooled cache's block
    sums give the very batch the full frames give, from a quarter of the pixels."""
    module = _module(defective_copy.root, tmp_path, image_size=64)
    module.setup("fit")
    images, _, rows = next(iter(module.train_dataloader()))
    assert images.dtype == torch.int16 and tuple(images.shape[1:]) == (3, 109, 89)
    cache_rows = module.index.images["cache_row"].to_numpy()[rows.numpy()]
    full = torch.from_numpy(module.cache.gather(cache_rows))
    sums = full.to(torch.int16).unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2), dtype=torch.int16)
    assert torch.equal(images, sums)

    def trained(batch: torch.Tensor, size: int) -> torch.Tensor:
        torch.manual_seed(3)  # the same flips and rotations for both
        return module.batch_transform(batch, train=True, size=size)

    for size in (64, 44):  # box filters 2x2 and 4x4: 4x4 sums the pooled sums again
        assert module.batch_transform.reads_pooled(size)
        assert torch.equal(trained(images, size), trained(full, size))
    assert not module.batch_transform.reads_pooled(48)  # 3x3 blocks
    with pytest.raises(ValueError, match="full cache"):
        trained(images, 48)
    with pytest.raises(ValueError, match="uint8 frames"):
        module.batch_transform(images, train=False)
    # Evaluation parts always read the full frames.
    assert next(iter(module.val_dataloader()))[0].dtype == torch.uint8

    # Progressive resizing: each epoch reads the cache its size can use.
    ramp = {"start_size": 64, "ramp": [0.5, 0.5], "multiple": 16}
    growing = _module(
        defective_copy.root, tmp_path, image_size=112, progressive_resizing=ramp, num_workers=1
    )
    assert growing.training_sizes() == [64, 112]
    assert _module(
        defective_copy.root, tmp_path, image_size=112, progressive_resizing={"start_size": 64}
    ).training_sizes() == [64, 80, 96, 112]
    recorder, model = _CacheReadRecorder(), _AnySizeClassifier()
    _fit_briefly(
        model, growing, tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0,
        callbacks=[recorder],
    )  # fmt: skip
    assert recorder.epochs == [(64, True), (112, False)]
    assert model.loaded == [torch.int16, torch.uint8]  # what the worker process read
    # A size with no even box filter builds no pooled cache.
    plain = _module(defective_copy.root, tmp_path)  # 48 px
    plain.setup("fit")
    assert plain.pooled_cache is None and plain.datasets["train"].pooled is None


@pytest.mark.parametrize("frame", [(218, 178), (217, 177), (109, 89), (437, 355)])
@pytest.mark.parametrize("face_crop", [FACE, None])
def test_block_sums_give_the_full_frames_batch_for_every_even_box_filter(frame, face_crop):
    """Odd frames drop a last row or column in both paths alike; a 4x or 6x filter sums the
    pooled sums again; every size whose filter is odd is refused, never approximated."""
    transform = BatchTransform(64, face_crop, AUGMENT, (0.5,) * 3, (0.25,) * 3, frame)
    generator = torch.Generator().manual_seed(sum(frame))
    full = torch.randint(0, 256, (4, 3, *frame), dtype=torch.uint8, generator=generator)
    height, width = frame[0] // 2 * 2, frame[1] // 2 * 2
    sums = full[..., :height, :width].to(torch.int16).unfold(2, 2, 2).unfold(3, 2, 2)
    sums = sums.sum((-1, -2), dtype=torch.int16)
    checked = 0
    for size in range(8, 120, 4):
        if not transform.reads_pooled(size):
            with pytest.raises(ValueError, match="full cache"):
                transform(sums, train=True, size=size)
            continue
        batches = []
        for batch in (full, sums):
            torch.manual_seed(size)
            batches.append(transform(batch, train=True, size=size))
        assert torch.equal(*batches), size
        checked += 1
    assert checked >= 5
