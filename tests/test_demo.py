"""The browser demo (python -m celeba_gender.demo): its named API endpoint called with
gradio_client, bad uploads, and the page driven in a real headless chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import forked_python
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, as_at_a_terminal, run_script
from hydra import compose, initialize_config_dir
from PIL import Image
from test_checkpoints import _onnx_model

from celeba_gender.config_schema import ConfigError
from celeba_gender.demo import Demo, run_demo
from celeba_gender.demo_files import PhotoIntake, PrivateFolder
from celeba_gender.inference import FaceAligner, GenderPredictor
from celeba_gender.inference.explain import face_caption, picture_layout
from celeba_gender.inference.framing import smooth_background
from celeba_gender.inference.labelling import label_of, predict_photos

gradio_client = pytest.importorskip("gradio_client", reason="the demo extra (in dev) has gradio")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships photos")
MAX_PIXELS = 4_000_000  # the server's max_pixels: the 9-megapixel photo below is over it
MAX_UPLOAD_MB = 2  # the server's max_upload_mb
STARTUP_S = 180


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A real uncropped portrait (scikit-image's astronaut), a photo with no face, a text file
    named like a photo and a 9-megapixel photo (a few kilobytes on disk)."""
    folder = tmp_path_factory.mktemp("demo_photos")
    paths = {name: folder / name for name in ("astronaut.jpg", "no_face.png", "notes.jpg")}
    Image.fromarray(skimage_data.astronaut()).save(paths["astronaut.jpg"], quality=92)
    smooth_background((400, 300), np.random.default_rng(0)).save(paths["no_face.png"])
    paths["notes.jpg"].write_text("not a photo\n")
    paths["bomb.png"] = folder / "bomb.png"
    Image.new("L", (3000, 3000)).save(paths["bomb.png"])
    return paths


@pytest.fixture(scope="module")
def sweep(smoke_run, tmp_path_factory) -> Path:
    """A sweep folder of two jobs (the smoke run's files, linked, under two job names) and a job
    without a checkpoint, which the picker leaves out."""
    folder = tmp_path_factory.mktemp("sweep")
    for job in ("0_resnet18_scratch_bce_seed0", "1_resnet18_scratch_bce_seed1"):
        (folder / job).mkdir()
        for part in (".hydra", "checkpoints"):
            (folder / job / part).symlink_to(smoke_run / part)
    unfinished = folder / "2_vgg11_scratch_bce_seed0" / ".hydra"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").symlink_to(smoke_run / ".hydra" / "config.yaml")
    return folder


