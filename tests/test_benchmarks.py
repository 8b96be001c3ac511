"""The benchmark scripts run end to end (their figures are recorded in docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import forked_python
import numpy as np
import pandas as pd
import pytest
from conftest import delete_big_files, run_script
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_data_loading_benchmark_runs(subset_root, cache_dir, tmp_path):
    output = tmp_path / "figures.json"
    result = forked_python.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "data_loading.py"),
            "--root",
            str(subset_root),
            "--cache-dir",
            str(cache_dir),
            "--sizes",
            "44",  # a 4x box filter: the cached path reads the pooled 2x2 sums
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
    assert row["size"] == 44 and row["per_sample"] > 0 and row["cached_batched"] > 0
    assert row["cached_reads"] == "pooled 2x2 sums"
    assert f"{row['ratio']:.1f}x  pooled 2x2 sums" in result.stdout


def _script(name: str, *arguments: str) -> subprocess.CompletedProcess:
    return forked_python.run(
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
    # The benchmark reads best.ckpt's weights only: no optimizer state, no last.ckpt to write.
    tiny = ["--extra", "trainer.max_epochs=2", "data.image_size=32",
            "+trainer.limit_train_batches=3", "callbacks.model_checkpoint.save_last=false",
            "callbacks.model_checkpoint.save_weights_only=true"]  # fmt: skip

    def bench(*arguments: str) -> subprocess.CompletedProcess:
        return forked_python.run(
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
            finished = (Path(run["folder"]) / "metrics.json").stat().st_mtime
            assert run["measured_on"] == time.strftime("%Y-%m-%d", time.gmtime(finished))
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
    # Minutes to the target: the first epoch whose mean over the seeds reaches it, or None.
    assert result["target_val_acc"] == 0.95 and result["budget_minutes"] == 10.0
    means = [sum(r["curve"][i]["val_acc"] for r in recipes["r96"]["runs"]) / 3 for i in (0, 1)]
    reached = [i for i in (0, 1) if means[i] >= 0.95]
    expected = (
        sum(r["curve"][reached[0]]["minutes"] for r in recipes["r96"]["runs"]) / 3
        if reached
        else None
    )
    if expected is None:
        assert recipes["r96"]["minutes_to_target"] is None
    else:
        assert recipes["r96"]["minutes_to_target"] == pytest.approx(expected)
    low = bench("report", "--out", str(runs), "--target", "0.1", "--json", str(tmp_path / "l.json"))
    assert low.returncode == 0, low.stderr[-3000:]
    first = json.loads((tmp_path / "l.json").read_text())["recipes"]["r96"]
    assert first["minutes_to_target"] == pytest.approx(
        sum(r["curve"][0]["minutes"] for r in recipes["r96"]["runs"]) / 3
    )
    assert "mean val 0.1 at" in low.stdout
    assert "chosen by validation: r96" in reported.stdout
    # The chosen recipe's final fit: train + validation, its last epoch tested, reported
    # beside the validation-chosen runs.
    ran = bench("run", "--recipe", "r96", "--seeds", "0", "--final-fit", "--root",
                str(sample_root), "--out", str(runs), *tiny)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:] + ran.stdout[-3000:]
    final_dir = runs / "r96" / "final_fit" / "seed0"
    final = json.loads((final_dir / "metrics.json").read_text())
    # best.ckpt (no monitor: saved at every epoch's end) holds the tested weights: the run says
    # so, and the model from it gives the run's test predictions (heat maps, demo, eval.py).
    kept = final_dir / "checkpoints" / "best.ckpt"
    assert final["final_fit"] is True and final["evaluated_checkpoint"] == str(kept)
    assert final["best_val"] is None and not (final_dir / "val_predictions.csv").exists()
    from celeba_gender.analysis.heat_maps import evaluated_checkpoint
    from celeba_gender.inference.predictor import GenderPredictor

    assert evaluated_checkpoint(final_dir) == kept
    saved = pd.read_csv(final_dir / "test_predictions.csv").head(8)
    faces = [Image.open(sample_root / "img_align_celeba" / n) for n in saved["file_name"]]
    again = GenderPredictor.load(kept).predict(faces)
    np.testing.assert_allclose(again, saved["p_male"], atol=1e-3)
    chosen_split = json.loads((runs / "r96" / "seed0" / "data_summary.json").read_text())
    final_split = json.loads((final_dir / "data_summary.json").read_text())
    parts = chosen_split["parts"]
    assert (
        final_split["parts"]["train"]["images"] == parts["train"]["images"] + parts["val"]["images"]
    )
    assert final_split["parts"]["test"] == parts["test"]
    reported = bench("report", "--out", str(runs), "--test", "r96", "--json", str(output))
    assert reported.returncode == 0, reported.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["final_fit"]["per_seed_acc"] == [final["test/acc"]]
    assert result["final_fit"]["train_images"] == final_split["balance"]["train_images_per_epoch"]
    assert result["final_fit"]["evaluated_checkpoint"] == [str(kept)]
    assert result["test"]["per_seed_acc"] == tested  # the chosen runs' own figures still
    assert "final fit (r96" in reported.stdout
    assert "r96" in result["recipes"] and "final_fit" not in result["recipes"]
    # In the analysis a final fit is its own configuration, never ranked above a validated one.
    from celeba_gender.analysis import analyze_sweep, conclusions

    analysis = analyze_sweep([runs / "r96" / "seed0", final_dir])
    assert sorted(analysis.runs["experiment"]) == ["cpu_quick", "cpu_quick (final fit)"]
    # Two folders named seed0 are two jobs, named by where they differ.
    assert sorted(analysis.runs["job"]) == ["final_fit/seed0", "seed0"]
    assert conclusions.ranked(analysis.configurations).iloc[0]["experiment"] == "cpu_quick"
    assert any("(final fit) trained on the training and validation" in n for n in analysis.notes)
    assert not any("val_predictions.csv" in n for n in analysis.notes)  # that note says why
    # An experiment's note, once: a final fit repeats its experiment.
    from celeba_gender.analysis.scope import experiment_notes

    for folder in (runs / "r96" / "seed0", final_dir):
        config = folder / ".hydra" / "resolved_config.yaml"
        text = config.read_text()
        assert "experiment_note: null" in text
        config.write_text(text.replace("experiment_note: null", "experiment_note: A note."))
    assert experiment_notes(analysis.runs) == {"cpu_quick": "A note."}
    from celeba_gender.analysis.collect import experiment_of

    assert experiment_of("(final fit)") == "(final fit)"  # of no named experiment: its own
    # Final fits alone: nothing to choose by validation, so no best; the table still lists it.
    alone = analyze_sweep([final_dir])
    assert alone.best is None and conclusions.ranked(alone.configurations).empty
    listed = conclusions.ranked(alone.configurations, with_final_fits=True)
    assert list(listed["experiment"]) == ["cpu_quick (final fit)"]
    # An earlier report's recipes come along (and compete) when their runs are gone.
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"recipes": {"old_recipe": recipes["cpu_quick_48"]}}))
    carried = bench("report", "--out", str(runs), "--previous", str(earlier), "--json",
                    str(output))  # fmt: skip
    assert carried.returncode == 0, carried.stderr[-3000:]
    old = json.loads(output.read_text())["recipes"]["old_recipe"]
    assert (
        old["carried_over_from"] == str(earlier) and old["runs"] == recipes["cpu_quick_48"]["runs"]
    )
    # Carried over again, it keeps where it was read first; its test part is not read here.
    again = tmp_path / "again.json"
    again.write_text(output.read_text())
    twice = bench("report", "--out", str(runs), "--previous", str(again), "--json",
                  str(tmp_path / "twice.json"))  # fmt: skip
    assert twice.returncode == 0, twice.stderr[-3000:]
    twice_old = json.loads((tmp_path / "twice.json").read_text())["recipes"]["old_recipe"]
    assert twice_old["carried_over_from"] == str(earlier)
    # A carried-over recipe chosen on validation: its test figures are the earlier report's,
    # and its final fits under --out are reported beside them.
    best = {**recipes["r96"], "best_val_acc": {**recipes["r96"]["best_val_acc"], "mean": 1.0}}
    earlier_test = {**result["test"], "recipe": "best_before", "per_seed_acc": [0.5, 0.5, 0.5]}
    tested_before = tmp_path / "tested_before.json"
    tested_before.write_text(json.dumps({"recipes": {"best_before": best}, "test": earlier_test}))
    shutil.copytree(runs / "r96" / "final_fit", runs / "best_before" / "final_fit")
    carried_test = bench("report", "--out", str(runs), "--previous", str(tested_before), "--test",
                         "best_before", "--json", str(tmp_path / "t.json"))  # fmt: skip
    assert carried_test.returncode == 0, carried_test.stderr[-3000:]
    read = json.loads((tmp_path / "t.json").read_text())
    assert read["chosen_by_validation"] == "best_before"
    assert read["test"] == {**earlier_test, "carried_over_from": str(tested_before)}
    assert read["final_fit"]["per_seed_acc"] == [final["test/acc"]]
    # ... and refused when the earlier report did not test it.
    untested = tmp_path / "untested.json"
    untested.write_text(json.dumps({"recipes": {"best_before": best}}))
    refused = bench("report", "--out", str(runs), "--previous", str(untested), "--test",
                    "best_before", "--json", str(tmp_path / "t.json"))  # fmt: skip
    assert refused.returncode != 0 and "holds no test figures of it" in refused.stderr
    shutil.rmtree(runs / "best_before")
    unknown = bench("report", "--out", str(runs), "--test", "prog64_112", "--json", str(output))
    assert unknown.returncode != 0 and "no finished runs of it" in unknown.stderr
    other = bench("report", "--out", str(runs), "--test", "cpu_quick_48", "--json", str(output))
    assert other.returncode != 0 and "chosen on validation only, which is r96" in other.stderr
    # A budget the runs do not fit: nothing is chosen, so nothing may be tested.
    over = bench("report", "--out", str(runs), "--budget-minutes", "0.001", "--json", str(output))
    assert over.returncode == 0 and "chosen by validation: None" in over.stdout


@pytest.fixture(scope="module")
def readme_sweep(run_env, tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A real sweep of two configurations at smoke size (ResNet-18 from scratch, BCE and CE);
    the one with the lower test accuracy (on a tie: scratch_ce, last by name) is planted as the
    validation-best: perfect validation predictions, the other's all wrong. (The folder, the
    planted job.)"""
    folder = tmp_path_factory.mktemp("readme_figures") / "sweep"
    result = run_script(
        "train.py", "-m", "model=resnet18", "treatment=scratch_bce,scratch_ce",
        "experiment=smoke", f"hydra.sweep.dir={folder}", env=run_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    test_acc = {
        path.parent.name: json.loads(path.read_text())["test/acc"]
        for path in folder.glob("*/metrics.json")
    }
    assert len(test_acc) == 2
    planted = min(sorted(test_acc, reverse=True), key=test_acc.get)
    for job in test_acc:
        val = folder / job / "val_predictions.csv"
        frame = pd.read_csv(val)
        label = frame["label"].astype(float)  # the other's: all wrong, never exactly 0 or 1
        frame.assign(p_male=label if job == planted else 0.75 - 0.5 * label).to_csv(
            val, index=False
        )
    yield folder, planted
    delete_big_files(folder)  # the checkpoints, once this file's tests are done


def _grid_height(rows: int) -> int:
    """Pixels of a heat-map grid of ``rows`` rows saved at the report's 120 dpi."""
    from celeba_gender.analysis.figures import heat_map_grid
    from celeba_gender.analysis.heat_maps import MeanMap

    grid = heat_map_grid({f"row {i}": {"cell": MeanMap(0)} for i in range(rows)}, "")
    return round(grid.get_size_inches()[1] * 120)


@pytest.mark.slow
def test_readme_figures_come_from_the_validation_best_run(readme_sweep, tmp_path):
    """The planted run (validation-best, test-worst) is the one named, with its accuracies;
    --heat-map-rows 1 of two configurations: a one-row grid, its row."""
    sweep, planted = readme_sweep
    result = _script(
        "readme_figures.py", "--sweep", str(sweep), "--heat-map-rows", "1", "--no-demo",
        "--resamples", "20", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "readme_figures.json").read_text())
    metrics = json.loads((sweep / planted / "metrics.json").read_text())
    assert record["job"] == planted and Path(record["run_dir"]) == (sweep / planted).resolve()
    assert Path(record["checkpoint"]) == (sweep / planted / "checkpoints" / "best.ckpt").resolve()
    assert (record["model"], record["treatment"]) == (metrics["model"], metrics["treatment"])
    assert record["val_acc"] == 1.0 and record["test_acc"] == pytest.approx(metrics["test/acc"])
    assert record["test_images"] == metrics["test_images"] and record["configurations"] == 2
    assert f"run: {(sweep / planted).resolve()}" in result.stdout
    # One row, the planted run's, of the two configurations.
    assert [row["job"] for row in record["heat_map_rows"]] == [planted]
    assert record["figures"] == ["heat_maps.png"]
    height = Image.open(tmp_path / "heat_maps.png").height
    assert height == _grid_height(1) != _grid_height(2)


