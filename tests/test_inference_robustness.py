"""Bad input never loses work: predict gives every photo a row whatever fails on it, keeps the
rows done when it is stopped, names its pictures safely; export never overwrites its input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import forked_python
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, as_at_a_terminal, file_stamps, run_script, umask_calls
from PIL import Image

from celeba_gender.analysis.collect import read_predictions
from celeba_gender.inference import FaceAligner, GenderPredictor, expand_inputs
from celeba_gender.inference.export import main as export_main
from celeba_gender.inference.labelling import predict_photos
from celeba_gender.inference.run import COLUMNS, output_names
from celeba_gender.models.evaluation import EvaluationOutputs
from celeba_gender.spreadsheet import unquote_frame
from celeba_gender.training.outputs import write_predictions


@pytest.fixture(scope="module")
def checkpoint(smoke_run) -> Path:
    return smoke_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def faces(subset_root) -> list[Path]:
    """Real aligned CelebA photos from the subset."""
    names = sorted(p for p in (subset_root / "img_align_celeba").glob("*.jpg") if "(" not in p.name)
    return names[:80]


def _predict(checkpoint, inputs, output, run_env, *overrides):
    listed = inputs if isinstance(inputs, str) else f"[{','.join(map(str, inputs))}]"
    return run_script(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input={listed}",
        f"hydra.run.dir={output}",
        *overrides,
        env=run_env,
    )


def _rows_by_name(output: Path) -> pd.DataFrame:
    table = pd.read_csv(output / "predictions.csv", keep_default_na=False)
    table["name"] = table["photo"].map(lambda p: Path(p).name)
    return table


# --------------------------------------------------------------------------- one photo, one row


def test_no_photo_stops_predict(checkpoint, faces, run_env, tmp_path):
    """A folder of real faces in every format PIL opens, a photo too small for the detector
    (MTCNN raises on it), one too small to decode, and a non-image given by name: each gets
    its row, and the faces are labelled."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(faces[0], folder / "face.jpg")
    with Image.open(faces[1]) as image:
        image.save(folder / "face.gif")  # a palette GIF: listed from the folder like a JPEG
        image.save(folder / "face.bmp")
        image.save(folder / "face.tif")
        # 10x10: decodes, but facenet-pytorch's MTCNN raises on anything under min_face_size.
        image.resize((10, 10)).save(folder / "tiny.png")
        image.resize((4, 4)).save(folder / "speck.png")  # under decode_image's smallest side
    (folder / "readme.txt").write_text("not a photo, and not listed from the folder\n")
    notes = tmp_path / "notes.txt"  # given by name: it gets a row saying what it is
    notes.write_text("not a photo either\n")
    output = tmp_path / "out"
    result = _predict(checkpoint, [folder, notes], output, run_env, "annotate=true")
    assert result.returncode == 0, result.stderr[-3000:]
    table = _rows_by_name(output)
    status = table.groupby("name")["status"].agg(set).to_dict()
    assert status == {
        "face.jpg": {"ok"},
        "face.gif": {"ok"},
        "face.bmp": {"ok"},
        "face.tif": {"ok"},
        "tiny.png": {"no_face"},
        "speck.png": {"error"},
        "notes.txt": {"error"},
    }
    errors = table.set_index("name")["error"]
    assert "min_face_size" in errors["tiny.png"]
    assert "speck.png" in errors["speck.png"] and "too small" in errors["speck.png"]
    assert "notes.txt" in errors["notes.txt"] and "not a readable image" in errors["notes.txt"]
    # The GIF is the same face as the BMP and TIFF: the same label.
    p_male = table.set_index("name")["p_male"]
    assert float(p_male["face.gif"]) == pytest.approx(float(p_male["face.bmp"]), abs=0.05)
    assert len(json.loads((output / "predictions.json").read_text())) == len(table)


def test_a_folder_lists_every_format_pil_opens(tmp_path, faces):
    with Image.open(faces[0]) as image:
        for number, suffix in enumerate(
            (".gif", ".GIF", ".bmp", ".tiff", ".webp", ".png", ".jpeg")
        ):
            image.save(tmp_path / f"face{number}{suffix}")
    (tmp_path / "readme.txt").write_text("no")
    (tmp_path / "folder.jpg").mkdir()  # a folder named like a photo is not a photo
    listed = [p.name for p in expand_inputs(tmp_path)]
    assert len(listed) == 7 and "readme.txt" not in listed and "folder.jpg" not in listed
    # The same GIF given by name and through its folder: the same photo.
    assert expand_inputs(tmp_path / "face0.gif") == [tmp_path / "face0.gif"]
    assert tmp_path / "face0.gif" in expand_inputs(tmp_path)


