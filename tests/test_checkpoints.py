"""Every bad model file, through each entry point that loads one (eval.py, predict.py, the ONNX
export): one line on stderr naming the file, a non-zero exit, no traceback, no code run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import forked_python
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
    return forked_python.run(
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


# Every bad file through the export; through eval and predict, which call the same loader
# (its reason for each file: test_the_loader_says_what_is_wrong_with_each_file), one of each
# way a file fails: unreadable, a pickle that would run code, not a checkpoint at all.
ENTRY_KINDS = [("export", kind) for kind in KINDS] + [
    (entry, kind)
    for entry in ("eval", "predict")
    for kind in ("truncated", "malicious_pickle", "corrupt_onnx", "other_lightning_model")
]


@pytest.mark.parametrize(("entry", "kind"), ENTRY_KINDS)
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


# ------------------------------------------------------------- what a file records, checked

# A checkpoint of ours whose eval_transform was edited by hand: eval hands it to its data config
# (which Hydra instantiates: a nested ``_target_`` would be called), predict and export to their
# transform. Each is refused when loaded, in one line.
HOSTILE_EVAL_TRANSFORMS = {
    "nested_target": lambda et: (
        et | {"face_crop": {"_target_": "builtins.print", "_args_": ["code from a checkpoint"]}}
    ),
    "unknown_key": lambda et: et | {"_target_": "builtins.print"},
    "a_string": lambda et: "image_size=32",
    "keys_missing": lambda et: {"image_size": et["image_size"]},
    "huge_image": lambda et: et | {"image_size": 10**6},
    "zero_std": lambda et: et | {"std": [0.0, 0.0, 0.0]},
}


@pytest.fixture(scope="module")
def edited_checkpoints(smoke_run, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("edited_models")
    good = torch.load(smoke_run / "checkpoints" / "best.ckpt", weights_only=True)
    files = {}
    for kind, edit in HOSTILE_EVAL_TRANSFORMS.items():
        checkpoint = dict(good, hyper_parameters=dict(good["hyper_parameters"]))
        settings = checkpoint["hyper_parameters"]["eval_transform"]
        checkpoint["hyper_parameters"]["eval_transform"] = edit(dict(settings))
        files[kind] = folder / f"{kind}.ckpt"
        torch.save(checkpoint, files[kind])
    yield files
    for path in files.values():
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("kind", sorted(HOSTILE_EVAL_TRANSFORMS))
def test_an_edited_eval_transform_is_refused_when_loaded(edited_checkpoints, kind):
    with pytest.raises(CheckpointError, match="eval_transform is unusable") as error:
        load_classifier(str(edited_checkpoints[kind]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("entry", ["eval", "predict", "export"])
def test_a_target_in_a_checkpoint_is_never_instantiated(
    edited_checkpoints, run_env, tmp_path, entry
):
    model = edited_checkpoints["nested_target"]
    result = _run_entry_point(entry, model, tmp_path, run_env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "code from a checkpoint" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    naming = [line for line in result.stderr.splitlines() if str(model) in line]
    assert len(naming) == 1 and naming[0].startswith("error: "), result.stderr[-3000:]
    assert "eval_transform is unusable" in naming[0]


def _onnx_model(path: Path, metadata: str, outputs_per_image: int) -> Path:
    """A tiny ONNX model with our metadata key: the mean of each channel, ``outputs_per_image``
    of them (1: one number per image, like ours; 3: another task's model)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 32, 32])
    output = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", outputs_per_image])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=0)]
    nodes.append(
        helper.make_node("Slice", ["m", "start", "stop", "axis"], ["p"])
        if outputs_per_image == 1
        else helper.make_node("Identity", ["m"], ["p"])
    )
    constants = [
        axes,
        helper.make_tensor("start", TensorProto.INT64, [1], [0]),
        helper.make_tensor("stop", TensorProto.INT64, [1], [outputs_per_image]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(nodes, "g", [images], [output], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    model.metadata_props.add(key="celeba_gender.eval_transform", value=metadata)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("metadata", ["[]", '{"image_size": 32}', '{"image_size": "big"}'])
def test_an_onnx_file_with_unusable_metadata_is_refused_in_one_line(tmp_path, metadata):
    pytest.importorskip("onnxruntime")
    from celeba_gender.inference import GenderPredictor

    model = _onnx_model(tmp_path / "m.onnx", metadata, 1)
    with pytest.raises(CheckpointError, match="eval_transform is unusable") as error:
        GenderPredictor.load(model)
    assert str(model) in str(error.value) and "\n" not in str(error.value)


def test_an_onnx_model_of_another_task_gives_error_rows_not_a_crash(tmp_path):
    """A model giving three numbers per face: every face's row says so, the job goes on."""
    pytest.importorskip("onnxruntime")
    import json

    from celeba_gender.inference import GenderPredictor
    from celeba_gender.inference.labelling import predict_photos

    settings = {"image_size": 32, "face_crop": None, "mean": [0.5] * 3, "std": [0.5] * 3}
    for outputs, expected in ((3, "error"), (1, "ok")):
        model = _onnx_model(tmp_path / f"m{outputs}.onnx", json.dumps(settings), outputs)
        predictor = GenderPredictor.load(model, batch_size=2)
        photos = [SAMPLE_IMAGE] * 3  # two batches: the last one too
        results = list(predict_photos(photos, predictor, None))
        statuses = [row["status"] for result in results for row in result.rows]
        assert statuses == [expected] * 3
        if expected == "error":
            assert all("one P(male) per face" in r.rows[0]["error"] for r in results)


def test_a_fifo_given_as_the_model_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "model.ckpt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_classifier(str(fifo))


def test_a_model_giving_nan_gives_error_rows_and_valid_json(tmp_path):
    import json

    import numpy as np

    from celeba_gender.inference import GenderPredictor
    from celeba_gender.inference.labelling import predict_photos

    settings = {"image_size": 32, "face_crop": None, "mean": [0.5] * 3, "std": [0.5] * 3}
    predictor = GenderPredictor(settings, lambda images: np.full(len(images), np.nan), "nan")
    results = list(predict_photos([SAMPLE_IMAGE] * 2, predictor, None))
    rows = [row for result in results for row in result.rows]
    assert [row["status"] for row in rows] == ["error", "error"]
    assert "non-finite" in rows[0]["error"]
    json.loads(json.dumps(rows, allow_nan=False))


def test_a_checkpoints_training_record_is_read_strictly():
    """models.checkpoints.trained_on: a record eval.py can trust, or None; a flag written as
    text ("false") is not a final fit."""
    from celeba_gender.models.checkpoints import trained_on

    def record(**facts):
        return {"CelebADataModule": {"trained_on": facts}}

    assert trained_on(record(content_sha1=b"x" * 40, final_fit="false"))["final_fit"] is False
    assert trained_on(record(content_sha1=b"x" * 20, final_fit=True))["final_fit"] is True
    assert trained_on(record(content_sha1=b"x" * 21)) is None  # not whole digests
    assert trained_on(record(content_sha1="ab" * 20)) is None  # text, not bytes
    assert trained_on({"CelebADataModule": []}) is None
    assert trained_on({}) is None  # a checkpoint from before the record