@pytest.mark.slow
@pytest.mark.browser
def test_readme_demo_screenshot_answers_the_portrait(readme_sweep, chromium, tmp_path):
    """--ckpt: the demo serving that run's checkpoint, screenshot once it answered."""
    pytest.importorskip("playwright.sync_api", reason="playwright (dev extra)")
    sweep, planted = readme_sweep
    checkpoint = sweep / planted / "checkpoints" / "best.ckpt"
    result = _script(
        "readme_figures.py", "--ckpt", str(checkpoint), "--no-heat-maps", "--resamples", "20",
        "--chromium", chromium, "--out", str(tmp_path),
    )  # fmt: skip
    # The script fails when the page asks for anything beyond 127.0.0.1.
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    record = json.loads((tmp_path / "readme_figures.json").read_text())
    assert record["job"] == planted and record["figures"] == ["demo.png"]
    # Served as its run folder: the page names the job and answers for the portrait's face.
    assert re.fullmatch(
        rf"{planted}: face 0 (fe)?male \(P\(male\) [01]\.\d{{2,4}}\)", record["demo_answer"]
    )
    screenshot = Image.open(tmp_path / "demo.png")
    assert screenshot.width == 1280 and screenshot.height >= 1400
    assert (tmp_path / "demo.png").stat().st_size > 20_000