def test_a_failing_detector_gives_that_photo_an_error_row(faces, tmp_path):
    """Whatever the detector or alignment raises on one photo becomes its row."""
    tiny = tmp_path / "tiny.png"
    Image.open(faces[0]).resize((12, 12)).save(tiny)
    aligner = FaceAligner.from_config()
    # The guard for photos narrower than the smallest face is off: MTCNN itself raises.
    aligner.min_face_size = 0
    predictor = GenderPredictor(
        {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
        lambda images: np.full(len(images), 0.25, dtype=np.float32),
        "constant",
    )
    results = list(predict_photos([tiny, faces[0]], predictor, aligner))
    assert [r.rows[0]["status"] for r in results] == ["error", "ok"]
    assert "face detection" in results[0].rows[0]["error"]
    assert str(tiny) in results[0].rows[0]["error"]


def test_a_failing_classifier_costs_only_its_photo(checkpoint, faces, tmp_path):
    """A model that fails on one photo's face (here: raising on a blank one) leaves the other
    photos of the batch labelled."""
    real = GenderPredictor.load(checkpoint, batch_size=8)
    real_run = real._run_batch

    def fails_on_blank(images):
        if any(float(image.flatten(1).std(1).max()) < 1e-3 for image in images):
            raise RuntimeError("model failed on this input")
        return real_run(images)

    predictor = GenderPredictor(real.eval_transform, fails_on_blank, real.backbone, 8)
    results = list(predict_photos(faces[:3], predictor, None))
    assert all(r.rows[0]["status"] == "ok" for r in results)
    # Now a blank photo in the same batch.
    blank = tmp_path / "blank.png"
    Image.new("RGB", (178, 218), (128, 128, 128)).save(blank)
    results = list(predict_photos([faces[0], blank, faces[1]], predictor, None))
    statuses = [r.rows[0]["status"] for r in results]
    assert statuses == ["ok", "error", "ok"]
    assert "classification failed" in results[1].rows[0]["error"]
    assert results[0].rows[0]["p_male"] == pytest.approx(
        float(real.predict([Image.open(faces[0]).convert("RGB")])[0]), abs=1e-5
    )


# --------------------------------------------------------------------------- interrupted runs


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
def test_a_stopped_run_keeps_a_valid_table_of_the_photos_done(
    checkpoint, faces, run_env, tmp_path, signum
):
    folder = tmp_path / "many"
    folder.mkdir()
    for source in faces[:60]:
        shutil.copy(source, folder / source.name)
    output = tmp_path / "out"
    command = [
        sys.executable,
        str(REPO / "predict.py"),
        f"ckpt_path={checkpoint}",
        f"input={folder}",
        f"hydra.run.dir={output}",
        "batch_size=2",
        "annotate=true",
        "gallery=false",
    ]
    process = forked_python.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **run_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_at_a_terminal,
    )
    table = output / "predictions.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if table.exists() and table.read_bytes().count(b"\n") >= 7:  # header and 6 photos
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 128 + signum, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert f"interrupted by {signal.Signals(signum).name}" in stderr
    data = table.read_bytes()
    assert data.endswith(b"\r\n")  # no row cut in half
    done = pd.read_csv(table, keep_default_na=False)
    assert list(done.columns) == list(COLUMNS)
    assert 6 <= done["photo"].nunique() < 60
    assert set(done["status"]) <= {"ok", "no_face", "error"}
    names = sorted(p.name for p in folder.iterdir())
    assert list(done["photo"].map(lambda p: Path(p).name)) == names[: len(done)]  # in order
    if signum != signal.SIGKILL:
        records = json.loads((output / "predictions.json").read_text())
        assert [r["photo"] for r in records] == list(done["photo"])
        assert [r["status"] for r in records] == list(done["status"])


# --------------------------------------------------------------------------- output names


