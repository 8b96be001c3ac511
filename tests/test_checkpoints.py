"""Every bad model file, through each entry point that loads one (eval.py, predict.py, the ONNX
export): one line on stderr naming the file, a non-zero exit, no traceback, no code run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, SAMPLE, run_script
from torch import nn

from celeba_gender.models import load_classifier
from celeba_gender.models.checkpoints import CheckpointError, UnsafeCheckpointError

SAMPLE_IMAGE = sorted((SAMPLE / "img_align_celeba").glob("*.jpg"))[0]


class _Payload:
    """Unpickling this would create ``marker``: a safe loader must refuse it, not run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class _OtherModel(L.LightningModule):
    """Some other project's LightningModule."""

    def __init__(self, hidden: int = 4, learning_rate: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(3, hidden)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)


def _other_lightning_checkpoint(path: Path) -> None:
    """A real Lightning checkpoint, of another model class, written by Lightning itself."""
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3)))
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=path.parent,
    )
    trainer.fit(_OtherModel(), data)
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def bad_files(smoke_run, tmp_path_factory) -> dict[str, Path]:
    """One file of each kind a user may hand over by mistake, and where its marker would go."""
    folder = tmp_path_factory.mktemp("bad_models")
    good = (smoke_run / "checkpoints" / "best.ckpt").read_bytes()
    files = {
        "missing": folder / "missing.ckpt",
        "empty": folder / "empty.ckpt",
        "truncated": folder / "truncated.ckpt",
        "text": folder / "notes.ckpt",
        "foreign_dict": folder / "foreign.ckpt",
        "other_lightning_model": folder / "other_model.ckpt",
        "mismatched_weights": folder / "mismatched.ckpt",
        "malicious_pickle": folder / "malicious.ckpt",
        "corrupt_onnx": folder / "corrupt.onnx",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good[: 2**20])  # a copy cut short: the first megabyte
    files["text"].write_text("epoch=3 val_acc=0.91\nthis is a training log, not a model\n")
    torch.save({"weights": torch.zeros(3), "epoch": 3}, files["foreign_dict"])
    _other_lightning_checkpoint(files["other_lightning_model"])
    # Our hyperparameters, another network's weights.
    torch.save(
        {
            "hyper_parameters": {"backbone": "resnet18", "loss": "bce", "pretrained": False},
            "state_dict": {"net.fc.weight": torch.zeros(1, 3)},
        },
        files["mismatched_weights"],
    )
    torch.save(
        {
            "state_dict": {},
            "hyper_parameters": {},
            "extra": _Payload(folder / "MARKER_code_ran"),
        },
        files["malicious_pickle"],
    )
    files["corrupt_onnx"].write_bytes(b"\x08\x07\x12\x04junk" + os.urandom(2000))
    return files


def _marker(bad_files: dict[str, Path]) -> Path:
    return bad_files["malicious_pickle"].parent / "MARKER_code_ran"


def _run_entry_point(entry: str, model: Path, tmp_path: Path, run_env: dict):
    if entry == "eval":
        return run_script(
            "eval.py", f"ckpt_path={model}", f"hydra.run.dir={tmp_path / 'eval'}", env=run_env
        )
    if entry == "predict":
        return run_script(
            "predict.py",
            f"ckpt_path={model}",
            f"input={SAMPLE_IMAGE}",
            f"hydra.run.dir={tmp_path / 'predict'}",
            env=run_env,
        )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "celeba_gender.inference.export",
            str(model),
            str(tmp_path / "o.onnx"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, **run_env},
    )


KINDS = [
    "missing",
    "empty",
    "truncated",
    "text",
    "foreign_dict",
    "other_lightning_model",
    "mismatched_weights",
    "malicious_pickle",
    "corrupt_onnx",
]


@pytest.mark.parametrize("entry", ["eval", "predict", "export"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_model_file_ends_in_one_line_naming_it(bad_files, run_env, tmp_path, entry, kind):
    model = bad_files[kind]
    result = _run_entry_point(entry, model, tmp_path, run_env)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    naming = [line for line in result.stderr.splitlines() if str(model) in line]
    assert len(naming) == 1, result.stderr[-3000:]
    assert naming[0].startswith("error: "), naming
    assert not _marker(bad_files).exists(), "unpickling the checkpoint ran its code"
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "does not exist"),
        ("empty", "empty"),
        ("truncated", "truncated or corrupt"),
        ("text", "a text file"),
        ("foreign_dict", "no state_dict or hyper_parameters"),
        ("other_lightning_model", "another model"),
        ("mismatched_weights", "weights do not fit"),
        ("malicious_pickle", "refused"),
        ("corrupt_onnx", "ONNX"),
    ],
)
def test_the_loader_says_what_is_wrong_with_each_file(bad_files, kind, reason):
    with pytest.raises(CheckpointError, match=reason) as error:
        load_classifier(str(bad_files[kind]))
    assert str(bad_files[kind]) in str(error.value)
    assert "\n" not in str(error.value)
    assert not _marker(bad_files).exists()


def test_a_pickle_that_would_run_code_is_refused_not_run(bad_files):
    with pytest.raises(UnsafeCheckpointError):
        load_classifier(str(bad_files["malicious_pickle"]))
    assert not _marker(bad_files).exists()
    # The marker is what the payload makes when it does run: the test can see it.
    torch.load(bad_files["malicious_pickle"], weights_only=False)
    assert _marker(bad_files).is_dir()
    _marker(bad_files).rmdir()