@pytest.fixture(scope="module")
def ranked_sweep(smoke_run, run_env, tmp_path_factory) -> tuple[Path, list[str]]:
    """A sweep of two real finished runs, two configurations (the smoke run, resnet18
    scratch_bce, and the same recipe with scratch_ce), the worse on validation as job 0: the
    sweep folder and its job names, worse first."""
    other = tmp_path_factory.mktemp("smoke_ce") / "run"
    result = run_script(
        "train.py", "experiment=smoke", "treatment=scratch_ce", f"hydra.run.dir={other}",
        env=run_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    def validation_accuracy(run: Path) -> float:
        table = pd.read_csv(run / "val_predictions.csv")
        return float(((table["p_male"] > 0.5).astype(int) == table["label"]).mean())

    runs = sorted([smoke_run, other], key=validation_accuracy)
    assert validation_accuracy(runs[0]) < validation_accuracy(runs[1]), "a tie: no best"
    folder = tmp_path_factory.mktemp("ranked") / "sweep"
    folder.mkdir()
    names = []
    for number, run in enumerate(runs):
        treatment = json.loads((run / "metrics.json").read_text())["treatment"]
        names.append(f"{number}_resnet18_{treatment}_seed42")
        (folder / names[-1]).symlink_to(run)
    return folder, names


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _demo(*overrides: str, env: dict, output: Any = subprocess.PIPE) -> subprocess.Popen:
    return forked_python.Popen(
        [sys.executable, "-m", "celeba_gender.demo", *overrides],
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
    )


def _wait_for_page(process: subprocess.Popen, url: str, terminal: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"the demo did not start: {terminal.read_text()[-3000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def demo_server(sweep, run_env, tmp_path_factory):
    """The demo as a user starts it, on the sweep, at a free port, taking photos up to
    MAX_UPLOAD_MB: its URL, the file its terminal output goes to and its private folder."""
    port = _free_port()
    log = tmp_path_factory.mktemp("demo_run")
    terminal = log / "terminal.txt"
    files = log / "files"
    files.mkdir()
    process = _demo(
        f"ckpt_path={sweep}",
        f"port={port}",
        f"max_pixels={MAX_PIXELS}",
        f"max_upload_mb={MAX_UPLOAD_MB}",
        f"files.folder={files}",
        f"hydra.run.dir={log}",
        env=run_env,
        output=terminal.open("w"),
    )
    url = f"http://127.0.0.1:{port}/"
    _wait_for_page(process, url, terminal)
    (private,) = files.iterdir()
    yield url, terminal, private
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(demo_server) -> str:
    return demo_server[0]


@pytest.fixture(scope="module")
def expected(smoke_run, photos) -> dict:
    """predict's own row for the portrait's face (predict_photos, in this process)."""
    predictor = GenderPredictor.load(smoke_run / "checkpoints" / "best.ckpt")
    result = next(predict_photos([photos["astronaut.jpg"]], predictor, FaceAligner.from_config()))
    assert [row["status"] for row in result.rows] == ["ok"]
    return result.rows[0]


def _demo_config(*overrides: str):
    """conf/demo.yaml as the command composes it."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("demo", overrides=list(overrides))


@pytest.fixture(scope="module")
def smoke_demo(smoke_run) -> Demo:
    """The page's work, in this process, on the smoke run's checkpoint, default settings."""
    return Demo(_demo_config(f"ckpt_path={smoke_run / 'checkpoints' / 'best.ckpt'}"))


def _pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=float)


def _region(picture: Image.Image, corner: tuple[int, int]) -> np.ndarray:
    """The 178x218 crop-sized region of ``picture`` at ``corner`` (left, top)."""
    left, top = corner
    return _pixels(picture.crop((left, top, left + 178, top + 218)))


def test_demo_shows_each_crop_beside_its_heat_map_with_predicts_settings(smoke_demo, photos):
    answer = smoke_demo.answer(str(photos["astronaut.jpg"]))
    ((crop, plain_caption),) = answer.crops  # without explain: the crop alone
    assert crop.size == (178, 218)
    ((picture, caption),), message = smoke_demo.explained(answer)
    assert message == answer.message and "No heat maps" not in message
    row = answer.faces[0]
    assert plain_caption == f"face 0: {row['label']}, P(male) {row['p_male']}"
    # predict's explained picture (explain_toward=predicted): caption, crop, map, colour bar.
    assert caption == face_caption(0, row["label"], row["p_male"]).replace("\n", "; ")
    layout = picture_layout(crop.size, 2)
    assert picture.size == layout["size"]
    assert np.array_equal(_region(picture, layout["crop"]), _pixels(crop))
    assert np.abs(_region(picture, layout["overlay"]) - _pixels(crop)).mean() > 5
    # The settings are predict's config values: no opacity, the crop itself; toward male.
    smoke_demo.cfg.explain_alpha, smoke_demo.cfg.explain_toward = 0.0, "male"
    try:
        ((picture, caption),), _ = smoke_demo.explained(answer)
    finally:
        smoke_demo.cfg.explain_alpha, smoke_demo.cfg.explain_toward = 0.45, "predicted"
    assert np.abs(_region(picture, layout["overlay"]) - _pixels(crop)).max() <= 1
    assert caption.endswith("heat map: evidence for male")


def test_demo_without_gradients_or_captum_shows_the_crops_and_says_why(
    smoke_run, photos, tmp_path, monkeypatch
):
    pytest.importorskip("onnxruntime")
    transform = GenderPredictor.load(smoke_run / "checkpoints" / "best.ckpt").eval_transform
    onnx_model = _onnx_model(tmp_path / "model.onnx", json.dumps(transform), 1)
    demo = Demo(_demo_config(f"ckpt_path={onnx_model}"))
    answer = demo.answer(str(photos["astronaut.jpg"]))
    crops, message = demo.explained(answer)
    assert [picture.size for picture, _ in crops] == [(178, 218)]  # the crop alone
    first, why = message.split("\n\n")
    assert first == answer.message and first.startswith("model.onnx: face 0")
    assert why.startswith("No heat maps: ") and "ONNX model gives no gradients" in why
    # No captum here: the checkpoint's crops alone, and the line saying how to install it.
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    demo = Demo(_demo_config(f"ckpt_path={smoke_run / 'checkpoints' / 'best.ckpt'}"))
    crops, message = demo.explained(demo.answer(str(photos["astronaut.jpg"])))
    assert [picture.size for picture, _ in crops] == [(178, 218)]
    assert message.splitlines()[-1] == (
        "No heat maps: Heat maps need captum: pip install -e '.[explain]' (the dev extra has it)."
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("explain_colormap=rainbowish", "explain_colormap=rainbowish is not allowed: expected a "
         "matplotlib colormap"),
        ("explain_toward=female", "explain_toward=female is not allowed: expected one of "
         "predicted, male."),
        ("explain_alpha=1.5", "explain_alpha=1.5 is not allowed: expected a finite number >= 0 "
         "and <= 1."),
        ("models_in_memory=0", "models_in_memory=0 is not allowed: expected an integer >= 1."),
        ("port=70000", "port=70000 is not allowed: expected an integer >= 1 and <= 65535."),
        ("threshold=-0.1", "threshold=-0.1 is not allowed: expected a finite number >= 0"),
    ],
)  # fmt: skip
def test_demo_refuses_bad_settings_by_its_schema_when_it_starts(smoke_run, override, named):
    """The demo's schema (predict's, and the page's own settings), before any port is opened
    or model loaded."""
    checkpoint = smoke_run / "checkpoints" / "best.ckpt"
    with socket.socket() as taken:  # a demo that got past its schema stops here, not serves
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = [] if override.startswith("port=") else [f"port={taken.getsockname()[1]}"]
        with pytest.raises(ConfigError, match="^" + re.escape(named)):
            run_demo(_demo_config(f"ckpt_path={checkpoint}", *port, override))


def _rows(table: dict) -> list[dict]:
    return [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]


def test_demo_api_labels_a_real_portrait_as_predict_does(server, photos, expected):
    client = gradio_client.Client(server, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    endpoint = endpoints["/predict"]
    photo, model = endpoint["parameters"]
    # The picker: the sweep's jobs with a checkpoint; no run recorded accuracies: the first.
    assert model["type"]["enum"] == ["0_resnet18_scratch_bce_seed0", "1_resnet18_scratch_bce_seed1"]
    assert model["parameter_default"] == "0_resnet18_scratch_bce_seed0"
    # What the page shows, each under its own name.
    assert [output["label"] for output in endpoint["returns"]] == [
        "Annotated photo", "Faces table", "Aligned crops and heat maps", "Message",
        "Model description",
    ]  # fmt: skip
    annotated, table, crops, message, about = client.predict(
        gradio_client.handle_file(photos["astronaut.jpg"]), api_name="/predict"
    )
    (row,) = _rows(table)
    assert row["status"] == "ok" and row["note"] is None
    # Rounded as predict rounds (conf/predict.yaml's decimals: 4 for P(male), 1 for boxes).
    assert row["p_male"] == round(row["p_male"], 4) == pytest.approx(expected["p_male"], abs=1e-4)
    assert row["label"] == expected["label"] == label_of(row["p_male"], 0.5)
    for key in ("x1", "y1", "x2", "y2"):
        assert row[key] == round(row[key], 1) == pytest.approx(expected[key], abs=0.5)
    face = f"face 0 {row['label']} (P(male) {row['p_male']})"
    assert message == f"0_resnet18_scratch_bce_seed0: {face}"
    assert about == (  # the sweep's jobs kept no metrics.json
        "0_resnet18_scratch_bce_seed0: resnet18 (no metrics.json: the job did not finish; "
        "accuracies unknown)"
    )
    # The crop beside its heat map, captioned with the table's numbers.
    (crop,) = crops
    assert crop["caption"] == face_caption(0, row["label"], row["p_male"]).replace("\n", "; ")
    assert Image.open(crop["image"]).size == picture_layout((178, 218), 2)["size"]
    # The annotated photo: the portrait's size, with the face's box drawn on it.
    original = np.asarray(Image.open(photos["astronaut.jpg"]).convert("RGB"), float)
    drawn = np.asarray(Image.open(annotated).convert("RGB"), float)
    assert drawn.shape == original.shape
    box = np.abs(drawn - original)[int(row["y1"]) : int(row["y2"]), int(row["x1"]) - 3 :][:, :6]
    assert box.mean() > 20  # the box's left edge
    # The second job of the sweep by name: the same weights, the same answer.
    _, other, *_ = client.predict(
        gradio_client.handle_file(photos["astronaut.jpg"]),
        "1_resnet18_scratch_bce_seed1",
        api_name="/predict",
    )
    assert _rows(other)[0]["p_male"] == pytest.approx(row["p_male"], abs=1e-6)


def test_demo_api_explains_bad_uploads(server, photos):
    client = gradio_client.Client(server, verbose=False)

    def ask(name: str) -> tuple[str | None, dict]:
        annotated, table, *_ = client.predict(
            gradio_client.handle_file(photos[name]), api_name="/predict"
        )
        (row,) = _rows(table)
        return annotated, row

    annotated, row = ask("notes.jpg")
    assert annotated is None and row["status"] == "error"
    # The upload's own name, not the server's temporary path.
    assert row["note"].startswith("notes.jpg: not a readable image"), row["note"]
    annotated, row = ask("bomb.png")
    assert annotated is None and row["status"] == "error"
    assert "max_pixels" in row["note"] and "bomb.png" in row["note"], row["note"]
    annotated, row = ask("no_face.png")
    assert row["status"] == "no_face" and row["note"] == "no face found"
    assert Image.open(annotated).size == Image.open(photos["no_face.png"]).size


def _call_predict(url: str, photo: Any) -> tuple[int, Any]:
    """The predict endpoint called as a REST client does (POST the inputs, read the event):
    the HTTP status and, for an answer, its outputs, else the error's message."""
    request = urllib.request.Request(
        f"{url}gradio_api/call/predict",
        json.dumps({"data": [photo, None]}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            event = json.load(response)["event_id"]
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())["detail"]
    with urllib.request.urlopen(f"{url}gradio_api/call/predict/{event}", timeout=120) as stream:
        lines = stream.read().decode().splitlines()
    kind = next(line.removeprefix("event: ") for line in lines if line.startswith("event: "))
    data = json.loads(next(line[len("data: ") :] for line in lines if line.startswith("data")))
    return 200, data if kind == "complete" else {"error": data["error"]}


def _files(folder: Path) -> set[str]:
    return {str(file.relative_to(folder)) for file in folder.rglob("*") if file.is_file()}


def test_demo_takes_a_photo_any_way_it_comes_bounded_before_decoding(demo_server, photos, expected):
    """An upload, a data: URL and bare base64 are answered alike; a photo over max_pixels sent
    as a data: URL is refused from its header (nothing decoded: Gradio used to decode and save
    it first); a body over the size limit, a URL (never fetched) and other values are refused
    with a message to the client, not {"error": null}."""
    url, _, private = demo_server
    portrait = base64.b64encode(photos["astronaut.jpg"].read_bytes()).decode()
    for form in (f"data:image/jpeg;base64,{portrait}", portrait):
        for value in ({"url": form, "path": None, "meta": {"_type": "gradio.FileData"}}, form):
            status, outputs = _call_predict(url, value)
            assert status == 200 and "error" not in outputs, outputs
            (row,) = _rows(outputs[1])
            assert row["status"] == "ok"
            assert row["p_male"] == pytest.approx(expected["p_male"], abs=1e-4)
    bomb = photos["bomb.png"].read_bytes()
    before = _files(private)
    status, outputs = _call_predict(
        url, {"url": "data:image/png;base64," + base64.b64encode(bomb).decode(), "path": None}
    )
    (row,) = _rows(outputs[1])
    assert outputs[0] is None and row["status"] == "error" and "max_pixels" in row["note"], row
    # Only the photo's bytes were written (predict read its header): no decoded copy.
    assert _files(private) - before == {f"{hashlib.sha256(bomb).hexdigest()}/photo"}
    # Over the limit: refused by its size before the body is read.
    too_big = "data:image/png;base64," + "A" * int(MAX_UPLOAD_MB * 2**20 * 4 / 3 + 100_000)
    status, detail = _call_predict(url, {"url": too_big, "path": None})
    assert status == 413 and f"photos up to {MAX_UPLOAD_MB} MB (max_upload_mb)" in detail, detail
    network = "the demo fetches nothing from the network"
    refused = {
        "https://example.com/face.jpg": network,
        json.dumps({"url": "http://example.com/face.jpg", "path": None}): network,
        json.dumps({"path": "http://example.com/f.jpg", "meta": {"_type": "gradio.FileData"}}): (
            network
        ),
        json.dumps({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}): (
            "not uploaded by a user"
        ),
        "data:image/png;base64,@@not base64@@": "not valid base64",
        "data:image/png,raw": "must be base64",
        "12": "no photo: send a file upload, a data: URL or base64 text",
        # A server path without Gradio's file marker: not read (it was, whatever file it was).
        json.dumps({"path": str(photos["astronaut.jpg"])}): "not a photo this demo received",
    }
    for value, message in refused.items():
        photo = json.loads(value) if value[0] in "{1" else value
        status, outputs = _call_predict(url, photo)
        assert status == 200 and message in (outputs.get("error") or ""), (value, outputs)


def test_demo_keeps_its_files_in_a_private_folder(demo_server, photos):
    """The visitors' photos and the page's pictures go to the demo's own folder, mode 0700 (not
    /tmp/gradio, open to every user of the machine)."""
    url, terminal, private = demo_server
    assert private.stat().st_mode & 0o777 == 0o700
    assert f"photos are kept in {private} (0700)" in terminal.read_text()
    client = gradio_client.Client(url, verbose=False)
    annotated, *_ = client.predict(gradio_client.handle_file(photos["no_face.png"]))
    kept = _files(private)
    assert any(Path(file).name == "no_face.png" for file in kept), kept  # the upload
    assert any(file.endswith(".webp") for file in kept), kept  # the annotated photo
    assert Path(annotated).is_file()  # the client's own copy


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_demo_deletes_its_files_when_it_stops(stop, smoke_run, run_env, photos, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    port = _free_port()
    terminal = tmp_path / "terminal.txt"
    process = forked_python.Popen(  # Ctrl-C reaches it as at a terminal (not ignored by a shell)
        [sys.executable, "-m", "celeba_gender.demo", f"ckpt_path={smoke_run}", f"port={port}",
         "explain=false", f"files.folder={files}", f"hydra.run.dir={tmp_path / 'log'}"],
        stdout=terminal.open("w"), stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, **run_env},
        preexec_fn=as_at_a_terminal,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    _wait_for_page(process, url, terminal)
    (private,) = files.iterdir()
    gradio_client.Client(url, verbose=False).predict(
        gradio_client.handle_file(photos["astronaut.jpg"])
    )
    assert _files(private)
    process.send_signal(stop)
    assert process.wait(timeout=60) == 128 + stop, terminal.read_text()[-3000:]
    assert not private.exists() and list(files.iterdir()) == []
    assert "Traceback" not in terminal.read_text()


def test_demo_files_older_than_their_age_are_deleted_while_it_runs(tmp_path):
    folder = PrivateFolder.create(tmp_path, max_age_minutes=1)
    old, young = folder.path / "a" / "old.png", folder.path / "b" / "young.png"
    for file in (old, young):
        file.parent.mkdir()
        file.write_bytes(b"face")
    os.utime(old, (time.time() - 61, time.time() - 61))
    assert folder.delete_older() == 1
    assert not old.parent.exists() and young.is_file()
    # The sweep runs by itself, as often as the age (at most every minute).
    folder.max_age_s = 0.2
    folder.start_sweeping()
    deadline = time.monotonic() + 30
    while young.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not young.exists()
    folder.close()
    assert not folder.path.exists()


def test_photo_intake_refuses_a_photo_over_the_limit_by_its_encoded_size(tmp_path):
    """The body limit stops big requests; the intake names the photo's own size."""
    intake = PhotoIntake(tmp_path, max_upload_mb=0.001)  # 1,048 bytes
    small = base64.b64encode(b"x" * 1000).decode()
    assert Path(intake.file(url=small)).read_bytes() == b"x" * 1000
    with pytest.raises(Exception, match=r"the photo is 0.0 MB; the demo takes photos up to 0.001"):
        intake.file(url="data:image/png;base64," + base64.b64encode(b"x" * 1100).decode())


@pytest.mark.parametrize(
    ("override", "named"),
    [("files.max_age_minutes=0", "files.max_age_minutes=0"),
     ("files.folder=/no/such/folder", "files.folder=/no/such/folder: no such folder"),
     ("max_upload_mb=-1", "max_upload_mb=-1"), ("max_upload_mb=inf", "max_upload_mb=inf")],
)  # fmt: skip
def test_demo_refuses_bad_file_settings_in_one_line(override, named, smoke_run, run_env, tmp_path):
    process = _demo(
        f"ckpt_path={smoke_run}", f"port={_free_port()}", override,
        f"hydra.run.dir={tmp_path / 'log'}", env=run_env,
    )  # fmt: skip
    output = process.communicate(timeout=STARTUP_S)[0]
    assert process.returncode == 2 and "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {named}"), line


def test_demo_prints_its_address_and_model_but_no_share_hint(demo_server):
    """A command-line user is told where the page is and which model it runs, not Gradio's
    advice to make a public link (share=True)."""
    url, terminal, _ = demo_server
    output = terminal.read_text()
    assert f"* Running on local URL:  {url}" in output, output[-3000:]
    assert "celeba-gender demo of 0_resnet18_scratch_bce_seed0: resnet18" in output
    assert "share=True" not in output and "public link" not in output, output[-3000:]


def test_demo_on_a_sweep_starts_on_its_validation_best_run_and_names_it(ranked_sweep, photos):
    """Job 0 is worse on validation than job 1: the page opens on job 1, the run the
    analysis calls best, and says what it is and how well it did."""
    folder, (worse, best) = ranked_sweep
    demo = Demo(_demo_config(f"ckpt_path={folder}", "explain=false"))
    assert list(demo.models) == [worse, best]
    assert demo.default_model == best
    # The analysis' own choice (its report's and the README pictures' run).
    from celeba_gender.analysis.collect import collect_runs
    from celeba_gender.analysis.report import validation_best_run, with_validation_accuracy

    assert validation_best_run(with_validation_accuracy(collect_runs(folder)))["job"] == best
    record = json.loads((folder / best / "metrics.json").read_text())
    validation = pd.read_csv(folder / best / "val_predictions.csv")
    accuracy = ((validation["p_male"] > 0.5).astype(int) == validation["label"]).mean()
    assert demo.describe(best) == (
        f"{best}: resnet18, scratch_ce, experiment smoke; validation accuracy "
        f"{100 * accuracy:.1f}% of {len(validation)} images, test accuracy "
        f"{100 * record['test/acc']:.1f}% of {record['test_images']} images"
    )
    answer = demo.answer(str(photos["astronaut.jpg"]))
    assert answer.message.startswith(f"{best}: face 0") and answer.about == demo.describe(best)


def test_demo_refuses_a_folder_without_models_in_one_line(sweep, run_env, tmp_path):
    empty = tmp_path / "empty_sweep"  # a job that has not saved a checkpoint yet
    (empty / "0_resnet18" / ".hydra").mkdir(parents=True)
    (empty / "0_resnet18" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    process = _demo(f"ckpt_path={empty}", f"hydra.run.dir={tmp_path / 'log'}", env=run_env)
    output = process.communicate(timeout=STARTUP_S)[0]
    assert process.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert str(empty) in line and "checkpoints/best.ckpt" in line


# In the page: the mean absolute difference between a gallery picture's crop and the crop
# under its heat map (where explain.picture_layout puts them), read back through a canvas.
HALVES_DIFFER_JS = """(image, {crop, overlay, size}) => {
    const canvas = document.createElement("canvas");
    const [width, height] = [image.naturalWidth, image.naturalHeight];
    Object.assign(canvas, {width, height});
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const left = context.getImageData(crop[0], crop[1], size[0], size[1]).data;
    const right = context.getImageData(overlay[0], overlay[1], size[0], size[1]).data;
    let total = 0;
    for (let i = 0; i < left.length; i += 4)
        for (let c = 0; c < 3; c++) total += Math.abs(left[i + c] - right[i + c]);
    return {width, difference: total / (3 * size[0] * size[1])};
}"""


@pytest.mark.parametrize("case", ["port in use", "unknown host", "no ckpt_path"])
def test_demo_says_in_one_line_what_is_wrong_with_host_port_or_ckpt_path(
    case, smoke_run, run_env, tmp_path
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        overrides, expected = {
            "port in use": (
                [f"port={port}"],
                f"error: port={port}: another program listens there on 127.0.0.1; pass another "
                f"port (e.g. port={port + 1})",
            ),
            "unknown host": (
                ["host=256.0.0.1", f"port={_free_port()}"],
                "error: host=256.0.0.1: not a name or address this machine can resolve",
            ),
            "no ckpt_path": ([], "error: ckpt_path is missing: python -m celeba_gender.demo"),
        }[case]
        if case != "no ckpt_path":
            overrides.append(f"ckpt_path={smoke_run / 'checkpoints' / 'best.ckpt'}")
        process = _demo(*overrides, f"hydra.run.dir={tmp_path / 'log'}", env=run_env)
        output = process.communicate(timeout=STARTUP_S)[0]
    assert process.returncode == 2 and "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "rror" in line]
    assert line.startswith(expected), line


def test_a_sweep_whose_first_checkpoint_is_unreadable_still_gets_a_page(sweep, photos, tmp_path):
    """A failed job's truncated best.ckpt first in the sweep: the page opens on the next model,
    and picking the broken one says what is wrong with it."""
    broken = tmp_path / "sweep"
    broken.mkdir()
    for job in sweep.iterdir():
        (broken / job.name).symlink_to(job)
    failed = broken / "00_vgg11_scratch_bce_seed0"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (failed / "metrics.json").write_text('{"status": "failed"}\n')
    (failed / "checkpoints").mkdir()
    good = sweep / "0_resnet18_scratch_bce_seed0" / "checkpoints" / "best.ckpt"
    (failed / "checkpoints" / "best.ckpt").write_bytes(good.read_bytes()[:4000])
    demo = Demo(_demo_config(f"ckpt_path={broken}", "explain=false"))
    assert list(demo.models)[0] == failed.name
    assert demo.default_model == "0_resnet18_scratch_bce_seed0"
    assert demo.answer(str(photos["astronaut.jpg"])).faces[0]["status"] == "ok"
    answer = demo.answer(str(photos["astronaut.jpg"]), failed.name)
    assert answer.annotated is None and not answer.crops
    assert answer.message.startswith(f"model {failed.name}: {failed}/checkpoints/best.ckpt is")
    assert "truncated or corrupt" in answer.message


@pytest.mark.browser
def test_demo_page_answers_a_real_portrait_in_chromium(
    server, photos, expected, chromium, tmp_path
):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra)")
    outside: list[str] = []  # every request the page makes beyond this machine

    def local_only(route) -> None:
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.route("**/*", local_only)
            page.goto(server)  # the page keeps a connection open: it is never network-idle
            upload = page.locator("#photo input[type=file]")
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(photos["astronaut.jpg"])
            label = f"face 0 {expected['label']} (P(male) 0."
            sync_api.expect(page.locator("#message")).to_contain_text(label, timeout=60_000)
            sync_api.expect(page.locator("#model")).to_contain_text("resnet18")
            sync_api.expect(page.locator("#table")).to_contain_text(expected["label"])
            annotated = page.locator("#annotated img")
            sync_api.expect(annotated).to_be_visible()
            assert annotated.evaluate("image => image.naturalWidth") == 512
            # The crops gallery: the crop beside its heat map (predict's settings), captioned.
            sync_api.expect(page.locator("#crops")).to_contain_text(
                "heat map: evidence for", timeout=60_000
            )
            crop = page.locator("#crops img").first
            sync_api.expect(crop).to_be_visible()
            crop.evaluate("image => image.decode()")
            layout = picture_layout((178, 218), 2)
            halves = crop.evaluate(
                HALVES_DIFFER_JS,
                {"crop": layout["crop"], "overlay": layout["overlay"], "size": [178, 218]},
            )
            assert halves["width"] == layout["size"][0], halves
            assert halves["difference"] > 5, halves  # the crop under the map is coloured
            # The picker's second model answers beside the first.
            sync_api.expect(page.locator("#message_b")).to_contain_text(
                "1_resnet18_scratch_bce_seed1", timeout=60_000
            )
            page.screenshot(path=tmp_path / "demo.png", full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 20_000
    assert outside == []  # no font, script or analytics from the internet
