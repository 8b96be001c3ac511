"""The browser demo (python -m celeba_gender.demo): its named API endpoint called with
gradio_client, bad uploads, and the page driven in a real headless chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from celeba_gender.inference import FaceAligner, GenderPredictor
from celeba_gender.inference.framing import smooth_background
from celeba_gender.inference.run import label_of, predict_photos

gradio_client = pytest.importorskip("gradio_client", reason="the demo extra (in dev) has gradio")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships photos")
MAX_PIXELS = 4_000_000  # the server's max_pixels: the 9-megapixel photo below is over it
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _demo(*overrides: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celeba_gender.demo", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def server(sweep, run_env, tmp_path_factory):
    """The demo as a user starts it, on the sweep, at a free port; its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("demo_run")
    process = _demo(
        f"ckpt_path={sweep}",
        f"port={port}",
        f"max_pixels={MAX_PIXELS}",
        f"hydra.run.dir={log}",
        env=run_env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the demo did not start: {process.communicate()[0][-3000:]}")
            time.sleep(0.5)
    yield url
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def expected(smoke_run, photos) -> dict:
    """predict's own row for the portrait's face (predict_photos, in this process)."""
    predictor = GenderPredictor.load(smoke_run / "checkpoints" / "best.ckpt")
    result = next(predict_photos([photos["astronaut.jpg"]], predictor, FaceAligner.from_config()))
    assert [row["status"] for row in result.rows] == ["ok"]
    return result.rows[0]


def _rows(table: dict) -> list[dict]:
    return [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]


def test_demo_api_labels_a_real_portrait_as_predict_does(server, photos, expected):
    client = gradio_client.Client(server, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    endpoint = endpoints["/predict"]
    photo, model = endpoint["parameters"]
    # The picker: the sweep's jobs with a checkpoint, the first by default.
    assert model["type"]["enum"] == ["0_resnet18_scratch_bce_seed0", "1_resnet18_scratch_bce_seed1"]
    assert model["parameter_default"] == "0_resnet18_scratch_bce_seed0"
    annotated, table = client.predict(
        gradio_client.handle_file(photos["astronaut.jpg"]), api_name="/predict"
    )
    (row,) = _rows(table)
    assert row["status"] == "ok" and row["note"] is None
    assert row["p_male"] == pytest.approx(expected["p_male"], abs=1e-5)
    assert row["label"] == expected["label"] == label_of(row["p_male"], 0.5)
    for key in ("x1", "y1", "x2", "y2"):
        assert row[key] == pytest.approx(expected[key], abs=0.5)
    # The annotated photo: the portrait's size, with the face's box drawn on it.
    original = np.asarray(Image.open(photos["astronaut.jpg"]).convert("RGB"), float)
    drawn = np.asarray(Image.open(annotated).convert("RGB"), float)
    assert drawn.shape == original.shape
    box = np.abs(drawn - original)[int(row["y1"]) : int(row["y2"]), int(row["x1"]) - 3 :][:, :6]
    assert box.mean() > 20  # the box's left edge
    # The second job of the sweep by name: the same weights, the same answer.
    _, other = client.predict(
        gradio_client.handle_file(photos["astronaut.jpg"]),
        "1_resnet18_scratch_bce_seed1",
        api_name="/predict",
    )
    assert _rows(other)[0]["p_male"] == pytest.approx(row["p_male"], abs=1e-6)


def test_demo_api_explains_bad_uploads(server, photos):
    client = gradio_client.Client(server, verbose=False)

    def ask(name: str) -> tuple[str | None, dict]:
        annotated, table = client.predict(
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
            label = f"face 0 {expected['label']} (P(male) {expected['p_male']:.2f})"
            sync_api.expect(page.locator("#message")).to_contain_text(label, timeout=60_000)
            sync_api.expect(page.locator("#table")).to_contain_text(expected["label"])
            annotated = page.locator("#annotated img")
            sync_api.expect(annotated).to_be_visible()
            assert annotated.evaluate("image => image.naturalWidth") == 512
            sync_api.expect(page.locator("#crops img").first).to_be_visible()
            # The picker's second model answers beside the first.
            sync_api.expect(page.locator("#message_b")).to_contain_text(
                "1_resnet18_scratch_bce_seed1", timeout=60_000
            )
            page.screenshot(path=tmp_path / "demo.png", full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 20_000
    assert outside == []  # no font, script or analytics from the internet
