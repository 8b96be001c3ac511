"""The sweep analysis, on a real smoke sweep it runs itself: 2 backbones x 3 treatments x 2
seeds on the embedded sample, where GoogLeNet's pretrained weights are absent (2 failed jobs)
and one job is left unfinished (missing). Every number of the report is checked against the
run folders it came from."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import forked_python
import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import REPO, SAMPLE, delete_big_files, run_script
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import binary_auroc

from celeba_gender.analysis import (
    analyze_sweep,
    collect_runs,
    conclusions,
    execute_notebook,
    load_settings,
    reference_results,
    report_figures,
    write_report,
)
from celeba_gender.analysis.calibration import best_f1_threshold, expected_calibration_error
from celeba_gender.analysis.figures import read_scalars
from celeba_gender.analysis.statistics import (
    METRICS,
    bootstrap_intervals,
    compare_paired,
    identities_of,
    mcnemar,
    metric_values,
    resampling_units,
    seed_summary,
    weighted_metrics,
)
from celeba_gender.analysis.tables import interval_cell, run_table
from celeba_gender.config import CONFIG_DIR
from celeba_gender.models import pretrained_weights_file

pytestmark = pytest.mark.slow
MISSING_JOB = "12_resnet18_scratch_bce_seed2"


@pytest.fixture(scope="module")
def sweep(run_env, tmp_path_factory) -> Iterator[Path]:

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
        "hydra.callbacks.validate_sweep.check_weights=false",  # launch the googlenet ones too
        "trainer.limit_test_batches=1.0",  # the sample's whole test part
        "trainer.limit_predict_batches=1.0",
        f"hydra.sweep.dir={folder}",
        env={**run_env, "TORCH_HOME": str(torch_home)},
        timeout=900,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # the failed jobs
    assert f"Sweep {folder}: 10 ok, 2 failed." in result.stderr
    # A job that was killed: Hydra wrote its config, the run never wrote metrics.json.
    killed = folder / MISSING_JOB
    shutil.copytree(folder / "2_resnet18_scratch_bce_seed0" / ".hydra", killed / ".hydra")
    for config in (killed / ".hydra").glob("*config.yaml"):  # as written, and resolved
        config.write_text(config.read_text().replace("seed: 0", "seed: 2"))
    yield folder
    delete_big_files(folder.parent)  # checkpoints: the module's tests are done with them
    delete_big_files(torch_home)


@pytest.fixture(scope="module")
def report(sweep) -> Path:
    result = forked_python.run(
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
        val = pd.read_csv(sweep / job / "val_predictions.csv")
        assert runs.loc[job, "val_acc"] == pytest.approx(_right(val).mean())
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


def _right(predictions: pd.DataFrame) -> pd.Series:
    return (predictions["p_male"] > 0.5) == (predictions["label"] == 1)


def _validation_accuracies(sweep: Path) -> dict[tuple[str, str], float]:
    """Mean over seeds of each configuration's accuracy on its val_predictions.csv."""
    accuracies: dict[tuple[str, str], list[float]] = {}
    for job, record in _metrics(sweep).items():
        if record["status"] == "ok":
            val = pd.read_csv(sweep / job / "val_predictions.csv")
            key = (record["model"], record["treatment"])
            accuracies.setdefault(key, []).append(_right(val).mean())
    return {key: float(np.mean(values)) for key, values in accuracies.items()}


def test_the_validation_best_is_tested_against_every_other_with_holm(sweep, report):
    paired = pd.read_csv(report / "paired.csv")
    runs = pd.read_csv(report / "runs.csv").set_index("job")
    val = _validation_accuracies(sweep)
    best = max(val, key=val.get)
    assert set(paired["a"]) == {f"{best[0]}/{best[1]} [smoke]"}
    assert set(paired["b"]) == {f"{m}/{t} [smoke]" for m, t in val if (m, t) != best}
    for _, row in paired.iterrows():
        a = pd.read_csv(sweep / row["job_a"] / "test_predictions.csv")
        b = pd.read_csv(sweep / row["job_b"] / "test_predictions.csv")
        assert runs.loc[row["job_a"], "seed"] == runs.loc[row["job_b"], "seed"] == row["seed"]
        assert row["a_only_correct"] == int((_right(a) & ~_right(b)).sum())
        assert row["b_only_correct"] == int((~_right(a) & _right(b)).sum())
        assert row["accuracy_difference"] == pytest.approx(_right(a).mean() - _right(b).mean())
        assert row["resampled"] == "identities"  # the sample's identity file names them all
    # Holm's step-down procedure, as stated: sorted p-values, reject while
    # p_(k) <= level / (m - k + 1). The adjusted p-values reject the same tests at any level.
    order = paired["p_value"].sort_values()
    for level in (0.01, 0.05, 0.2, 0.5, 1.0):
        rejected = set()
        for k, (index, p) in enumerate(order.items()):
            if p > level / (len(order) - k):
                break
            rejected.add(index)
        assert set(paired.index[paired["p_holm"] < level]) <= rejected
        assert rejected <= set(paired.index[paired["p_holm"] <= level])
    settings = load_settings()
    assert (paired["significant"] == (paired["p_holm"] < settings.significance_level)).all()
    markdown = (report / "report.md").read_text()
    assert "Holm-adjusted p" in markdown and "cluster bootstrap" in markdown


