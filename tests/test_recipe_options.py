"""Recipe options for fast CPU training (issue 15): label smoothing, progressive resizing, an
EMA of the weights that the test really evaluates. Real trainings at smoke size on the embedded
sample. (Old runs resuming with these options at their defaults: test_data_sources.py.)"""

from __future__ import annotations

import re

import lightning as L
import pandas as pd
import pytest
import torch
from conftest import REPO, delete_big_files, run_script
from hydra import compose, initialize_config_dir

from celeba_gender.config_schema import ConfigError, TrainSchema, validate
from celeba_gender.data import CelebADataModule
from celeba_gender.data.errors import DataError
from celeba_gender.data.transforms import progressive_image_size
from celeba_gender.models import GenderClassifier
from celeba_gender.models.heads import create_head

EMA = "callbacks.ema={_target_:celeba_gender.training.callbacks.EMAWeights,decay:0.5}"


# ----------------------------------------------------------------------------- label smoothing


def test_bce_label_smoothing_trains_towards_eps_over_2_and_evaluates_plainly():
    logits = torch.tensor([[2.0], [-1.0], [0.3]])
    labels = torch.tensor([1, 0, 1])
    eps = 0.2
    smoothed = create_head("bce", label_smoothing=eps)
    targets = torch.tensor([1 - eps / 2, eps / 2, 1 - eps / 2])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), targets)
    assert torch.allclose(smoothed.loss(logits, labels), expected)
    plain = create_head("bce")
    assert not torch.allclose(plain.loss(logits, labels), expected)
    # Validation and test losses stay the plain loss: comparable across recipes.
    assert torch.allclose(
        smoothed.image_losses(logits, labels)[0], plain.image_losses(logits, labels)[0]
    )


def test_ce_label_smoothing_is_cross_entropys_own():
    logits = torch.tensor([[0.5, -0.5], [1.0, 2.0]])
    labels = torch.tensor([0, 1])
    head = create_head("ce", label_smoothing=0.1)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(head.loss(logits, labels), expected)
    with pytest.raises(ValueError, match="label_smoothing"):
        create_head("ce", label_smoothing=1.0)


