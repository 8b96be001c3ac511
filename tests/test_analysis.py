"""The sweep analysis, on a real smoke sweep it runs itself: 2 backbones x 3 treatments x 2
seeds on the embedded sample, where GoogLeNet's pretrained weights are absent (2 failed jobs)
and one job is left unfinished (missing). Every number of the report is checked against the
run folders it came from."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import REPO, SAMPLE, run_script
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import binary_auroc

from celeba_gender.analysis import analyze_sweep, collect_runs, load_settings, reference_results
from celeba_gender.analysis.calibration import best_f1_threshold, expected_calibration_error
from celeba_gender.analysis.figures import read_scalars
from celeba_gender.analysis.statistics import _resampled_metrics, compare_paired, metric_values
from celeba_gender.models import BACKBONES, pretrained_weights_file

pytestmark = pytest.mark.slow
MISSING_JOB = "12_resnet18_scratch_bce_seed2"


@pytest.fixture(scope="module")
def sweep(run_env, tmp_path_factory) -> Path:
    torch_home = tmp_path_factory.mktemp("torch-resnet18-only")
    target = torch_home / "hub" / "checkpoints" / pretrained_weights_file("resnet18").name
    target.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), target)
    folder = tmp_path_factory.mktemp("analysis") / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "model=resnet18,googlenet",
        "treatment=glob(*)",
        "seed=0,1",
        "experiment=smoke",
        "model.allow_download=false",
        "trainer.limit_test_batches=1.0",  # the sample's whole test part
        "trainer.limit_predict_batches=1.0",
        f"hydra.sweep.dir={folder}",
        env={**run_env, "TORCH_HOME": str(torch_home)},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A job that was killed: Hydra wrote its config, the run never wrote metrics.json.
    killed = folder / MISSING_JOB
    shutil.copytree(folder / "2_resnet18_scratch_bce_seed0" / ".hydra", killed / ".hydra")
    for config in (killed / ".hydra").glob("*config.yaml"):  # as written, and resolved
        config.write_text(config.read_text().replace("seed: 0", "seed: 2"))
    return folder


@pytest.fixture(scope="module")
def report(sweep) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "celeba_gender.analysis", str(sweep), "--resamples", "300"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep / "report"


def _metrics(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}


def test_every_job_is_in_the_table_failed_and_missing_included(sweep, report):
    runs = pd.read_csv(report / "runs.csv").set_index("job")
    assert len(runs) == 13
    status = runs["status"].value_counts().to_dict()
    assert status == {"ok": 10, "failed": 2, "missing": 1}
    failed = runs[runs["status"] == "failed"]
    assert set(failed["model"]) == {"googlenet"} and set(failed["treatment"]) == {"pretrained_bce"}
    assert failed["error"].str.contains("googlenet-1378be20.pth").all()
    assert runs.loc[MISSING_JOB, "seed"] == 2  # known from its saved config
    assert "metrics.json" in runs.loc[MISSING_JOB, "error"]
    markdown = (report / "report.md").read_text()
    for job, row in runs.iterrows():
        assert f"| {job} " in markdown and row["status"] in markdown


def test_the_tables_match_the_run_files(sweep, report):
    runs = pd.read_csv(report / "runs.csv").set_index("job")
    records = _metrics(sweep)
    for job, record in records.items():
        if record["status"] != "ok":
            continue
        predictions = pd.read_csv(sweep / job / "test_predictions.csv")
        from_predictions = ((predictions["p_male"] > 0.5) == (predictions["label"] == 1)).mean()
        assert runs.loc[job, "acc"] == pytest.approx(record["test/acc"], abs=1e-6)
        assert runs.loc[job, "acc"] == pytest.approx(from_predictions, abs=1e-6)
        assert runs.loc[job, "f1"] == pytest.approx(record["test/f1"], abs=1e-6)
        assert runs.loc[job, "params"] == record["params"]
        for metric in ("acc", "precision", "recall", "f1", "auroc"):
            low, high = runs.loc[job, f"{metric}_ci_low"], runs.loc[job, f"{metric}_ci_high"]
            assert 0 <= low <= high <= 1
        # The bootstrap distribution of a proportion is centred on it.
        assert runs.loc[job, "acc_ci_low"] <= record["test/acc"] <= runs.loc[job, "acc_ci_high"]
    configurations = pd.read_csv(report / "configurations.csv")
    for _, row in configurations.iterrows():
        values = [
            r["test/acc"]
            for r in records.values()
            if r["status"] == "ok"
            and (r["model"], r["treatment"]) == (row["model"], row["treatment"])
        ]
        assert row["ok"] == len(values)
        if values:
            assert row["acc_mean"] == pytest.approx(np.mean(values), abs=1e-6)
            assert row["acc_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    googlenet_pretrained = configurations.query(
        "model == 'googlenet' and treatment == 'pretrained_bce'"
    ).iloc[0]
    assert (googlenet_pretrained["failed"], googlenet_pretrained["ok"]) == (2, 0)
    # The reference study's accuracy, labelled as theirs, beside ours.
    theirs = configurations.set_index(["model", "treatment"])["study_acc (theirs)"]
    assert theirs[("resnet18", "pretrained_bce")] == 0.973
    assert theirs[("googlenet", "scratch_ce")] == 0.9535


def test_paired_test_counts_come_from_the_two_runs_predictions(sweep):
    analysis = analyze_sweep(sweep, load_settings(**{"bootstrap.resamples": 200}))
    table = analysis.configurations.sort_values(["acc_mean", "f1_mean"], ascending=False)
    first, second = table.iloc[0], table.iloc[1]
    assert set(analysis.comparisons) == {0, 1}
    for seed, comparison in analysis.comparisons.items():
        a = pd.read_csv(sweep / _job(sweep, first, seed) / "test_predictions.csv")
        b = pd.read_csv(sweep / _job(sweep, second, seed) / "test_predictions.csv")
        right_a = (a["p_male"] > 0.5) == (a["label"] == 1)
        right_b = (b["p_male"] > 0.5) == (b["label"] == 1)
        assert comparison.a_only_correct == int((right_a & ~right_b).sum())
        assert comparison.b_only_correct == int((~right_a & right_b).sum())
        assert comparison.accuracy_difference == pytest.approx(right_a.mean() - right_b.mean())
    conclusions = "\n".join(analysis.conclusions)
    assert f"Best configuration: {first['model']} with {first['treatment']}" in conclusions
    assert "McNemar p" in conclusions and "Does pretraining help?" in conclusions


def _job(sweep: Path, configuration: pd.Series, seed: int) -> str:
    for job, record in _metrics(sweep).items():
        if (record["model"], record["treatment"], record.get("seed")) == (
            configuration["model"],
            configuration["treatment"],
            seed,
        ):
            return job
    raise AssertionError(f"no job for {configuration['model']} seed {seed}")


def test_a_paired_test_refuses_different_test_sets(sweep):
    predictions = pd.read_csv(sweep / "2_resnet18_scratch_bce_seed0" / "test_predictions.csv")
    with pytest.raises(ValueError, match="different images"):
        compare_paired(predictions, predictions.iloc[1:])


def test_resampled_metrics_equal_torchmetrics_on_the_original_sample(sweep):
    predictions = pd.read_csv(sweep / "4_resnet18_scratch_ce_seed0" / "test_predictions.csv")
    labels, p_male = predictions["label"].to_numpy(), predictions["p_male"].to_numpy()
    values = _resampled_metrics(labels[None], p_male[None])[:, 0]
    expected = metric_values(labels, p_male)
    assert values == pytest.approx(
        [expected[m] for m in ("acc", "precision", "recall", "f1", "auroc")], abs=1e-6
    )
    assert values[-1] == pytest.approx(
        float(binary_auroc(torch.tensor(p_male), torch.tensor(labels))), abs=1e-6
    )


def test_fairness_cells_partition_the_test_images(sweep, report):
    fairness = pd.read_csv(report / "fairness.csv")
    runs = pd.read_csv(report / "runs.csv").set_index("job")
    job = "2_resnet18_scratch_bce_seed0"
    cells = fairness[fairness["job"] == job]
    settings = load_settings()
    assert set(cells["attribute"]) == set(settings.fairness.attributes)
    for _, group in cells.groupby("attribute"):
        assert group["images"].sum() == runs.loc[job, "test_images"]
        assert group["correct"].sum() == round(runs.loc[job, "acc"] * runs.loc[job, "test_images"])
    assert (cells["small"] == (cells["images"] < settings.fairness.min_group_size)).all()
    assert ((cells["ci_low"] <= cells["accuracy"]) & (cells["accuracy"] <= cells["ci_high"])).all()
    # A cell checked by hand against the sample's attribute file.
    from celeba_gender.analysis.fairness import attributes_of

    predictions = pd.read_csv(sweep / job / "test_predictions.csv")
    attributes = attributes_of(str(SAMPLE)).loc[predictions["file_name"]]
    young_men = (attributes["Young"].to_numpy() == 1) & (predictions["label"].to_numpy() == 1)
    cell = cells.query("attribute == 'Young' and value == 'has' and gender == 'male'").iloc[0]
    assert cell["images"] == young_men.sum()
    correct = (predictions["p_male"] > 0.5).to_numpy()[young_men].sum()
    assert cell["correct"] == correct
    interval = stats.binomtest(int(correct), int(young_men.sum())).proportion_ci(0.95, "wilson")
    assert cell["ci_low"] == pytest.approx(interval.low)


def test_calibration_and_threshold_use_the_saved_predictions(sweep, report):
    runs = pd.read_csv(report / "runs.csv").set_index("job")
    job = "8_googlenet_scratch_bce_seed0"
    test = pd.read_csv(sweep / job / "test_predictions.csv")
    val = pd.read_csv(sweep / job / "val_predictions.csv")
    assert len(val) > 0 and set(val.columns) == {"file_name", "label", "p_male"}
    assert runs.loc[job, "ece"] == pytest.approx(expected_calibration_error(test, 15), abs=1e-6)
    threshold = best_f1_threshold(val)
    assert runs.loc[job, "val_f1_threshold"] == pytest.approx(threshold, abs=1e-6)
    tuned = ((test["p_male"] > threshold) == (test["label"] == 1)).mean()
    assert runs.loc[job, "acc_at_val_threshold"] == pytest.approx(tuned, abs=1e-6)
    reliability = pd.read_csv(report / "reliability.csv")
    points = reliability[reliability["job"] == job]
    assert points["images"].sum() == len(test)  # every test image falls in one bin
    filled = points[points["images"] > 0]
    weighted_gap = (
        filled["images"] * (filled["mean_p_male"] - filled["fraction_male"]).abs()
    ).sum()
    assert runs.loc[job, "ece"] == pytest.approx(weighted_gap / len(test), abs=1e-5)


def test_the_command_writes_figures_report_and_the_executed_notebook(sweep, report):
    figures = {p.stem for p in (report / "figures").glob("*.png")}
    assert figures >= {
        "accuracy_heatmap",
        "accuracy_f1_bars",
        "accuracy_vs_parameters",
        "accuracy_vs_training_time",
        "confusion_matrices",
        "worst_images",
        "learning_curves",
        "reliability",
    }
    assert all((report / "figures" / f"{name}.png").stat().st_size > 5000 for name in figures)
    (events,) = (report / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {f"report/{name}" for name in figures} <= set(accumulator.Tags()["images"])
    markdown = (report / "report.md").read_text()
    assert "## Conclusions" in markdown and "Best treatment:" in markdown
    assert "study_acc (theirs)" in markdown
    notebook = nbformat.read(report / "analysis.ipynb", as_version=4)
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == []
    text = json.dumps([cell.get("outputs", []) for cell in notebook.cells])
    assert "Best configuration" in text and "image/png" in text
    assert str(sweep) in text  # it ran on this sweep, not on a default one


def test_learning_curves_come_from_the_runs_tensorboard_logs(sweep):
    series = read_scalars(sweep / "2_resnet18_scratch_bce_seed0", ("val/acc",))
    record = json.loads((sweep / "2_resnet18_scratch_bce_seed0" / "metrics.json").read_text())
    assert len(series["val/acc"]) == record["epochs_trained"]


def test_reference_numbers_cover_the_thirty_runs():
    reference = reference_results()
    assert len(reference) == 30
    assert set(reference["model"]) == set(BACKBONES)
    best = reference.loc[reference["acc"].idxmax()]
    assert (best["model"], best["treatment"], best["acc"]) == ("vgg19", "pretrained_bce", 0.9785)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "no-such-sweep", "does not exist"),
        (lambda tmp: tmp, "holds no training job"),
    ],
)
def test_a_wrong_sweep_folder_ends_with_a_clear_message(tmp_path, make, message):
    result = subprocess.run(
        [sys.executable, "-m", "celeba_gender.analysis", str(make(tmp_path))],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_collect_runs_reads_a_single_run_folder(sweep):
    runs = collect_runs(sweep / "2_resnet18_scratch_bce_seed0")
    assert list(runs["status"]) == ["ok"]


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])  # papermill injects sweep_dir there


def test_a_run_whose_predictions_are_gone_keeps_its_row(sweep, tmp_path):
    copy = tmp_path / "sweep"
    for job in ("2_resnet18_scratch_bce_seed0", "4_resnet18_scratch_ce_seed0"):
        shutil.copytree(sweep / job, copy / job)
    (copy / "4_resnet18_scratch_ce_seed0" / "test_predictions.csv").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "celeba_gender.analysis", str(copy), "--no-notebook",
         "--resamples", "50"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_csv(copy / "report" / "runs.csv").set_index("job")
    assert runs.loc["4_resnet18_scratch_ce_seed0", "status"] == "ok"
    assert pd.isna(runs.loc["4_resnet18_scratch_ce_seed0", "acc_ci_low"])
    assert pd.notna(runs.loc["2_resnet18_scratch_bce_seed0", "acc_ci_low"])
    assert "test_predictions.csv does not exist" in (copy / "report" / "report.md").read_text()