def _assert_safe(names: dict[Path, str], folder: Path) -> None:
    values = list(names.values())
    keys = {unicodedata.normalize("NFC", n).casefold() for n in values}
    assert len(keys) == len(values), values  # no two photos on one name, on any file system
    for name in values:
        assert name not in ("", ".", "..") and not name.startswith(".")
        assert "/" not in name and "\\" not in name and os.sep not in name
        assert not any(ord(c) < 32 for c in name)
        assert len(name.encode()) <= 255
        assert (folder / name).resolve().parent == folder.resolve()


def test_output_names_never_collide_or_leave_the_folder(tmp_path):
    root = tmp_path / "in"
    first = output_names([root / "a.jpg", root / "A.jpg"])
    taken_by_hash = first[root / "A.jpg"]  # what A.jpg gets after a.jpg
    paths = [
        root / "a.jpg",
        root / taken_by_hash,  # a photo whose own name is that one
        root / "A.jpg",
        root / "sub" / ".." / "up.jpg",
        Path("relative") / ".." / "in" / "b.jpg",
        root / ("x" * 250 + ".jpg"),
        root / "deep" / ("y" * 250 + ".jpg"),
        root / "deep" / ("y" * 249 + "z.jpg"),
        root / "new\nline.jpg",
        root / "back\\slash.jpg",
        root / "c:o|l?o*n<>.jpg",
        root / "..jpg",
        root / ".hidden.jpg",
        root / "-dash.jpg",
        root / unicodedata.normalize("NFC", "é.jpg"),
        root / unicodedata.normalize("NFD", "é.jpg"),
        root / "photo.psd",
        root / "photo.psd.png",
        Path(os.fsdecode(bytes(root / "latin") + b"\xe9.jpg")),
        Path("/") / "a.jpg",
    ]
    names = output_names(paths)
    assert len(names) == len(paths)
    _assert_safe(names, tmp_path / "annotated")
    readable = output_names([root / "a.jpg", root / "two" / "a.jpg", root / "A.jpg"])
    assert list(readable.values())[:2] == ["a.jpg", "two__a.jpg"]  # as is, where nothing clashes


def test_odd_photo_names_get_safe_distinct_pictures(checkpoint, faces, run_env, tmp_path):
    """End to end: every photo's annotated copy is written, inside annotated/, none replacing
    another, and the gallery draws names that look like formulas as text."""
    folder = tmp_path / "photos"
    deep = folder / ("d" * 120)
    deep.mkdir(parents=True)
    names = [
        folder / ("x" * 240 + ".jpg"),
        deep / ("y" * 200 + ".jpg"),
        folder / "a$^$b.jpg",
        folder / "new\nline.jpg",
        folder / "back\\slash.jpg",
        folder / "a.jpg",
        folder / "A.JPG",
        folder / unicodedata.normalize("NFC", "é.jpg"),
        folder / unicodedata.normalize("NFD", "é.jpg"),
        folder / ".hidden.jpg",
    ]
    for name, source in zip(names, faces, strict=False):
        shutil.copy(source, name)
    output = tmp_path / "out"
    result = _predict(checkpoint, [folder, deep], output, run_env, "annotate=true", "detect=false")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(output / "predictions.csv", keep_default_na=False)
    assert sorted(table["photo"]) == sorted(map(str, names))
    assert (table["status"] == "ok").all()
    assert table["annotated"].is_unique
    annotated = output / "annotated"
    written = sorted(p.name for p in annotated.iterdir())
    assert len(written) == len(names)
    assert sorted(Path(a).name for a in table["annotated"]) == written
    for relative in table["annotated"]:
        assert (output / relative).resolve().parent == annotated.resolve()
    assert (output / "gallery.png").is_file()
    _assert_safe(output_names([Path(p) for p in table["photo"]]), annotated)