def test_label_smoothing_reaches_the_model_from_the_config(run_env, tmp_path):
    folder = tmp_path / "run"
    result = run_script(
        "train.py", "experiment=smoke", "label_smoothing=0.1", f"hydra.run.dir={folder}",
        env=run_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["label_smoothing"] == 0.1
    bad = run_script("train.py", "experiment=smoke", "label_smoothing=1.5", env=run_env)
    assert bad.returncode != 0 and "label_smoothing=1.5" in bad.stderr
    delete_big_files(folder)


# ----------------------------------------------------------------------------- progressive resizing


def test_progressive_size_schedule_ramps_between_the_fractions_in_multiples():
    sizes = [
        progressive_image_size(e, 20, 96, 64, ramp=(0.25, 0.75), multiple=16) for e in range(20)
    ]
    assert sizes[:5] == [64] * 5  # until epoch 5 = 0.25 x 20
    assert sizes[15:] == [96] * 5  # from epoch 15 = 0.75 x 20 on
    assert sizes == sorted(sizes) and set(sizes) <= {64, 80, 96}
    assert 80 in sizes
    # A final size off the multiple is still reached exactly.
    assert progressive_image_size(9, 10, 100, 48, ramp=(0.0, 0.9)) == 100


class _RecordingClassifier(GenderClassifier):
    """Records the side of every batch the network sees, by stage."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: dict[str, list[tuple[int, int]]] = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append((self.current_epoch, batch[0].shape[-1]))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append((self.current_epoch, batch[0].shape[-1]))
        return super().validation_step(batch, batch_idx)


def test_progressive_resizing_grows_training_batches_and_evaluates_at_full_size(
    sample_root, cache_dir
):
    datamodule = CelebADataModule(
        sample_root,
        image_size=64,
        face_crop={"top": 30, "left": 0, "height": 178, "width": 178},
        augmentations=[{"name": "horizontal_flip", "p": 0.5}],
        batch_size=16,
        num_workers=0,
        cache_dir=cache_dir,
        progressive_resizing={"start_size": 32, "ramp": [0.25, 0.75], "multiple": 16},
    )
    model = _RecordingClassifier(
        backbone="resnet18",
        loss="bce",
        pretrained=False,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
    )
    trainer = L.Trainer(
        max_epochs=4, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    by_epoch = {epoch: size for epoch, size in model.seen["train"]}
    assert by_epoch == {0: 32, 1: 32, 2: 48, 3: 64}
    assert {size for _, size in model.seen["val"]} == {64}
    # Validation alone (a trainer with no epochs to ramp over) evaluates at full size too.
    validating = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1
    )
    validating.validate(model, datamodule=datamodule, verbose=False)
    assert model.seen["val"][-1][1] == 64


PROGRESSIVE_BAD = [
    ("{start_size:200}", "start_size must be an integer from 8 to data.image_size (64)"),
    ("{start_size:32,ramp:[0.8,0.2]}", "ramp must be 2 fractions"),
    ("{start_size:32,speed:2}", "unknown keys ['speed']"),
    ("{start_size:32,ramp:null}", "ramp must be 2 fractions"),
    ("{start_size:32,ramp:0.5}", "ramp must be 2 fractions"),
    ("{start_size:32}", "it needs data.loader=cached"),  # with data.loader=per_sample
]


def _progressive_config(settings: str):
    loader = "per_sample" if settings == "{start_size:32}" else "cached"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "data.image_size=64",
                f"data.loader={loader}",
                f"data.progressive_resizing={settings}",
            ],
        )


@pytest.mark.parametrize(("settings", "message"), PROGRESSIVE_BAD)
def test_bad_progressive_resizing_settings_are_named_by_the_schema(settings, message):
    """The schema is where a bad value is refused (one line, before a run folder is made);
    the data module trusts it."""
    with pytest.raises(ConfigError, match=r"^data\.progressive_resizing=.*" + re.escape(message)):
        validate(_progressive_config(settings), TrainSchema)


@pytest.mark.parametrize(("settings", "message"), [PROGRESSIVE_BAD[0], PROGRESSIVE_BAD[-1]])
def test_a_bad_progressive_resizing_run_is_refused_in_one_line(settings, message, tmp_path):
    loader = "per_sample" if settings == "{start_size:32}" else "cached"
    result = run_script(
        "train.py",
        "experiment=smoke",
        "data.image_size=64",
        f"data.loader={loader}",
        f"data.progressive_resizing={settings}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


# ----------------------------------------------------------------------------- EMA of the weights


def test_ema_weights_are_what_validation_best_ckpt_and_the_test_evaluate(run_env, tmp_path):
    folder = tmp_path / "run"
    run = (
        "experiment=smoke",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "trainer.limit_test_batches=1.0",
        "callbacks.model_checkpoint.save_weights_only=false",
        "callbacks.model_checkpoint.save_last=true",
        EMA,
        f"hydra.run.dir={folder}",
    )
    result = run_script("train.py", *run, env=run_env)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(folder / "checkpoints" / name, weights_only=True)
        averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
        # last.ckpt, written when training ends, holds the raw weights from before the EMA
        # callback copies the average over them then.
        assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if "weight" in k)
    best = folder / "checkpoints" / "best.ckpt"
    # The run's own test and eval.py on best.ckpt (which reads state_dict: the average) agree
    # prediction by prediction: the test saw the averaged weights. Lightning's callback alone
    # tested the raw ones.
    evaluated = tmp_path / "eval"
    again = run_script(
        "eval.py", f"ckpt_path={best}",
        f"hydra.run.dir={evaluated}", env=run_env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    trained = pd.read_csv(folder / "test_predictions.csv")
    tested = pd.read_csv(evaluated / "test_predictions.csv")  # eval.py: every image
    both = trained.merge(tested, on="file_name", suffixes=("_run", "_eval"))
    assert len(both) == len(trained) > 20
    assert both["p_male_run"].to_numpy() == pytest.approx(both["p_male_eval"].to_numpy(), abs=1e-5)
    delete_big_files(folder)


def test_ema_with_weights_only_checkpoints_is_refused_before_the_run(run_env, tmp_path):
    folder = tmp_path / "run"
    result = run_script("train.py", "experiment=smoke", EMA, f"hydra.run.dir={folder}", env=run_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "callbacks.model_checkpoint.save_weights_only=true is not allowed: expected false with "
        "callbacks.ema set" in result.stderr
    )
    assert not (folder / "metrics.json").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "limits",
    [
        ("trainer.max_epochs=-1", "+trainer.max_steps=100"),
        ("trainer.max_epochs=null", "+trainer.max_steps=100"),
        # Lightning sets max_epochs=-1 under a time limit: the ramp would never move.
        ("trainer.max_epochs=null", "+trainer.max_time=00:00:05:00"),
    ],
)
def test_progressive_resizing_without_a_number_of_epochs_is_refused(limits):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data.progressive_resizing={start_size:64}", *limits])
    with pytest.raises(ConfigError, match=r"^data.progressive_resizing=.*set trainer.max_epochs"):
        validate(cfg, TrainSchema)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"start_size": 32, "multiple": True}, "multiple must be an integer >= 1"),
        ({"start_size": 32, "ramp": [True, True]}, "ramp must be 2 fractions"),
        ({"start_size": 200}, "start_size must be an integer from 8 to data.image_size (64)"),
    ],
)
def test_a_data_module_built_in_code_names_a_bad_ramp_in_one_line(sample_root, settings, message):
    """Outside a config (a notebook, eval's data module), the same rule, as a DataError."""
    with pytest.raises(DataError, match=r"^data\.progressive_resizing=.*" + re.escape(message)):
        CelebADataModule(sample_root, image_size=64, progressive_resizing=settings)
