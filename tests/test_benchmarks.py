"""The benchmark scripts run end to end (their figures are recorded in docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import shutil
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


SCALE_FIGURES = (
    "scan_seconds", "cache_seconds", "first_run_seconds", "second_run_seconds",
    "train_images_per_second", "eval_images_per_second", "peak_anon_mb",
)  # fmt: skip


@pytest.mark.slow
def test_scale_benchmark_on_small_synthetic_copies(subset_root, tmp_path):
    # 50 source images for 120 files: each image is re-encoded up to 3 times, and the scan
    # (which drops files with the same bytes) must still find 120 distinct images.
    root = tmp_path / "subset50"
    (root / "img_align_celeba").mkdir(parents=True)
    names = sorted(
        p.name for p in (subset_root / "img_align_celeba").iterdir() if "(" not in p.name
    )
    for name in names[:50]:
        shutil.copyfile(subset_root / "img_align_celeba" / name, root / "img_align_celeba" / name)
    for relative in ("Anno/list_attr_celeba.txt", "Anno/identity_CelebA.txt",
                     "Eval/list_eval_partition.txt"):  # fmt: skip
        (root / relative).parent.mkdir(exist_ok=True)
        (root / relative).symlink_to(subset_root / relative)  # the full 202,599-row files
    work, output = tmp_path / "work", tmp_path / "scale.json"
    result = _script(
        # One size: each size is five fresh processes (the suite's time); the ratios between
        # sizes are arithmetic on these rows.
        "scale.py", "--images", "120", "--train-steps", "2", "--eval-batches", "1",
        "--root", str(root), "--workdir", str(work), "--json", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())
    assert [row["images"] for row in rows] == [120]
    for row in rows:
        for key in SCALE_FIGURES:
            assert 0 < row[key] < 10_000, (key, row[key])
        # The tensor cache holds every image decoded at 218x178, and only once.
        assert row["images"] * 3 * 218 * 178 <= row["cache_bytes"] < 1.1 * row["images"] * 116_412
        assert row["peak_anon_mb"] < row["peak_rss_mb"] < 10_000
        # prepare_data on the warm cache checked no file and built no cache.
        assert row["second_run_scan_checked"] == 0 and row["second_run_cache_built_now"] is False
        assert row["second_run_built_nothing"] is True
        assert row["train_images"] > 0 and row["eval_images"] > 0
    assert "linear extrapolation to 202,599 images" in result.stdout
    # The generated copy stays for the next run (official names, distinct JPEGs); the caches,
    # runs and hard-linked copies of each size are gone.
    generated = sorted(p.name for p in (work / "source" / "img_align_celeba").iterdir())
    assert generated == [f"{i:06d}.jpg" for i in range(1, 121)]
    assert sorted(p.name for p in work.iterdir()) == ["source"]


@pytest.mark.slow
def test_time_to_accuracy_chooses_on_validation_and_tests_only_the_choice(
    sample_root, run_env, tmp_path
):
    runs, output = tmp_path / "runs", tmp_path / "tta.json"
    tiny = ["--extra", "trainer.max_epochs=2", "data.image_size=32",
            "+trainer.limit_train_batches=3"]  # fmt: skip

    def bench(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), *arguments],
            capture_output=True, text=True, timeout=600, cwd=REPO,
            env={**os.environ, **run_env},
        )  # fmt: skip

    for recipe, seeds in (("r96", "0,1,2"), ("cpu_quick_48", "0")):
        ran = bench("run", "--recipe", recipe, "--seeds", seeds, "--root", str(sample_root),
                    "--out", str(runs), *tiny)  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:] + ran.stdout[-3000:]
    reported = bench("report", "--out", str(runs), "--test", "r96", "--flip", "--json", str(output))
    assert reported.returncode == 0, reported.stderr[-3000:]
    result = json.loads(output.read_text())
    recipes = result["recipes"]
    assert recipes["r96"]["seeds"] == [0, 1, 2] and recipes["cpu_quick_48"]["seeds"] == [0]
    # One seed is not enough to be chosen: the choice is the recipe with 3 seeds.
    assert result["chosen_by_validation"] == "r96"
    for recipe in recipes.values():
        for run in recipe["runs"]:
            metrics = json.loads((Path(run["folder"]) / "metrics.json").read_text())
            assert run["best_val_acc"] == metrics["best_val"]
            curve = run["curve"]
            assert [point["epoch"] for point in curve] == [1, 2]
            assert 0 < curve[0]["minutes"] < curve[1]["minutes"]
            assert max(point["val_acc"] for point in curve) == pytest.approx(metrics["best_val"])
            # best.ckpt evaluated again gives its validation accuracy; flip TTA is a number.
            assert run["val_acc_evaluated"] == pytest.approx(metrics["best_val"])
            assert 0 < run["val_acc_flip_tta"] <= 1
    # Test figures: only the chosen recipe's, and they are its runs' own.
    assert "test/acc" not in json.dumps(recipes) and result["test"]["recipe"] == "r96"
    tested = [
        json.loads((Path(run["folder"]) / "metrics.json").read_text())["test/acc"]
        for run in recipes["r96"]["runs"]
    ]
    assert result["test"]["per_seed_acc"] == tested
    assert result["test"]["acc"]["mean"] == pytest.approx(sum(tested) / 3)
    assert output.with_suffix(".png").stat().st_size > 10_000
    assert "chosen by validation: r96" in reported.stdout
    unknown = bench("report", "--out", str(runs), "--test", "prog64_112", "--json", str(output))
    assert unknown.returncode != 0 and "no finished runs of it" in unknown.stderr
    other = bench("report", "--out", str(runs), "--test", "cpu_quick_48", "--json", str(output))
    assert other.returncode != 0 and "chosen on validation only, which is r96" in other.stderr
    # A budget the runs do not fit: nothing is chosen, so nothing may be tested.
    over = bench("report", "--out", str(runs), "--budget-minutes", "0.001", "--json", str(output))
    assert over.returncode == 0 and "chosen by validation: None" in over.stdout