def test_the_configuration_chosen_is_the_validation_best_not_the_test_best(sweep, tmp_path):
    """Plant a configuration with the worst test accuracy but perfect validation predictions:
    it is the one chosen, and its test accuracy is what the report says."""
    test_acc: dict[tuple[str, str], list[float]] = {}
    for record in _metrics(sweep).values():
        if record["status"] == "ok":
            key = (record["model"], record["treatment"])
            test_acc.setdefault(key, []).append(record["test/acc"])
    means = {key: np.mean(values) for key, values in test_acc.items()}
    worst, best = min(means, key=means.get), max(means, key=means.get)
    assert means[worst] < means[best]
    copy = _copy_jobs(
        sweep, tmp_path, [_job(sweep, c, seed) for c in (worst, best) for seed in (0, 1)]
    )
    for seed in (0, 1):
        val = copy / _job(sweep, worst, seed) / "val_predictions.csv"
        frame = pd.read_csv(val)
        frame.assign(p_male=frame["label"].astype(float)).to_csv(val, index=False)
    analysis = analyze_sweep(copy, load_settings(**{"bootstrap.resamples": 50}))
    assert (analysis.best["model"], analysis.best["treatment"]) == worst
    assert analysis.best["val_acc_mean"] == 1.0
    assert analysis.best["acc_mean"] == pytest.approx(means[worst])
    assert set(analysis.paired["a"]) == {f"{worst[0]}/{worst[1]} [smoke]"}
    assert f"{worst[0]}/{worst[1]} [smoke], validation accuracy 100.0%" in analysis.conclusions[0]
    assert f"test accuracy {100 * means[worst]:.1f}%" in analysis.conclusions[0]


def _job(sweep: Path, configuration: tuple[str, str], seed: int) -> str:
    for job, record in _metrics(sweep).items():
        if (record["model"], record["treatment"], record.get("seed")) == (*configuration, seed):
            return job
    raise AssertionError(f"no job for {configuration} seed {seed}")


