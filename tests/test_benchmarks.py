"""The benchmark scripts run end to end (their figures are recorded in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_data_loading_benchmark_runs(subset_root, cache_dir, tmp_path):
    output = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "data_loading.py"),
            "--root",
            str(subset_root),
            "--cache-dir",
            str(cache_dir),
            "--sizes",
            "32",
            "--batches",
            "3",
            "--repeats",
            "1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    (row,) = figures["rows"]
    assert row["size"] == 32 and row["per_sample"] > 0 and row["cached_batched"] > 0
    assert f"{row['ratio']:.1f}x" in result.stdout


def _script(name: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


@pytest.mark.slow
def test_latency_benchmark_times_models_and_detection(tmp_path):
    pytest.importorskip("facenet_pytorch", reason="make setup installs the face detector")
    output = tmp_path / "latency.json"
    result = _script(
        "latency.py", "--models", "resnet18", "googlenet", "--batch", "2", "--repeats", "1",
        "--warmup", "1", "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert [row["model"] for row in figures["models"]] == ["resnet18", "googlenet"]
    assert all(row["batch_1_ms_per_image"] > 0 and row["batch_2_ms_per_image"] > 0
               for row in figures["models"])  # fmt: skip
    assert [row["photo"] for row in figures["detection"]] == ["640x480", "1280x960", "1920x1440"]


@pytest.mark.slow
def test_framing_robustness_benchmark_on_a_trained_run(smoke_run, tmp_path):
    pytest.importorskip("facenet_pytorch", reason="make setup installs the face detector")
    output = tmp_path / "framing.json"
    result = _script(
        "framing_robustness.py", str(smoke_run), "--limit", "8", "--output", str(output)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["test_images"] == 8
    # The pipeline without detection reproduces the run's own test predictions.
    assert figures["accuracy_crop_no_detect"] == figures["accuracy_as_tested"]
    for key in ("accuracy_crop_detect", "accuracy_reframed"):
        assert 0 <= figures[key] <= 1
    assert figures["missed_faces_reframed"] <= 2
