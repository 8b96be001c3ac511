"""The smoke grid's sweep (tests/test_smoke_grid_*.py): one half of the 10 backbones under the
3 treatments, at smoke size, pretrained weights faked (zeros, sparse files) so that the
pretrained path runs offline."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import torch
import torchvision
from conftest import REPO, run_script, write_sparse
from hydra import compose, initialize_config_dir

from celeba_gender.models import model_names, pretrained_weights_file

TREATMENTS = ("pretrained_bce", "scratch_bce", "scratch_ce")
# The two halves of the 10 backbones, one per test file (test_smoke_grid_vgg.py, _resnet.py).
GRID_HALVES = (
    ["vgg11", "vgg13", "vgg16", "vgg19", "googlenet"],
    ["resnet18", "resnet34", "resnet50", "resnet101", "inception_v3"],
)


def fake_pretrained_home(folder: Path, models: list[str]) -> Path:
    """State dicts of zeros saved under torchvision's cache names: the pretrained code path
    (find the file, load it into the architecture), offline. Zeros, written as sparse files,
    take almost no disk where the real weights would take 1.5 GB."""
    for name in models:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            options = compose("config", overrides=[f"model={name}"]).model.kwargs
        with torch.device("meta"):  # its shapes only: no weights made and initialised
            model = torchvision.models.get_model(name, weights=None, **options)
        target = folder / "hub" / "checkpoints" / Path(pretrained_weights_file(name).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        zeros = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
        torch.save(zeros, buffer)
        write_sparse(target, buffer.getvalue())
    return folder


def run_grid(
    models: list[str], run_env: dict, tmp_path: Path
) -> tuple[subprocess.CompletedProcess, Path, Path]:
    home = fake_pretrained_home(tmp_path / "torch-home", models)
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        f"model={','.join(models)}",
        "treatment=glob(*)",
        "experiment=smoke",
        # Test the last epoch's weights: no best.ckpt (the four VGGs' are 0.5 GB each).
        "+callbacks.model_checkpoint.save_top_k=0",
        # One optimizer step is the whole training path (an Adam step of a VGG takes seconds),
        # on 2 images (batch norm's fewest); one batch of 2 each is the whole validation, test
        # and prediction path, validated once (Inception-v3 runs at 299 px: 2 s per batch of 8).
        "trainer.limit_train_batches=1",
        # Adam's step in one vectorised kernel (the same update; a VGG's step 1.7 -> 0.4 s on
        # one core): the per-parameter loop runs in every other training test.
        "optimizer.fused=true",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "trainer.limit_test_batches=1",
        "trainer.limit_predict_batches=1",
        "+trainer.num_sanity_val_steps=0",
        f"hydra.sweep.dir={sweep}",
        env={**run_env, "TORCH_HOME": str(home)},
        timeout=1200,
    )
    return result, sweep, home


def check_grid(
    result: subprocess.CompletedProcess, sweep: Path, home: Path, models: list[str]
) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(records) == 3 * len(models)
    assert [r for r in records if r["status"] != "ok"] == []
    assert {r["evaluated_checkpoint"] for r in records} == {"last epoch"}
    written = sum(p.stat().st_blocks * 512 for p in [*sweep.rglob("*"), *home.rglob("*")])
    assert written < 100 * 2**20, f"the sweep and its weights take {written / 2**20:.0f} MB on disk"
    assert {(r["model"], r["treatment"]) for r in records} == {
        (m, t) for m in models for t in TREATMENTS
    }


def test_the_two_halves_are_the_whole_grid():
    assert sorted(GRID_HALVES[0] + GRID_HALVES[1]) == sorted(model_names())