def test_an_annotated_copy_never_replaces_its_input(checkpoint, faces, run_env, tmp_path):
    """Predicting again on a run's own annotated/ folder, into the same run folder: the inputs
    stay as they are."""
    output = tmp_path / "run"
    (output / "annotated").mkdir(parents=True)
    for source in faces[:2]:
        shutil.copy(source, output / "annotated" / source.name)
    before = file_stamps(output / "annotated")
    result = _predict(
        checkpoint, str(output / "annotated"), output, run_env, "annotate=true", "detect=false"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert file_stamps(output / "annotated") == before
    table = pd.read_csv(output / "predictions.csv", keep_default_na=False)
    assert (table["status"] == "ok").all()
    assert table["error"].str.contains("is the input photo itself").all()


# --------------------------------------------------------------------------- export


def _export(*arguments: str | Path) -> subprocess.CompletedProcess:
    """The export command, in this process (its command line in a subprocess:
    tests/test_checkpoints.py): exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = export_main([str(a) for a in arguments])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return subprocess.CompletedProcess(arguments, code, out.getvalue(), err.getvalue())


def test_export_never_overwrites_its_checkpoint_or_an_existing_file(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="the predict extra installs onnxruntime")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = run / "checkpoints" / "best.ckpt"
    shutil.copy(checkpoint, model)
    (run / "link.ckpt").symlink_to(model)
    (run / "alias.onnx").symlink_to(model)
    before = model.read_bytes()
    # The checkpoint itself, however spelled: refused, even with --force.
    for output in (
        model,
        run / "link.ckpt",
        run / "alias.onnx",
        run / "checkpoints" / ".." / "checkpoints" / "best.ckpt",
        Path(os.path.relpath(model)),  # relative to where the command runs
    ):
        for force in ((), ("--force",)):
            result = _export(model, output, *force)
            assert result.returncode != 0, output
            assert "Traceback" not in result.stderr
            assert "input checkpoint" in result.stderr and "refusing" in result.stderr, output
            assert model.read_bytes() == before
    # Another existing file: refused without --force, replaced with it.
    existing = run / "model.onnx"
    existing.write_text("someone's notes, not an export")
    result = _export(model, existing)
    assert result.returncode != 0 and "--force" in result.stderr
    assert existing.read_text() == "someone's notes, not an export"
    # Replaced with the permissions the user's umask gives, read without setting it.
    previous = os.umask(0o027)
    try:
        with umask_calls() as calls:
            result = _export(model, existing, "--force")
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr[-3000:]
    assert calls == []
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    predictor = GenderPredictor.load(existing)
    settings = GenderPredictor.load(model).eval_transform  # the export leaves out cache_size
    assert predictor.eval_transform == {k: v for k, v in settings.items() if k != "cache_size"}
    assert model.read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == [
        "alias.onnx",
        "checkpoints",
        "link.ckpt",
        "model.onnx",
    ]  # no temporary file left


# --------------------------------------------------------------------------- review: odd inputs


def test_odd_folder_entries_and_undecodable_names_get_rows(checkpoint, faces, run_env, tmp_path):
    """A folder holding a photo whose name is not UTF-8, a dangling link and a FIFO named like
    photos: each gets its row (none is skipped unseen, none stops the job), the CSV and the
    JSON stay valid and agree, the log file gets its lines (no logging traceback); a link left
    in a reused output folder's annotated/ is replaced, never written through."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(faces[0], folder / "good.jpg")
    odd = Path(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))  # Latin-1 bytes: not UTF-8
    shutil.copy(faces[1], odd)
    # Not UTF-8 and not an image: its warning goes to the log file too.
    Path(os.fsdecode(bytes(folder) + b"/junk\xff.jpg")).write_bytes(b"not a photo")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(folder / "pipe.jpg")
    output = tmp_path / "out"
    (output / "annotated").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("not to be overwritten")
    (output / "annotated" / "good.jpg").symlink_to(victim)
    result = _predict(checkpoint, str(folder), output, run_env, "annotate=true", "detect=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    table = pd.read_csv(output / "predictions.csv", keep_default_na=False)
    status = dict(zip(table["photo"].map(lambda p: Path(p).name), table["status"], strict=True))
    assert status == {
        "caf\\xe9.jpg": "ok",
        "dangling.png": "error",
        "good.jpg": "ok",
        "junk\\xff.jpg": "error",
        "pipe.jpg": "error",
    }
    records = json.loads((output / "predictions.json").read_text())
    assert [r["photo"] for r in records] == list(table["photo"])
    assert "junk\\xff.jpg" in (output / "predict.log").read_text(encoding="utf-8")
    assert victim.read_text() == "not to be overwritten"
    assert not (output / "annotated" / "good.jpg").is_symlink()


def test_a_stop_during_the_writes_keeps_csv_and_json_equal(
    checkpoint, faces, tmp_path, monkeypatch, ctrl_c_reaches_this_process
):
    """SIGINT arriving between a photo's CSV write and its JSON write: both files still end
    with the same photos (the stop waits until the photo is in both)."""
    from omegaconf import OmegaConf

    from celeba_gender.inference import run as predict_run

    cfg = OmegaConf.load(REPO / "conf" / "predict.yaml")
    for key in ("defaults", "hydra"):
        cfg.pop(key)
    cfg.merge_with(
        {
            "paths": {"output_dir": str(tmp_path / "out")},
            "ckpt_path": str(checkpoint),
            "input": [str(path) for path in faces[:4]],
            "detect": False,
            "gallery": False,
            "batch_size": 1,
        }
    )
    from celeba_gender.inference import row_files

    write = row_files.write_all
    calls = []

    def write_then_stop(descriptor, data):
        write(descriptor, data)
        calls.append(data)
        if len(calls) == 3:  # the header, then photo 1; photo 2's CSV rows: stop now
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(row_files, "write_all", write_then_stop)
    with pytest.raises(predict_run.PredictionInterrupted):
        predict_run.predict(cfg)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["photo"] for r in records] == list(table["photo"])
    assert len(table) == 2