def _copy_jobs(sweep: Path, tmp_path: Path, jobs: list[str]) -> Path:
    """A sweep folder holding some of the sweep's jobs (without their checkpoints)."""
    copy = tmp_path / "sweep"
    for job in jobs:
        shutil.copytree(sweep / job, copy / job, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


def test_a_paired_test_refuses_different_test_sets(sweep):
    predictions = pd.read_csv(sweep / "2_resnet18_scratch_bce_seed0" / "test_predictions.csv")
    with pytest.raises(ValueError, match="different images"):
        compare_paired(predictions, predictions.iloc[1:])


def test_weighted_metrics_equal_torchmetrics_on_the_images_repeated(sweep):
    """A bootstrap resample is a weight per image (how often it was drawn): its metrics are
    torchmetrics' on the images repeated that often, AUROC included."""
    predictions = pd.read_csv(sweep / "4_resnet18_scratch_ce_seed0" / "test_predictions.csv")
    labels, p_male = predictions["label"].to_numpy(), predictions["p_male"].to_numpy()
    rng = np.random.default_rng(0)
    weights = np.vstack([np.ones(len(labels), int), rng.integers(0, 4, (5, len(labels)))])
    values = weighted_metrics(labels, p_male, weights)
    for row, w in zip(values.T, weights, strict=True):
        expected = metric_values(np.repeat(labels, w), np.repeat(p_male, w))
        assert row == pytest.approx([expected[m] for m in METRICS], abs=1e-6)
    assert values[-1, 0] == pytest.approx(
        float(binary_auroc(torch.tensor(p_male), torch.tensor(labels))), abs=1e-6
    )


def test_the_bootstrap_resamples_celebrities_where_identities_are_known(sweep, tmp_path):
    predictions = pd.read_csv(sweep / "4_resnet18_scratch_ce_seed0" / "test_predictions.csv")
    identities = identities_of(str(SAMPLE))
    units, kind = resampling_units(predictions["file_name"], identities)
    assert kind == "identities"
    assert units.max() + 1 == identities[predictions["file_name"]].nunique() < len(predictions)
    # Each celebrity's images three times over: a cluster bootstrap sees the same celebrities
    # and gives the same intervals; a bootstrap of images believes it has three times the data.
    tripled = pd.concat([predictions.assign(file_name=predictions["file_name"] + f"#{k}")
                         for k in range(3)], ignore_index=True)  # fmt: skip
    by_identity = bootstrap_intervals(predictions, 300, 0.95, 0, units)
    by_identity_tripled = bootstrap_intervals(tripled, 300, 0.95, 0, np.tile(units, 3))
    for metric in METRICS:
        assert by_identity_tripled[metric] == pytest.approx(by_identity[metric])
    once, thrice = bootstrap_intervals(predictions, 300), bootstrap_intervals(tripled, 300)
    assert thrice["acc"][1] - thrice["acc"][0] < 0.75 * (once["acc"][1] - once["acc"][0])
    # One image unknown to the identity file: images are resampled, and the report says so.
    unknown = predictions.assign(file_name=predictions["file_name"].where(
        predictions.index > 0, "not_in_celeba.jpg"))  # fmt: skip
    assert resampling_units(unknown["file_name"], identities)[1] == "images"
    assert resampling_units(predictions["file_name"], None)[1] == "images"
    no_identities = tmp_path / "celeba"
    shutil.copytree(SAMPLE, no_identities)
    (no_identities / "Anno" / "identity_CelebA.txt").unlink()
    copy = _copy_jobs(sweep, tmp_path, ["4_resnet18_scratch_ce_seed0"])
    settings = load_settings(data_root=str(no_identities), **{"bootstrap.resamples": 300})
    analysis = analyze_sweep(copy, settings)
    assert list(analysis.runs["resampled"]) == ["images"]
    assert analysis.runs.loc[0, "acc_ci_low"] == pytest.approx(once["acc"][0])
    report = write_report(analysis, tmp_path / "report")
    assert "resamples of test images (no identity file" in (report / "report.md").read_text()


def test_mcnemar_by_celebrity_counts_a_celebrity_once(sweep):
    """Durkalski's clustered McNemar: one image per cluster gives McNemar's chi-square;
    repeating each image within its cluster changes nothing, while the test that takes
    images as independent becomes surer."""
    runs = [pd.read_csv(p) for p in sorted(sweep.glob("*_seed0/test_predictions.csv"))]
    a, b = max(
        ((a, b) for a in runs for b in runs),
        key=lambda ab: abs(
            (_right(ab[0]) & ~_right(ab[1])).sum() - (~_right(ab[0]) & _right(ab[1])).sum()
        ),
    )
    a_only, b_only = (_right(a) & ~_right(b)).to_numpy(), (~_right(a) & _right(b)).to_numpy()
    assert a_only.sum() != b_only.sum()
    singletons = np.arange(len(a))
    chi_square = (a_only.sum() - b_only.sum()) ** 2 / (a_only.sum() + b_only.sum())
    assert mcnemar(a_only, b_only, singletons) == pytest.approx(stats.chi2.sf(chi_square, 1))
    repeated = [np.tile(x, 4) for x in (a_only, b_only)]
    assert mcnemar(*repeated, np.tile(singletons, 4)) == pytest.approx(
        mcnemar(a_only, b_only, singletons)
    )
    assert mcnemar(*repeated) < mcnemar(a_only, b_only)


def test_runs_of_different_experiments_are_never_averaged_together(sweep, tmp_path):
    job = "4_resnet18_scratch_ce_seed0"
    copy = _copy_jobs(sweep, tmp_path, [job, "5_resnet18_scratch_ce_seed1"])
    other = copy / f"99_{job}"
    shutil.copytree(copy / job, other)  # the same job in another experiment
    for path in [other / "metrics.json", *(other / ".hydra").glob("*config.yaml")]:
        path.write_text(
            path.read_text().replace('"smoke"', '"other"').replace(": smoke", ": other")
        )
    runs = collect_runs(copy)
    assert sorted(runs["experiment"]) == ["other", "smoke", "smoke"]
    summary = seed_summary(runs).set_index("experiment")
    assert summary.loc["other", "ok"] == 1 and summary.loc["smoke", "ok"] == 2
    assert summary.loc["other", "acc_mean"] == runs.set_index("job").loc[f"99_{job}", "acc"]
    smoke = runs[runs["experiment"] == "smoke"]
    assert summary.loc["smoke", "acc_mean"] == pytest.approx(smoke["acc"].mean())


def test_the_notebook_shows_the_reports_numbers_whatever_the_settings(sweep, tmp_path):
    """The executed notebook's interval table is the report's, for two confidence levels and
    resample counts, and those are the intervals of the run's predictions at that setting."""
    job = "4_resnet18_scratch_ce_seed0"
    copy = _copy_jobs(sweep, tmp_path, [job, "0_resnet18_pretrained_bce_seed0"])
    predictions = pd.read_csv(copy / job / "test_predictions.csv")
    units, _ = resampling_units(predictions["file_name"], identities_of(str(SAMPLE)))
    shown = []
    for confidence, resamples in ((0.95, 200), (0.5, 100)):
        settings = load_settings(
            **{"bootstrap.confidence": confidence, "bootstrap.resamples": resamples}
        )
        analysis = analyze_sweep(copy, settings)
        report = write_report(analysis, tmp_path / f"report-{confidence}")
        notebook = nbformat.read(execute_notebook(report, settings), as_version=4)
        (cell,) = [c for c in notebook.cells if c.source.startswith("intervals =")]
        runs = pd.read_csv(report / "runs.csv")
        table = runs.loc[
            runs["status"] == "ok", ["job", "resampled", *(c for c in runs if "_ci_" in c)]
        ]
        assert cell.outputs[0]["data"]["text/html"] == table._repr_html_()
        row = runs.set_index("job").loc[job]
        expected = bootstrap_intervals(predictions, resamples, confidence, 0, units)
        assert (row["acc_ci_low"], row["acc_ci_high"]) == pytest.approx(expected["acc"])
        lines = (report / "report.md").read_text().splitlines()
        interval_line = [x for x in lines if x.startswith(f"| {job}") and "identities" in x]
        # Rounded to what the interval supports: 53 [33, 70] at these widths.
        cell = interval_cell(row["acc"], row["acc_ci_low"], row["acc_ci_high"])
        assert f"| {cell} |" in interval_line[0]
        assert cell.count("[") == 1 and str(round(100 * row["acc_ci_high"])) in cell
        shown.append(row["acc_ci_high"] - row["acc_ci_low"])
    assert shown[1] < shown[0]
    # The parameters the report counts are those used at inference, and it says so.
    assert report_figures(analysis)["accuracy_vs_parameters"].axes[0].get_xlabel() == (
        "inference parameters (millions)"
    )
    assert "fewest inference parameters" in (report / "report.md").read_text()


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
        "accuracy_f1_intervals",
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
    assert "theirs %" in markdown and "study_acc (theirs)" in pd.read_csv(
        report / "configurations.csv"
    )
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
    first_conclusion = (report / "conclusions.md").read_text().splitlines()[0]
    assert first_conclusion[2:60] in text and "image/png" in text
    # The report's header and banner too: what the numbers rest on.
    assert "Experiment: smoke; 2 backbones" in text and "not a finding" in text
    assert str(sweep) in text  # it ran on this sweep, not on a default one


def test_learning_curves_come_from_the_runs_tensorboard_logs(sweep):
    series = read_scalars(sweep / "2_resnet18_scratch_bce_seed0", ("val/acc",))
    record = json.loads((sweep / "2_resnet18_scratch_bce_seed0" / "metrics.json").read_text())
    assert len(series["val/acc"]) == record["epochs_trained"]


def test_reference_numbers_cover_the_thirty_runs():
    reference = reference_results()
    assert len(reference) == 30
    assert set(reference["model"]) == {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")}
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
    result = forked_python.run(
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
    result = forked_python.run(
        [sys.executable, "-m", "celeba_gender.analysis", str(copy), "--no-notebook",
         "--resamples", "50", "--set", "bootstrap.confidence=0.8"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "## 80% bootstrap intervals" in (copy / "report" / "report.md").read_text()
    assert "confidence: 0.8" in (copy / "report" / "analysis.yaml").read_text()
    runs = pd.read_csv(copy / "report" / "runs.csv").set_index("job")
    assert runs.loc["4_resnet18_scratch_ce_seed0", "status"] == "ok"
    assert pd.isna(runs.loc["4_resnet18_scratch_ce_seed0", "acc_ci_low"])
    assert pd.notna(runs.loc["2_resnet18_scratch_bce_seed0", "acc_ci_low"])
    assert "test_predictions.csv does not exist" in (copy / "report" / "report.md").read_text()


def test_a_job_the_sweep_lists_keeps_its_row_when_its_folder_is_deleted(sweep, tmp_path):
    """multirun.yaml lists every job the command asked for: a deleted job folder is a missing
    row with what it was (from its overrides), unless another folder given ran it."""
    deleted = _job(sweep, ("resnet18", "scratch_ce"), 1)
    copy = tmp_path / "sweep"
    shutil.copytree(
        sweep, copy, ignore=shutil.ignore_patterns("checkpoints", "report", "*.ckpt", "events.*")
    )
    shutil.rmtree(copy / deleted)
    runs = collect_runs(copy).set_index("job")
    number = deleted.split("_", 1)[0]
    assert number in runs.index, runs.index.tolist()
    row = runs.loc[number]
    assert row["status"] == "missing" and "multirun.yaml" in row["error"]
    assert (row["model"], row["treatment"], row["seed"]) == ("resnet18", "scratch_ce", 1)
    assert len(runs) == len(collect_runs(sweep))  # every job still has a row
    summary = seed_summary(collect_runs(copy))
    cell = summary[(summary["model"] == "resnet18") & (summary["treatment"] == "scratch_ce")]
    assert int(cell["missing"].iloc[0]) == 1 and int(cell["ok"].iloc[0]) == 1

    # The same job run in another folder given alongside (a continued sweep) is that row.
    other = tmp_path / "continued"
    shutil.copytree(sweep / deleted, other / deleted, ignore=shutil.ignore_patterns("checkpoints"))
    both = collect_runs([copy, other])
    same = both[(both["model"] == "resnet18") & (both["treatment"] == "scratch_ce")]
    assert sorted(same["status"]) == ["ok", "ok"], same[["job", "status"]]


def test_a_tie_on_validation_names_one_winner_in_every_sentence(sweep, tmp_path):
    """Two configurations of different backbones and treatments, both perfect on validation:
    the best configuration, backbone, family and treatment sentences name the same one (the
    smaller model), and the tie is said."""
    tied = [("resnet18", "scratch_bce"), ("googlenet", "scratch_ce")]
    copy = _copy_jobs(sweep, tmp_path, [_job(sweep, c, s) for c in tied for s in (0, 1)])
    for configuration in tied:
        for seed in (0, 1):
            val = copy / _job(sweep, configuration, seed) / "val_predictions.csv"
            frame = pd.read_csv(val)
            frame.assign(p_male=frame["label"].astype(float)).to_csv(val, index=False)
    analysis = analyze_sweep(copy, load_settings(**{"bootstrap.resamples": 50}))
    table = analysis.configurations.set_index("model")
    assert table.loc["googlenet", "params_mean"] < table.loc["resnet18", "params_mean"]
    family = table.loc["googlenet", "family"]
    assert family != table.loc["resnet18", "family"]
    lines = analysis.conclusions
    # The test set cannot separate two perfect-on-validation configurations on ~30 images: the
    # first sentence names the group, the validation-first (googlenet) first in each sentence.
    assert "googlenet/scratch_ce [smoke], validation accuracy 100.0% (tied on" in lines[0]
    assert "tied on validation accuracy with resnet18/scratch_bce" in lines[0]
    assert "**No single best configuration**" in lines[0]
    assert "resnet18/scratch_bce [smoke] (test" in lines[0]  # the group it cannot be told from
    assert "Is googlenet/scratch_ce [smoke] (best by validation)" in lines[1]
    assert "first by validation googlenet with scratch_ce" in lines[2]
    assert lines[3].startswith("**Best family: not separable**")
    assert f"— {family} validation 100.0%" in lines[3]
    assert lines[4].startswith("Best treatment: not answerable — no backbone finished every one")
    assert analysis.best["model"] == "googlenet"
    assert set(analysis.paired["a"]) == {"googlenet/scratch_ce [smoke]"}


def test_the_report_says_what_it_rests_on(sweep, report):
    """The header gives the experiment, the data, each part's images and identities (as the
    runs' data_summary.json), image size, epochs, seeds and caps; the banner comes first
    (validation capped at one batch, ~30 test images); every job that did not finish has a
    row with its configuration and the first line of its error."""
    markdown = (report / "report.md").read_text()
    header = markdown.split("## Conclusions")[0]
    assert "show the pipeline working, not a finding" in header
    assert header.index("not a finding") < header.index("## What this rests on")
    assert "evaluation capped in" in header and "`trainer.limit_val_batches=1`" in header
    records = _metrics(sweep)
    ok = [record for record in records.values() if record["status"] == "ok"]
    summary = json.loads(Path(ok[0]["output_dir"], "data_summary.json").read_text())
    for name, part in summary["parts"].items():
        assert f"{name} {part['images']} images / {part['identities']} identities" in header
    assert f"`{summary['root']}`" in header
    assert "Experiment: smoke; 2 backbones x 3 treatments = 13 jobs" in header
    assert f"Image size: {ok[0]['image_size']} px" in header and "seeds: 0, 1, 2" in header
    assert f"Test images evaluated per run: {ok[0]['test_images']};" in header
    table = header.split("### Jobs that did not finish")[1]
    failed = {job: r for job, r in records.items() if r["status"] == "failed"}
    assert len(failed) == 2 and f"Did not finish: {len(failed) + 1} jobs" in header
    for job, record in failed.items():
        model, treatment, seed = record["model"], record["treatment"], record["seed"]
        row = next(line for line in table.splitlines() if line.startswith(f"| {job} "))
        assert f"{model}/{treatment} seed {seed}" in row
        assert f"{record['error_type']}: {record['error'][:40]}" in row
    row = next(line for line in table.splitlines() if line.startswith(f"| {MISSING_JOB} "))
    assert "missing" in row and "no metrics.json" in row


def test_no_sentence_names_a_winner_that_did_not_run_or_cannot_be_separated(sweep, tmp_path):
    """Without resnet18's pretrained jobs, pretrained_bce has only googlenet's two failed ones:
    no sentence names it best, the treatment sentences say why they cannot answer, and a best
    configuration is named only when the paired tests separate it from every other (else the
    sentence names the group)."""
    from celeba_gender.analysis.conclusions import configuration_name, ranked

    jobs = [
        job
        for job, record in _metrics(sweep).items()
        if (record["model"], record["treatment"]) != ("resnet18", "pretrained_bce")
    ]
    copy = _copy_jobs(sweep, tmp_path, [*jobs, MISSING_JOB])
    analysis = analyze_sweep(
        copy, load_settings(**{"bootstrap.resamples": 100, "heat_maps.enabled": False})
    )
    lines = analysis.conclusions
    assert "Does pretraining help? Not answerable: no pretrained_bce run finished (2 failed)." in (
        lines
    )
    (best_treatment,) = [line for line in lines if "Best treatment" in line]
    assert "no pretrained_bce run finished (2 failed)" in best_treatment
    assert "not covered: pretrained_bce with googlenet (2 failed)" in lines[0]
    claims = [claim for line in lines for claim in re.findall(r"\*\*Best [^*]*\*\*", line)]
    assert claims and not any("pretrained_bce" in claim for claim in claims)
    paired = analysis.paired
    beaten = {
        name
        for name, tests in paired.groupby("b")
        if (tests["significant"] & (tests["accuracy_difference"] > 0)).all()
    }
    others = [configuration_name(row) for _, row in ranked(analysis.configurations)[1:].iterrows()]
    assert len(others) == 3
    if set(others) <= beaten:
        assert lines[0].startswith("**Best configuration (chosen by validation accuracy")
    else:
        assert lines[0].startswith("**No single best configuration**")
        assert all(name in lines[0] for name in set(others) - beaten)
        assert not any(claim.startswith("**Best configuration") for claim in claims)


# ----------------------------------------------------------------------------- heat maps
def _cell_counts(predictions: pd.DataFrame, per_cell: int) -> dict[str, int]:
    """How many images each gender x right/wrong cell averages, from the CSV alone."""
    right = (predictions["p_male"] > 0.5) == (predictions["label"] == 1)
    return {
        f"{gender} {outcome}": min(per_cell, int(((predictions["label"] == label) & ok).sum()))
        for gender, label in (("female", 0), ("male", 1))
        for outcome, ok in (("correct", right), ("wrong", ~right))
    }


def test_the_heat_map_grid_averages_each_configurations_cells(sweep, report):
    """One row per configuration (its lowest-seed job), one column per gender x right/wrong
    cell, with n as test_predictions.csv gives it; the maps vary over the face; the mean face
    of a cell that uses all its images is their mean; the grid is in TensorBoard and
    report.md says how to read it."""
    from celeba_gender.analysis.heat_maps import evaluated_checkpoint, mean_maps
    from celeba_gender.analysis.report import heat_map_figure

    assert (report / "figures" / "heat_maps.png").stat().st_size > 20_000
    (events,) = (report / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "report/heat_maps" in accumulator.Tags()["images"]
    markdown = (report / "report.md").read_text()
    assert "![heat_maps](figures/heat_maps.png)" in markdown and "mean Grad-CAM" in markdown

    per_cell = 4  # small enough that some cells are cut to it, others are not
    settings = load_settings(**{"bootstrap.resamples": 20, "heat_maps.images_per_cell": per_cell})
    analysis = analyze_sweep(sweep, settings)
    figure = heat_map_figure(analysis)
    rows, names = {}, []
    for axes in figure.axes[:-1]:  # the last is the colour bar
        if axes.get_ylabel():
            names.append(axes.get_ylabel().split("\n")[0])
            rows[axes.get_ylabel().split("\n")[1]] = []
        rows[list(rows)[-1]].append(axes.get_title())
        if axes.get_title().endswith("n=0"):  # an empty cell says so
            assert [text.get_text() for text in axes.texts] == ["no images"]
    # Rows by validation rank, the axes and the colour scale named.
    order = [
        f"{k + 1}. {model}/{treatment} [smoke]"
        for k, (model, treatment) in enumerate(_validation_order(sweep))
    ]
    assert names == order
    assert "true gender" in figure.get_supxlabel() and "rank" in figure.get_supylabel()
    assert "Grad-CAM" in figure.axes[-1].get_ylabel()
    metrics = _metrics(sweep)
    ok = {j for j, r in metrics.items() if r["status"] == "ok"}
    configurations = {(metrics[j]["model"], metrics[j]["treatment"]) for j in ok}
    lowest_seed = {
        c: min((j for j in ok if (metrics[j]["model"], metrics[j]["treatment"]) == c),
               key=lambda j: metrics[j]["seed"])
        for c in configurations
    }  # fmt: skip
    assert set(rows) == set(lowest_seed.values()) and len(rows) == 5
    for job, titles in rows.items():
        counts = _cell_counts(pd.read_csv(sweep / job / "test_predictions.csv"), per_cell)
        assert titles == [f"{cell}\nn={n}" for cell, n in counts.items()]

    job = lowest_seed[("resnet18", "scratch_bce")]
    predictions = pd.read_csv(sweep / job / "test_predictions.csv")
    counts = _cell_counts(predictions, 10_000)
    cells = mean_maps(evaluated_checkpoint(sweep / job), SAMPLE / "img_align_celeba",
                      predictions, 10_000, 0)  # fmt: skip
    assert {name: cell.count for name, cell in cells.items()} == counts
    right = (predictions["p_male"] > 0.5) == (predictions["label"] == 1)
    for (name, cell), (label, ok) in zip(
        cells.items(), [(0, right), (0, ~right), (1, right), (1, ~right)], strict=True
    ):
        if not cell.count:
            assert cell.heat is None
            continue
        assert cell.heat.shape == (218, 178), name
        files = predictions.loc[(predictions["label"] == label) & ok, "file_name"]
        faces = [np.asarray(Image.open(SAMPLE / "img_align_celeba" / f).convert("RGB")) / 255
                 for f in files]  # fmt: skip
        assert np.abs(cell.face - np.mean(faces, axis=0)).max() < 1e-5, name


def test_the_heat_map_grid_can_keep_only_the_validation_best_configurations(sweep):
    """heat_maps.max_configurations=2: the rows are the first two configurations by validation
    (their lowest-seed jobs) of the five, and the title says so; 0 is refused."""
    from celeba_gender.analysis.conclusions import configuration_name, ranked
    from celeba_gender.analysis.report import heat_map_figure
    from celeba_gender.data import DataError

    settings = load_settings(
        **{"bootstrap.resamples": 20, "heat_maps.images_per_cell": 2,
           "heat_maps.max_configurations": 2}
    )  # fmt: skip
    analysis = analyze_sweep(sweep, settings)
    figure = heat_map_figure(analysis)
    labels = [axes.get_ylabel() for axes in figure.axes[:-1] if axes.get_ylabel()]
    order = ranked(analysis.configurations)
    assert len(order) == 5
    assert labels == [
        f"{rank + 1}. {configuration_name(c)}\n{analysis.run_of(c)['job']}"
        for rank, c in order[:2].iterrows()
    ]
    assert figure.get_suptitle().endswith("configuration; the first 2 of 5 by validation)")
    analysis.settings.heat_maps.max_configurations = 0
    with pytest.raises(DataError, match="max_configurations=0: a whole number from 1, or null"):
        heat_map_figure(analysis)


def test_mean_heat_maps_vary_over_the_face(run_env, tmp_path):
    """At the smoke sweep's 32 px the last layer is 1x1, so a map is flat inside the face box;
    at 96 px (3x3) the mean maps must vary over the face, and differ between cells."""
    from celeba_gender.analysis.heat_maps import evaluated_checkpoint, mean_maps

    folder = tmp_path / "run"
    result = run_script(
        "train.py", "experiment=smoke", "model=resnet18", "data.image_size=96",
        "trainer.limit_test_batches=1.0", f"hydra.run.dir={folder}", env=run_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = pd.read_csv(folder / "test_predictions.csv")
    cells = mean_maps(evaluated_checkpoint(folder), SAMPLE / "img_align_celeba", predictions, 8, 0)
    faces = [cell.heat[40:198, 10:168] for cell in cells.values() if cell.count]  # inside the box
    assert len(faces) >= 2
    for face in faces:
        assert face.max() - face.min() > 0.1
    assert np.abs(faces[0] - faces[1]).max() > 0.01


@pytest.mark.parametrize("remove", ["checkpoints", "captum", "enabled"])
def test_the_heat_map_grid_is_skipped_with_the_reason(sweep, tmp_path, remove):
    """Checkpoints gone or a run tested on its last epoch's weights (no best checkpoint kept;
    one report of two such jobs), no captum, or turned off: the report is written without
    the grid and says why."""
    job, other = "2_resnet18_scratch_bce_seed0", "0_resnet18_pretrained_bce_seed0"
    copy = tmp_path / "sweep"
    shutil.copytree(sweep / job, copy / job)
    if remove == "checkpoints":
        shutil.copytree(sweep / other, copy / other)
        shutil.rmtree(copy / job / "checkpoints")
        record = json.loads((copy / other / "metrics.json").read_text())
        (copy / other / "metrics.json").write_text(
            json.dumps({**record, "evaluated_checkpoint": "last epoch"})
        )
    # No captum: the import fails as it does where the package is not installed.
    hide = "import sys; sys.modules['captum'] = None; " if remove == "captum" else ""
    switch = "--set=heat_maps.enabled=" + ("false" if remove == "enabled" else "true")
    command = (
        f"{hide}from celeba_gender.analysis.__main__ import main; "
        f"sys.exit(main([{str(copy)!r}, '--no-notebook', '--resamples', '20', {switch!r}]))"
    )
    result = forked_python.run(
        [sys.executable, "-c", f"import sys; {command}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (copy / "report" / "report.md").read_text()
    assert not (copy / "report" / "figures" / "heat_maps.png").exists()
    assert (copy / "report" / "figures" / "accuracy_heatmap.png").is_file()
    expected = {
        "checkpoints": [
            f"{job}: no heat maps ({job}: its evaluated checkpoint best.ckpt is gone",
            f"{other} was tested on its last epoch's weights",
        ],
        "captum": ["no heat-map grid: it needs captum (pip install -e '.[explain]')"],
        "enabled": ["no heat-map grid: heat_maps.enabled=false"],
    }[remove]
    for sentence in expected:
        assert sentence in markdown


# ----------------------------------------------------------------------------- figures
@pytest.fixture(scope="module")
def drawn(sweep):
    """The report's figures of the sweep (the heat-map grid aside: its tests are above), with
    the bootstrap settings of the ``report`` fixture, so its tables are the figures' numbers."""
    settings = load_settings(**{"bootstrap.resamples": 300, "heat_maps.enabled": False})
    analysis = analyze_sweep(sweep, settings)
    return analysis, report_figures(analysis)


def _contrast(a, b) -> float:
    """WCAG 2 contrast ratio of two colours (1: none, 21: black on white)."""
    from matplotlib.colors import to_rgb

    def luminance(colour):
        rgb = np.array(to_rgb(colour))
        linear = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        return linear @ [0.2126, 0.7152, 0.0722]

    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _ok_runs_by_configuration(sweep: Path) -> dict[tuple[str, str], list[str]]:
    jobs: dict[tuple[str, str], list[str]] = {}
    for job, record in sorted(_metrics(sweep).items(), key=lambda item: item[1].get("seed")):
        if record["status"] == "ok":
            jobs.setdefault((record["model"], record["treatment"]), []).append(job)
    return jobs


def _validation_order(sweep: Path) -> list[tuple[str, str]]:
    """Configurations by mean validation accuracy, ties to fewer parameters, then the name."""
    val = _validation_accuracies(sweep)
    ok_records = [r for r in _metrics(sweep).values() if r["status"] == "ok"]
    params = {(r["model"], r["treatment"]): r["params"] for r in ok_records}
    return sorted(val, key=lambda c: (-round(val[c], 9), params[c], c))


def test_the_accuracy_figure_shows_each_run_with_its_bootstrap_interval(sweep, report, drawn):
    """Points, not bars cut at an arbitrary floor: each run at its test accuracy (F1) with the
    interval of runs.csv, the mean of its seeds marked, best validation accuracy at the top."""
    _, figures = drawn
    figure = figures["accuracy_f1_intervals"]
    runs = pd.read_csv(report / "runs.csv")
    ok = runs[runs["status"] == "ok"]
    configurations = pd.read_csv(report / "configurations.csv")
    for axes, metric in zip(figure.axes, ("acc", "f1"), strict=True):
        assert not axes.containers  # no bars
        intervals = [line.get_xdata() for line in axes.lines if line.get_gid() == "interval"]
        points = [line.get_xdata()[0] for line in axes.lines if line.get_gid() == "run"]
        means = [line.get_xdata()[0] for line in axes.lines if line.get_gid() == "mean"]
        expected = np.round(ok[[f"{metric}_ci_low", f"{metric}_ci_high"]].to_numpy(), 9)
        assert sorted(map(tuple, np.round(intervals, 9))) == sorted(map(tuple, expected))
        assert sorted(points) == pytest.approx(sorted(ok[metric]), abs=1e-9)
        several = configurations[configurations["ok"] > 1]
        assert sorted(means) == pytest.approx(sorted(several[f"{metric}_mean"]), abs=1e-9)
        assert axes.get_xlabel() == f"test {'accuracy' if metric == 'acc' else 'F1'}"
    shown = [t.get_text().split(". ", 1)[1] for t in figure.axes[0].get_yticklabels()]
    assert [tuple(name.split(" / ")) for name in shown] == _validation_order(sweep)
    assert "mean over seeds" in figure.get_suptitle()
    assert "95% cluster bootstrap over test celebrities" in figure.get_suptitle()


def test_confusion_matrices_are_labelled_and_their_numbers_readable(sweep, drawn):
    """Axis titles and class names; counts (summed over a configuration's seeds, as its
    test_predictions.csv give them) and row percentages, white on dark and black on light."""
    _, figures = drawn
    figure = figures["confusion_matrices"]
    jobs = _ok_runs_by_configuration(sweep)
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == len(jobs) == 5
    for axes in panels:
        assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted", "true")
        for labels in (axes.get_xticklabels(), axes.get_yticklabels()):
            assert [t.get_text() for t in labels] == ["female", "male"]
        model, treatment = axes.get_title().split(" [")[0].split("/")
        expected = np.zeros((2, 2), int)
        for job in jobs[(model, treatment)]:
            predictions = pd.read_csv(sweep / job / "test_predictions.csv")
            for truth, male in ((0, False), (0, True), (1, False), (1, True)):
                same = (predictions["label"] == truth) & ((predictions["p_male"] > 0.5) == male)
                expected[truth, int(male)] += int(same.sum())
        (image,) = axes.images
        assert len(axes.texts) == 4
        for text in axes.texts:
            j, i = (round(v) for v in text.get_position())
            count, percent = text.get_text().split("\n")
            assert int(count) == expected[i, j]
            assert percent == f"{100 * expected[i, j] / expected[i].sum():.0f}%"
            cell = image.to_rgba(image.get_array()[i, j])
            assert _contrast(text.get_color(), cell) >= 4.5, (text.get_text(), cell)


def test_learning_curves_are_one_line_per_configuration_over_its_seeds(sweep, drawn):
    """One line per configuration at the mean of its seeds' logged values, visible for the
    smoke sweep's one-epoch runs (a marker), with the seeds' range drawn at that epoch."""
    from matplotlib.collections import LineCollection

    _, figures = drawn
    axes = figures["learning_curves"].axes[0]
    assert axes.get_ylabel() == "validation accuracy"
    jobs = _ok_runs_by_configuration(sweep)
    lines = {line.get_label(): line for line in axes.lines}
    assert set(lines) == {f"{m} / {t}" for m, t in jobs}
    ranges = [c for c in axes.collections if isinstance(c, LineCollection)]
    assert len(ranges) == sum(len(seeds) > 1 for seeds in jobs.values())
    extents = {tuple(np.round(sorted(c.get_paths()[0].vertices[:, 1]), 9)) for c in ranges}
    for (model, treatment), seeds in jobs.items():
        line = lines[f"{model} / {treatment}"]
        values = [read_scalars(sweep / job, ("val/acc",))["val/acc"] for job in seeds]
        assert all(len(v) == 1 for v in values)  # one epoch
        assert line.get_marker() not in (None, "None", "", " ")
        assert np.round(line.get_xdata()).tolist() == [1]
        assert line.get_ydata()[0] == pytest.approx(np.mean(values))
        if len(seeds) > 1:
            assert tuple(np.round([np.min(values), np.max(values)], 9)) in extents


def test_the_model_by_treatment_grid_marks_failed_and_not_run_cells(sweep, tmp_path):
    """A configuration whose jobs all failed is a cell saying so (its treatment column shown
    though nothing of it ran), one the sweep did not run says that, and a cell that lost
    jobs says how many of them finished."""
    from celeba_gender.analysis.figures import metric_heatmap

    kept = [
        ("googlenet", "pretrained_bce"),
        ("googlenet", "scratch_ce"),
        ("resnet18", "scratch_bce"),
    ]
    jobs = [job for job, r in _metrics(sweep).items() if (r["model"], r["treatment"]) in kept]
    copy = _copy_jobs(sweep, tmp_path, [*jobs, MISSING_JOB])
    analysis = analyze_sweep(copy, load_settings(**{"bootstrap.resamples": 20}))
    axes = metric_heatmap(analysis.configurations, "acc").axes[0]
    models = [t.get_text() for t in axes.get_yticklabels()]
    treatments = [t.get_text() for t in axes.get_xticklabels()]
    assert sorted(models) == ["googlenet", "resnet18"]
    assert treatments == ["pretrained_bce", "scratch_bce", "scratch_ce"]
    cells = {}
    for text in axes.texts:
        j, i = (round(v) for v in text.get_position())
        cells[(models[i], treatments[j])] = text.get_text()
    assert len(cells) == 6
    assert cells[("googlenet", "pretrained_bce")] == "failed"
    for configuration in [("googlenet", "scratch_bce"), ("resnet18", "pretrained_bce"),
                          ("resnet18", "scratch_ce")]:  # fmt: skip
        assert cells[configuration] == "not run"
    table = analysis.configurations.set_index(["model", "treatment"])
    assert (
        cells[("googlenet", "scratch_ce")]
        == f"{table.loc[('googlenet', 'scratch_ce'), 'acc_mean']:.3f}"
    )
    assert cells[("resnet18", "scratch_bce")] == (
        f"{table.loc[('resnet18', 'scratch_bce'), 'acc_mean']:.3f}\n2 of 3 jobs ok"
    )


@pytest.mark.parametrize("name", ["accuracy_vs_parameters", "accuracy_vs_training_time"])
def test_cost_figures_label_every_point_without_overlap(drawn, name):
    """Each configuration's point labelled with its backbone, no two labels overlapping, all
    inside the axes once drawn; parameters in millions."""
    from matplotlib.text import Annotation, Text

    analysis, figures = drawn
    figure = figures[name]
    axes = figure.axes[0]
    FigureCanvasAgg(figure).draw()
    renderer = figure.canvas.get_renderer()
    labels = [t for t in axes.texts if isinstance(t, Annotation)]
    configurations = analysis.configurations[analysis.configurations["ok"] > 0]
    assert sorted(t.get_text() for t in labels) == sorted(configurations["model"])
    column = {"accuracy_vs_parameters": "params_mean"}.get(name, "train_seconds_mean")
    scale = 1e-6 if column == "params_mean" else 1.0
    points = np.array(sorted(tuple(xy) for line in axes.lines for xy in line.get_xydata()))
    expected = sorted(zip(configurations[column] * scale, configurations["acc_mean"], strict=True))
    np.testing.assert_allclose(points, np.array(expected))
    for label in labels:  # each label at a point of its own backbone
        at = np.isclose(configurations[column] * scale, label.xy[0]) & np.isclose(
            configurations["acc_mean"], label.xy[1]
        )
        assert label.get_text() in set(configurations.loc[at, "model"])
    boxes = [Text.get_window_extent(label, renderer) for label in labels]
    inside = axes.get_window_extent(renderer)
    for k, box in enumerate(boxes):
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
        for other in boxes[k + 1 :]:
            assert not box.overlaps(other), (box, other)
    if name == "accuracy_vs_parameters":
        assert axes.get_xlabel() == "inference parameters (millions)"


def test_run_facts_survive_metric_names_and_a_missing_metric_is_no_seed(sweep, tmp_path):
    jobs = [_job(sweep, ("resnet18", "scratch_bce"), seed) for seed in (0, 1)]
    copy = _copy_jobs(sweep, tmp_path, jobs)
    record = json.loads((copy / jobs[1] / "metrics.json").read_text())
    record["test/acc"] = float("nan")  # a run whose accuracy could not be computed
    del record["loss"]  # an older record without the fact: its test loss is still test_loss
    (copy / jobs[1] / "metrics.json").write_text(json.dumps(record))
    runs = collect_runs(copy).set_index("job")
    assert set(runs["loss"]) == {"bce"}  # the loss function (the saved config's), not the test loss
    assert runs["test_loss"].notna().all()
    assert runs.loc[jobs[0], "test_loss"] == pytest.approx(_metrics(sweep)[jobs[0]]["test/loss"])
    assert runs.loc[jobs[1], "missing_metrics"] == "acc"
    assert runs.loc[jobs[0], "missing_metrics"] == ""
    configuration = seed_summary(runs.reset_index()).iloc[0]
    assert (configuration["ok"], configuration["acc_seeds"], configuration["f1_seeds"]) == (2, 1, 2)
    assert configuration["acc_mean"] == pytest.approx(runs.loc[jobs[0], "acc"])
    spread = conclusions._spread(configuration)
    assert "over 2 seeds" not in spread and "1 finished seed(s) without a test accuracy" in spread
    table = run_table(runs.reset_index()).set_index("job")
    assert table.loc[jobs[1], "status"] == "ok (no acc)"