def test_export_into_a_folder_that_cannot_be_made_is_one_line(checkpoint, tmp_path, capsys):
    from celeba_gender.inference.export import main

    blocker = tmp_path / "file"
    blocker.write_text("a file where the output's folder would be")
    assert main([str(checkpoint), str(blocker / "sub" / "model.onnx")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot write") and error.count("\n") == 1, error
    assert blocker.read_text() == "a file where the output's folder would be"


def _predict_config(checkpoint: Path, inputs: list[Path], output: Path, **settings):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "predict.yaml")
    for key in ("defaults", "hydra"):
        cfg.pop(key)
    cfg.merge_with(
        {
            "paths": {"output_dir": str(output)},
            "ckpt_path": str(checkpoint),
            "input": [str(path) for path in inputs],
            "detect": False,
            "gallery": False,
        }
        | settings
    )
    return cfg


def test_an_output_that_cannot_be_written_is_one_line(
    checkpoint, faces, tmp_path, monkeypatch, capsys
):
    """A full disk while writing rows, and batch_size=0: one line and exit status 2."""
    import errno

    from celeba_gender.inference import row_files
    from celeba_gender.inference import run as predict_run

    def full_disk(descriptor, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(row_files, "write_all", full_disk)
    cfg = _predict_config(checkpoint, faces[:2], tmp_path / "out")
    with pytest.raises(SystemExit) as stopped:
        predict_run.run_prediction(cfg)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert "No space left" in error
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        predict_run.run_prediction(_predict_config(checkpoint, faces[:2], tmp_path, batch_size=0))
    assert capsys.readouterr().err.startswith("error: batch_size=0")


# predict's schema (celeba_gender/inference/schema.py): each value it does not allow, refused in
# one line before the model loads or anything is written. Before the schema, these ran with the
# value (a threshold of 1.5 labels every face female), or failed at the first face.
BAD_PREDICT_SETTINGS = [
    ({"threshold": 1.5}, "threshold=1.5 is not allowed: expected a finite number >= 0 and <= 1."),
    ({"gallery_columns": 0}, "gallery_columns=0 is not allowed: expected an integer >= 1."),
    ({"max_pixels": "many"}, "max_pixels=many is not allowed: expected an integer >= 1."),
    ({"explain_alpha": 2}, "explain_alpha=2 is not allowed: expected a finite number >= 0 and"),
    ({"explain": True, "explain_colormap": "rainbowish"}, "explain_colormap=rainbowish is not "
     "allowed: expected a matplotlib colormap name"),
    ({"explain_toward": "female"}, "explain_toward=female is not allowed: expected one of "
     "predicted, male."),
    ({"alignment": {"min_score": 1.5}}, "alignment.min_score=1.5 is not allowed: expected a "
     "finite number >= 0 and <= 1."),
    ({"annotate": "yes"}, "annotate='yes' is not allowed: expected true or false."),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "named"), BAD_PREDICT_SETTINGS)
def test_predict_refuses_a_value_its_schema_does_not_allow_before_anything_runs(
    settings, named, checkpoint, faces, tmp_path, capsys
):
    from celeba_gender.inference import run as predict_run

    output = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        predict_run.run_prediction(_predict_config(checkpoint, faces[:1], output, **settings))
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {named}") and error.count("\n") == 1, error
    assert not output.exists()


def test_predict_without_a_checkpoint_or_with_an_unread_key_says_so_in_one_line(
    checkpoint, faces, run_env, tmp_path
):
    """The command: ckpt_path left at ??? and a +key nothing reads, each one line, status 2."""
    missing = run_script("predict.py", f"input={faces[0]}", f"hydra.run.dir={tmp_path / 'a'}")
    typo = _predict(checkpoint, [faces[0]], tmp_path / "b", run_env, "+treshold=0.7")
    for result, line in (
        (missing, "error: ckpt_path=??? is not allowed: expected a string (required: ckpt_path="),
        (typo, "error: +treshold=0.7 is not allowed: expected a key something reads"),
    ):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "a" / "predictions.csv").exists()
    assert "threshold, perhaps" in typo.stderr and "one under )" not in typo.stderr


def test_links_left_in_a_reused_output_folder_are_not_written_through(checkpoint, faces, tmp_path):
    from celeba_gender.inference.run import predict

    output = tmp_path / "out"
    output.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("not to be overwritten")
    for name in ("predictions.csv", "gallery.png"):
        (output / name).symlink_to(victim)
    predict(_predict_config(checkpoint, faces[:2], output, gallery=True))
    assert victim.read_text() == "not to be overwritten"
    assert len(pd.read_csv(output / "predictions.csv")) == 2
    assert not (output / "gallery.png").is_symlink()


def test_names_a_spreadsheet_would_run_are_written_as_text_and_read_back_exactly(
    checkpoint, faces, tmp_path, monkeypatch
):
    from celeba_gender.inference.run import predict

    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["=HYPERLINK(1).jpg", "+cmd.jpg", "-x.jpg", "@sum.jpg", "'quoted.jpg", "plain.jpg"]
    for name, source in zip(names, faces, strict=False):
        shutil.copy(source, folder / name)
    monkeypatch.chdir(folder)  # photos named as given on the command line: the bare names
    output = tmp_path / "out"
    predict(_predict_config(checkpoint, [Path(name) for name in names], output))
    lines = (output / "predictions.csv").read_text().splitlines()
    cells = {line.split(",")[0].strip('"') for line in lines[1:]}
    assert cells == {"'=HYPERLINK(1).jpg", "'+cmd.jpg", "'-x.jpg", "'@sum.jpg", "''quoted.jpg"} | {
        "plain.jpg"
    }
    table = unquote_frame(pd.read_csv(output / "predictions.csv"))
    assert sorted(table["photo"]) == sorted(names)  # exactly the names, read back
    # A run's own predictions (the dataset's file names) round-trip through the analysis.
    rows = pd.DataFrame({"file_name": ["=1+1.jpg", "-2.jpg", "ok.jpg"]})
    write_predictions(
        tmp_path / "test_predictions.csv",
        EvaluationOutputs(
            rows=torch.tensor([0, 1, 2]),
            labels=torch.tensor([1, 0, 1]),
            p_male=torch.tensor([0.25, 0.5, 0.75]),
            losses=torch.zeros(3),
            weights=torch.ones(3),
        ),
        rows,
    )
    read = read_predictions(tmp_path, "test")
    assert list(read["file_name"]) == ["=1+1.jpg", "-2.jpg", "ok.jpg"]
    assert list(read["p_male"]) == [0.25, 0.5, 0.75]  # numbers stay numbers


def test_predict_never_overwrites_an_earlier_prediction(checkpoint, faces, tmp_path):
    output = tmp_path / "out"
    first = run_script(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input=[{faces[0]}]",
        "detect=false",
        f"hydra.run.dir={output}",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    before = file_stamps(output)
    second = run_script(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input=[{faces[1]}]",
        "detect=false",
        f"hydra.run.dir={output}",
    )
    assert second.returncode == 2
    assert f"{output} already holds predictions (predictions.csv, predictions.json)" in (
        second.stderr
    )
    assert "Traceback" not in second.stderr
    after = file_stamps(output)
    for name in ("predictions.csv", "predictions.json"):  # the first run's, untouched
        assert after[name] == before[name]
