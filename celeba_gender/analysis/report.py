"""From a sweep folder to a report folder: tables (CSV, Markdown), conclusions, figures (PNG and
TensorBoard) and the executed analysis notebook.

``analyze_sweep`` computes everything into a ``SweepAnalysis``; ``write_report`` writes it;
``execute_notebook`` runs notebooks/analysis.ipynb on the report folder. The notebook reads the
tables, conclusions and figures the report wrote and computes nothing, so the report and the
notebook cannot disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from celeba_gender.analysis import conclusions, figures, heat_maps, tables
from celeba_gender.analysis.calibration import (
    expected_calibration_error,
    reliability_table,
    threshold_comparison,
)
from celeba_gender.analysis.collect import (
    FINAL_FIT,
    collect_runs,
    final_fits,
    is_final_fit,
    read_predictions,
)
from celeba_gender.analysis.fairness import attributes_of, fairness_summary, subgroup_table
from celeba_gender.analysis.scope import Scope, sweep_scope
from celeba_gender.analysis.statistics import (
    CONFIGURATION,
    IDENTITIES,
    bootstrap_intervals,
    compare_paired,
    correct,
    holm,
    identities_of,
    resampling_units,
    seed_summary,
)
from celeba_gender.config import CONFIG_DIR
from celeba_gender.data import DataError
from celeba_gender.data.sources import DEFAULT_CLASS_NAMES, source_image_dir
from celeba_gender.inference.explain import explain_available
from celeba_gender.progress import progress, progress_enabled
from celeba_gender.quiet_interrupt import quiet_imports
from celeba_gender.spreadsheet import safe_frame
from celeba_gender.training.resume import saved_config

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference_study.csv"
# What the report folder holds for the notebook (and any reader) besides report.md.
SETTINGS_FILE, CONCLUSIONS_FILE = "analysis.yaml", "conclusions.md"
# How to read a figure that its title cannot say, under it in report.md.
FIGURE_CAPTIONS = {
    "heat_maps": "Heat maps: one row per configuration (its lowest-seed run; validation-best "
    "first, at most `heat_maps.max_configurations`), one column per "
    "gender x right/wrong cell of its test images (n: images averaged, at most "
    "`heat_maps.images_per_cell`); each cell is the mean Grad-CAM map toward the predicted "
    "class drawn over the mean of those images, so warm colour where the model looked on most "
    "of them (hair, jaw, eyes, or background outside the face).",
}


def load_settings(**overrides) -> DictConfig:
    """conf/analysis.yaml with the given values replaced (None: keep the file's)."""
    settings = OmegaConf.load(CONFIG_DIR / "analysis.yaml")
    for dotted, value in overrides.items():
        if value is not None:
            OmegaConf.update(settings, dotted, value)
    return settings


def reference_results() -> pd.DataFrame:
    """The reference study's own numbers (random image split, shared identities): theirs."""
    with resources.files("celeba_gender.analysis").joinpath(REFERENCE_FILE).open() as file:
        return pd.read_csv(file, comment="#")


@dataclass
class SweepAnalysis:
    """Everything the report says about one sweep."""

    sweep_dirs: list[Path]  # the folders read (the report goes into the first by default)
    settings: DictConfig
    runs: pd.DataFrame  # one row per job, with validation accuracy, intervals, calibration
    configurations: pd.DataFrame  # one row per experiment x model x treatment: over seeds
    fairness: pd.DataFrame  # subgroup x gender cells of every run
    fairness_runs: pd.DataFrame  # worst group and largest gap per run
    reliability: dict[str, pd.DataFrame]  # per run: reliability diagram points
    paired: pd.DataFrame  # the validation-best configuration against each other, by seed
    conclusions: list[str]
    scope: Scope | None = None  # what the report rests on: header, failed jobs, banner
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why

    @property
    def sweep_dir(self) -> Path:
        return self.sweep_dirs[0]

    @property
    def ok_runs(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"]

    @property
    def best(self) -> pd.Series | None:
        table = conclusions.ranked(self.configurations)
        return None if table.empty else table.iloc[0]

    def runs_of(self, configuration: pd.Series) -> pd.DataFrame:
        """The successful runs of a configuration (its seeds), lowest seed first."""
        return runs_of(self.runs, configuration)

    def run_of(self, configuration: pd.Series) -> pd.Series:
        """The lowest-seed successful run of a configuration (for per-run pictures)."""
        return self.runs_of(configuration).iloc[0]

    def predictions(self, job: str, part: str = "test") -> pd.DataFrame:
        return read_predictions(self.runs.set_index("job").loc[job, "run_dir"], part)

    def data_root(self, run: pd.Series) -> str | None:
        return _data_root(self.settings, run)

    def identities(self, run: pd.Series) -> pd.Series | None:
        return _identities(self.settings, run)


def _data_root(settings: DictConfig, run: pd.Series) -> str | None:
    """The CelebA copy a run was tested on: --data-root if given, else what the run recorded."""
    recorded = run["data_root"]
    return settings.get("data_root") or (
        recorded if isinstance(recorded, str) and recorded else None
    )


def _source_settings(run: pd.Series) -> dict[str, Any]:
    """The run's data.source, data.class_names and data.csv_columns (hashable; the defaults
    for a run from before those settings): how its data_root is read."""
    data = (saved_config(Path(run["run_dir"])) or {}).get("data") or {}
    return {
        "source": data.get("source") or "auto",
        "class_names": tuple(data.get("class_names") or DEFAULT_CLASS_NAMES),
        "csv_columns": tuple((data.get("csv_columns") or {}).items()),
    }


def _identities(settings: DictConfig, run: pd.Series) -> pd.Series | None:
    """Person by file name in the run's data (None: unknown; bootstraps then resample
    images)."""
    data_root = _data_root(settings, run)
    try:
        return identities_of(data_root, **_source_settings(run)) if data_root else None
    except DataError:
        return None


def runs_of(runs: pd.DataFrame, configuration: pd.Series) -> pd.DataFrame:
    """The successful runs of ``runs`` of a configuration (its seeds), lowest seed first."""
    runs = runs[runs["status"] == "ok"]
    same = pd.Series(True, index=runs.index)
    for key in CONFIGURATION:
        same &= (runs[key] == configuration[key]) | (runs[key].isna() & pd.isna(configuration[key]))
    return runs[same].sort_values("seed", kind="stable")


def with_validation_accuracy(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (``collect_runs``') with each successful run's ``val_acc`` and ``val_images``
    (``_validation_accuracy``; NaN for the others)."""
    validation = [
        _validation_accuracy(run) if run["status"] == "ok" else (float("nan"), float("nan"))
        for _, run in runs.iterrows()
    ]
    runs = runs.copy()
    runs["val_acc"] = [accuracy for accuracy, _ in validation]
    runs["val_images"] = pd.array([images for _, images in validation], dtype="Float64").astype(
        "Int64"
    )
    return runs


def validation_best_run(runs: pd.DataFrame) -> pd.Series | None:
    """The run the analysis calls best (its report's, the README pictures', the demo's
    default): the lowest-seed successful run of the configuration ``conclusions.ranked`` puts
    first (best mean validation accuracy over its seeds). ``runs``: ``with_validation_accuracy``'s;
    None when no run succeeded."""
    table = conclusions.ranked(seed_summary(runs))
    return None if table.empty else runs_of(runs, table.iloc[0]).iloc[0]


def _validation_accuracy(run: pd.Series) -> tuple[float, float]:
    """(accuracy, images) of the evaluated checkpoint on the validation images its
    val_predictions.csv holds (the whole part unless trainer.limit_predict_batches capped it),
    or else the run's best monitored val/acc (images unknown): what chooses configurations."""
    try:
        hits = correct(read_predictions(run["run_dir"], "val"))
        return float(hits.mean()), float(len(hits))
    except DataError:
        best = float(run["best_val"]) if run["monitor"] == "val/acc" else float("nan")
        return best, float("nan")


def analyze_sweep(
    sweep_dirs: str | Path | Sequence[str | Path], settings: DictConfig | None = None
) -> SweepAnalysis:
    """Read one sweep, or several (each configuration counted once), and compute every table
    and conclusion of the report."""
    settings = settings or load_settings()
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    sweep_dirs = list(dict.fromkeys(Path(d).expanduser().resolve() for d in sweep_dirs))
    runs = with_validation_accuracy(collect_runs(sweep_dirs))
    notes: list[str] = []
    if final_fits(runs).any():
        notes.append(
            f"Experiments ending {FINAL_FIT} trained on the training and validation images "
            "(data.final_fit=true) and were tested on their last epoch: they have no validation "
            "accuracy, so they are listed last in the configurations table and never ranked, "
            "compared or chosen; their test figures read as any other's."
        )
    per_run, cells, fairness_rows, reliability = [], [], [], {}
    ok = runs[runs["status"] == "ok"]
    for _, run in progress(ok.iterrows(), total=len(ok), desc="Bootstrap per run", unit="run"):
        try:
            extra, run_cells = _analyze_run(run, settings, notes)
        except DataError as error:  # e.g. predictions deleted: the run keeps its metrics row
            notes.append(f"{run['job']}: no intervals, calibration or slices ({error})")
            continue
        per_run.append({"job": run["job"], **extra.pop("values")})
        reliability[run["job"]] = extra.pop("reliability")
        if run_cells is not None:
            cells.append(run_cells.assign(job=run["job"]))
            fairness_rows.append({"job": run["job"], **fairness_summary(run_cells)})
    if per_run:
        runs = runs.merge(pd.DataFrame(per_run), on="job", how="left")
    configurations = _with_intervals(seed_summary(runs), runs, settings.bootstrap.confidence)
    reference = reference_results().rename(columns={"acc": "study_acc (theirs)"})
    if not configurations.empty:
        configurations = configurations.merge(
            reference[["model", "treatment", "study_acc (theirs)"]],
            on=["model", "treatment"],
            how="left",
        )
    analysis = SweepAnalysis(
        sweep_dirs=sweep_dirs,
        settings=settings,
        runs=runs,
        configurations=configurations,
        fairness=pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(),
        fairness_runs=pd.DataFrame(fairness_rows),
        reliability=reliability,
        paired=pd.DataFrame(),
        conclusions=[],
        notes=notes,
    )
    analysis.paired = _compare_best(analysis)
    analysis.scope = sweep_scope(
        runs, settings.finding.max_interval_width, settings.bootstrap.confidence
    )
    analysis.conclusions = _conclusions(analysis)
    return analysis


def _with_intervals(
    configurations: pd.DataFrame, runs: pd.DataFrame, confidence: float
) -> pd.DataFrame:
    """Each configuration with the test-accuracy interval of its lowest-seed successful run
    (``acc_ci_low``, ``acc_ci_high``, ``ci_seed``, ``ci_level``): what a "best" is named with."""
    if configurations.empty or "acc_ci_low" not in runs:
        return configurations
    ok = runs[(runs["status"] == "ok") & runs["acc_ci_low"].notna()].sort_values("seed")
    lowest = ok.drop_duplicates(list(CONFIGURATION))[
        [*CONFIGURATION, "acc_ci_low", "acc_ci_high", "seed"]
    ].rename(columns={"seed": "ci_seed"})
    merged = configurations.merge(lowest, on=list(CONFIGURATION), how="left")
    return merged.assign(ci_level=confidence)


def _analyze_run(run: pd.Series, settings: DictConfig, notes: list[str]):
    """Bootstrap intervals, calibration and subgroup cells of one successful run."""
    predictions = read_predictions(run["run_dir"])
    boot = settings.bootstrap
    units, resampled = resampling_units(predictions["file_name"], _identities(settings, run))
    intervals = bootstrap_intervals(predictions, boot.resamples, boot.confidence, boot.seed, units)
    values = {"resampled": resampled}
    for name, (low, high) in intervals.items():
        values[f"{name}_ci_low"], values[f"{name}_ci_high"] = low, high
    values["ece"] = expected_calibration_error(predictions, settings.calibration_bins)
    try:
        values.update(threshold_comparison(read_predictions(run["run_dir"], "val"), predictions))
    except DataError:
        if not is_final_fit(run.get("experiment")):  # the final-fit note says why it has none
            notes.append(f"{run['job']}: no val_predictions.csv, so no tuned threshold.")
    cells = None
    data_root = _data_root(settings, run)
    if data_root:
        source = _source_settings(run)
        try:
            cells = subgroup_table(
                predictions,
                attributes_of(data_root, source["source"], source["class_names"]),
                list(settings.fairness.attributes),
                settings.fairness.min_group_size,
                boot.confidence,
            )
        except DataError as error:
            notes.append(f"{run['job']}: no fairness slices ({error})")
    else:
        notes.append(f"{run['job']}: no data_root recorded; pass --data-root for fairness slices.")
    extra = {
        "values": values,
        "reliability": reliability_table(predictions, settings.calibration_bins),
    }
    return extra, cells


def _compare_best(analysis: SweepAnalysis) -> pd.DataFrame:
    """The validation-best configuration against every other one on the same test images, seed
    by seed: one row per test, with Holm-adjusted p-values over them all."""
    table = conclusions.ranked(analysis.configurations)
    if len(table) < 2:
        return pd.DataFrame()
    best_runs = analysis.runs_of(table.iloc[0]).set_index("seed")
    boot = analysis.settings.bootstrap
    rows = []
    others = table.iloc[1:]
    for rank, other in progress(others.iterrows(), total=len(others), desc="Paired tests"):
        other_runs = analysis.runs_of(other).set_index("seed")
        for seed in sorted(set(best_runs.index) & set(other_runs.index)):
            run_a, run_b = best_runs.loc[seed], other_runs.loc[seed]
            try:
                comparison = compare_paired(
                    analysis.predictions(run_a["job"]),
                    analysis.predictions(run_b["job"]),
                    boot.resamples,
                    boot.confidence,
                    boot.seed,
                    analysis.identities(run_a),
                )
            except (ValueError, DataError) as error:
                analysis.notes.append(f"{run_a['job']} vs {run_b['job']}: no paired test ({error})")
                continue
            rows.append(
                {
                    "a": conclusions.configuration_name(table.iloc[0]),
                    "b": conclusions.configuration_name(other),
                    "b_validation_rank": rank + 1,
                    "seed": int(seed),
                    "job_a": run_a["job"],
                    "job_b": run_b["job"],
                    "images": comparison.images,
                    "a_only_correct": comparison.a_only_correct,
                    "b_only_correct": comparison.b_only_correct,
                    "accuracy_difference": comparison.accuracy_difference,
                    "difference_low": comparison.difference_interval[0],
                    "difference_high": comparison.difference_interval[1],
                    "resampled": comparison.resampled,
                    "p_value": comparison.p_value,
                }
            )
    paired = pd.DataFrame(rows)
    if not paired.empty:
        paired["p_holm"] = holm(paired["p_value"])
        paired["significant"] = paired["p_holm"] < analysis.settings.significance_level
    return paired


def _conclusions(analysis: SweepAnalysis) -> list[str]:
    configurations, level = analysis.configurations, analysis.settings.significance_level
    if configurations.empty or conclusions.ranked(configurations).empty:
        return ["No run finished: nothing to conclude."]
    lines = conclusions.best_choices(configurations, analysis.paired, level, analysis.runs)
    table = conclusions.ranked(configurations)
    if len(table) >= 2:
        lines.insert(
            1, conclusions.paired_verdict(table.iloc[0], table.iloc[1], analysis.paired, level)
        )
    questions = [
        ("pretrained_bce", "scratch_bce", "Does pretraining help?"),
        ("scratch_bce", "scratch_ce", "BCE or CE from scratch?"),
    ]
    lines += conclusions.treatment_effects(configurations, questions, level, analysis.runs)
    lines.append(conclusions.depth_trend(configurations))
    lines.append(conclusions.cost_tradeoff(configurations, analysis.settings.cost_tolerance))
    best_run = analysis.run_of(analysis.best)
    fairness = analysis.fairness_runs
    if not fairness.empty and best_run["job"] in set(fairness["job"]) and "worst_group" in fairness:
        row = analysis.fairness_runs.set_index("job").loc[best_run["job"]]
        if pd.notna(row.get("worst_group")):
            lines.append(
                f"Fairness of the best configuration ({best_run['job']}): worst subgroup with "
                f"at least {analysis.settings.fairness.min_group_size} images is "
                f"{row['worst_group']} at {100 * row['worst_group_accuracy']:.1f}% "
                f"({int(row['worst_group_images'])} images); the largest gap is "
                f"{100 * row.get('largest_gap', float('nan')):+.1f} points "
                f"({row.get('largest_gap_gender')} with vs without "
                f"{row.get('largest_gap_attribute')})."
            )
    return lines


# ----------------------------------------------------------------------------- figures
def report_figures(analysis: SweepAnalysis) -> dict[str, object]:
    """Every figure of the report by file stem (what the notebook shows, too)."""
    return dict(progress(_figures(analysis), desc="Figures", unit="figure"))


def _figures(analysis: SweepAnalysis) -> Iterator[tuple[str, object]]:
    """The report's figures, each as soon as it is drawn (the heat maps take longest)."""
    if analysis.ok_runs.empty:
        return
    configurations = analysis.configurations
    yield "accuracy_heatmap", figures.metric_heatmap(configurations, "acc")
    yield "f1_heatmap", figures.metric_heatmap(configurations, "f1")
    yield "accuracy_f1_intervals", figures.metric_intervals(configurations, analysis.runs)
    yield (
        "accuracy_vs_parameters",
        figures.accuracy_versus(
            configurations, "params_mean", "inference parameters (millions)", scale=1e-6
        ),
    )
    yield (
        "accuracy_vs_training_time",
        figures.accuracy_versus(configurations, "train_seconds_mean", "training time (s)"),
    )
    # The configurations the figures show (one per model x treatment), validation-best first.
    shown = [(c, analysis.runs_of(c)) for _, c in conclusions.chosen(configurations).iterrows()]
    matrices = {}
    for configuration, runs in shown:
        analyzed = runs[runs["job"].isin(analysis.reliability)]  # predictions still readable
        if analyzed.empty:
            continue
        seeds = ", ".join(str(int(s)) if pd.notna(s) else "?" for s in analyzed["seed"])
        total = sum(confusion_matrix(analysis.predictions(job)) for job in analyzed["job"])
        summed = f"seeds {seeds} summed" if len(analyzed) > 1 else f"seed {seeds}"
        matrices[f"{conclusions.configuration_name(configuration)}\n{summed}"] = total
    yield "confusion_matrices", figures.confusion_matrices(matrices)
    best_run = analysis.run_of(analysis.best)
    if best_run["job"] not in analysis.reliability:
        return  # its predictions are gone (see the notes)
    data_root = analysis.data_root(best_run)
    if data_root:
        try:
            source = _source_settings(best_run)
            image_dir = source_image_dir(data_root, source["source"], source["class_names"])
            worst = figures.worst_images(
                analysis.predictions(best_run["job"]),
                image_dir,
                analysis.settings.worst_images,
                f"most confidently wrong: {best_run['job']}",
            )
        except DataError as error:
            analysis.notes.append(f"no worst-images grid ({error})")
        else:
            yield "worst_images", worst
    yield "learning_curves", figures.learning_curves(pd.concat([runs for _, runs in shown]))
    # One line per run (the report's reliability.csv has every run's points).
    yield "reliability", figures.reliability_diagram(analysis.reliability)
    heat_maps = heat_map_figure(analysis)
    if heat_maps is not None:
        yield "heat_maps", heat_maps


def heat_map_figure(analysis: SweepAnalysis) -> Figure | None:
    """The mean heat maps of every configuration (rows, validation-best first; only the first
    ``heat_maps.max_configurations`` when set) by gender and right or wrong, or None with the
    reason in the notes. A configuration that cannot be explained (checkpoint gone, images
    unreadable) loses its row, and the notes say why (the next one takes its place)."""
    settings = analysis.settings.get("heat_maps") or {}
    if not settings.get("enabled", True):
        analysis.notes.append("no heat-map grid: heat_maps.enabled=false")
        return None
    if not explain_available():
        analysis.notes.append(
            "no heat-map grid: it needs captum (pip install -e '.[explain]'); the rest of the "
            "report does not"
        )
        return None
    limit = settings.get("max_configurations")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"heat_maps.max_configurations={limit!r}: a whole number from 1, or null")
    ranked = conclusions.ranked(analysis.configurations)
    rows = {}
    for rank, configuration in ranked.iterrows():
        if limit is not None and len(rows) == limit:
            break
        run = analysis.run_of(configuration)
        if run["job"] not in analysis.reliability:
            continue  # its predictions are gone (see the notes)
        try:
            data_root = analysis.data_root(run)
            if not data_root:
                raise DataError("no data_root recorded; pass --data-root")
            source = _source_settings(run)
            cells = heat_maps.mean_maps(
                heat_maps.evaluated_checkpoint(run["run_dir"]),
                source_image_dir(data_root, source["source"], source["class_names"]),
                analysis.predictions(run["job"]),
                settings.get("images_per_cell", 16),
                settings.get("seed", 0),
                settings.get("device", "cpu"),
            )
        except DataError as error:  # CheckpointError, ExplainUnavailable (ONNX), a bad copy
            analysis.notes.append(f"{run['job']}: no heat maps ({error})")
            continue
        name = conclusions.configuration_name(configuration)
        rows[f"{rank + 1}. {name}\n{run['job']}"] = cells
    if not rows:
        analysis.notes.append("no heat-map grid: no configuration could be explained (above)")
        return None
    shown = (
        f"; the first {len(rows)} of {len(ranked)} by validation"
        if limit and len(rows) < len(ranked)
        else ""
    )
    return figures.heat_map_grid(
        rows,
        f"mean Grad-CAM toward the predicted class (lowest-seed run of each configuration{shown})",
    )


def confusion_matrix(predictions: pd.DataFrame) -> np.ndarray:
    """[[true female->female, ->male], [true male->female, ->male]] at threshold 0.5."""
    predicted = (predictions["p_male"] > 0.5).astype(int)  # the metrics' rule
    table = pd.crosstab(predictions["label"], predicted).reindex(index=[0, 1], columns=[0, 1])
    return table.fillna(0).astype(int).to_numpy()


# ----------------------------------------------------------------------------- writing
def markdown_report(analysis: SweepAnalysis, figure_files: list[str]) -> str:
    runs = analysis.runs
    scope = analysis.scope or sweep_scope(
        runs, analysis.settings.finding.max_interval_width, analysis.settings.bootstrap.confidence
    )
    boot = analysis.settings.bootstrap
    level = f"{100 * boot.confidence:g}"
    units = set(runs.get("resampled", pd.Series(dtype=object)).dropna())
    resampled = (
        "test celebrities (cluster bootstrap: every image of a drawn celebrity), as the data's "
        "identity file names every test image's celebrity"
        if units == {IDENTITIES}
        else "test images (no identity file names every test image's celebrity)"
        if units and IDENTITIES not in units
        else "test celebrities where the identity file names them all, else images: see `resampled`"
    )
    sections = [f"# Sweep report: {analysis.sweep_dir.name}"]
    if scope.banner:
        sections.append(f"> {scope.banner}")
    sections += [
        "## What this rests on",
        f"Sweep folder: {', '.join(f'`{d}`' for d in analysis.sweep_dirs)}.",
        "\n".join(scope.header),
    ]
    if not scope.not_finished.empty:
        sections += ["### Jobs that did not finish", tables.markdown(scope.not_finished)]
    sections += [
        "## Conclusions",
        *(f"- {line}" for line in analysis.conclusions),
        "## How configurations are chosen and tested",
        "Configurations are ranked by validation accuracy (`val_acc`: the evaluated checkpoint "
        "on the validation images its `val_predictions.csv` holds, counted in the runs table; "
        "mean over seeds) and reported with their test metrics; the test set never chooses. "
        "The validation-best configuration is compared with every other on the same test "
        "images, seed by seed (paired.csv); the p-values of that family are Holm-adjusted, as "
        "are the Wilcoxon tests of the treatment questions. A best is named only where those "
        "tests separate it; otherwise the conclusions name the group that cannot be separated. "
        f"Bootstraps resample {resampled}, and where they resample celebrities McNemar's test "
        "is the clustered one (Durkalski). Parameters are those used at inference (GoogLeNet's "
        "and Inception-v3's training-only auxiliary heads excluded).",
        "## Configurations, best validation first",
        f"Percent. One seed: test accuracy with its {level}% interval; several: mean ± standard "
        "deviation over seeds. `theirs`: the reference study's accuracy on a random image split "
        "that shares celebrities between train and test, not comparable with an "
        "identity-disjoint split. Every column: configurations.csv.",
        tables.markdown(tables.configuration_table(analysis.configurations)),
        "## Runs (every job, failed and missing ones included)",
        "Percent; reasons for jobs that did not finish are above. Every column: runs.csv.",
        tables.markdown(tables.run_table(analysis.runs)),
        f"## {level}% bootstrap intervals per run (percentile, {boot.resamples} resamples of "
        f"{resampled})",
        tables.markdown(tables.interval_table(analysis.ok_runs)),
        f"## The validation-best configuration against each other ({level}% intervals of the "
        "accuracy difference; Holm-adjusted p-values)",
        tables.markdown(tables.paired_table(analysis.paired)),
        "## Calibration and threshold",
        "ECE of P(male); test accuracy and F1 (percent) at 0.5 and at the threshold that "
        "maximises validation F1.",
        tables.markdown(tables.calibration_table(analysis.ok_runs)),
        "## Fairness: worst subgroup and largest gap per run",
        f"Cells under {analysis.settings.fairness.min_group_size} images are flagged `small` in "
        "fairness.csv; `worst_group` ignores them, `worst_group_all` does not.",
        tables.markdown(tables.fairness_table(analysis.fairness_runs)),
    ]
    if analysis.best is not None and not analysis.fairness.empty:
        best_job = analysis.run_of(analysis.best)["job"]
        cells = analysis.fairness[analysis.fairness["job"] == best_job].drop(columns="job")
        sections += [
            f"### Subgroups of the best configuration ({best_job})",
            tables.markdown(tables.subgroup_cells_table(cells)) if not cells.empty else "(none)",
        ]
    sections += ["## Figures"]
    for figure_file in figure_files:
        sections.append(f"![{Path(figure_file).stem}]({figure_file})")
        if Path(figure_file).stem in FIGURE_CAPTIONS:
            sections.append(FIGURE_CAPTIONS[Path(figure_file).stem])
    if analysis.notes:
        sections += ["## Notes", *(f"- {note}" for note in analysis.notes)]
    return "\n\n".join(sections) + "\n"


def write_report(analysis: SweepAnalysis, report_dir: str | Path | None = None) -> Path:
    """Write runs.csv, configurations.csv, paired.csv, fairness.csv, fairness_summary.csv,
    reliability.csv, conclusions.md, analysis.yaml (the settings used, and the sweep folders),
    report.md and figures/ (PNG; the same figures as TensorBoard images under tensorboard/)
    into ``report_dir``."""
    report_dir = Path(report_dir or analysis.sweep_dir / "report")
    figure_dir = report_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    safe_frame(analysis.runs).to_csv(report_dir / "runs.csv", index=False)
    safe_frame(analysis.configurations).to_csv(report_dir / "configurations.csv", index=False)
    safe_frame(analysis.fairness).to_csv(report_dir / "fairness.csv", index=False)
    safe_frame(analysis.paired).to_csv(report_dir / "paired.csv", index=False)
    safe_frame(analysis.fairness_runs).to_csv(report_dir / "fairness_summary.csv", index=False)
    (report_dir / CONCLUSIONS_FILE).write_text(
        "\n".join(f"- {line}" for line in analysis.conclusions)
        + (
            "\n\n## Notes\n\n" + "\n".join(f"- {n}" for n in analysis.notes)
            if analysis.notes
            else ""
        )
        + "\n"
    )
    settings = OmegaConf.merge(
        analysis.settings, {"sweep_dirs": [str(d) for d in analysis.sweep_dirs]}
    )
    OmegaConf.save(settings, report_dir / SETTINGS_FILE, resolve=True)
    reliability = [table.assign(job=job) for job, table in analysis.reliability.items()]
    if reliability:
        pd.concat(reliability).to_csv(report_dir / "reliability.csv", index=False)
    reference_results().to_csv(report_dir / "reference_study.csv", index=False)
    figure_files = []
    with SummaryWriter(str(report_dir / "tensorboard")) as writer:
        for name, figure in report_figures(analysis).items():
            path = figure_dir / f"{name}.png"
            figure.savefig(path, dpi=120)
            figure_files.append(str(path.relative_to(report_dir)))
            writer.add_figure(f"report/{name}", figure, close=False)
    (report_dir / "report.md").write_text(markdown_report(analysis, figure_files))
    log.info("report written to %s", report_dir)
    return report_dir


def execute_notebook(report_dir: Path, settings: DictConfig) -> Path:
    """Run notebooks/analysis.ipynb on a report folder that ``write_report`` wrote, with
    papermill; the executed copy goes into that folder. The notebook reads the folder's
    tables, so it shows exactly the report's numbers, whatever the settings."""
    try:
        with quiet_imports(__name__):  # seconds
            import papermill
    except ImportError:
        raise DataError(
            "Executing the notebook needs papermill and ipykernel: pip install "
            "'celeba-gender[notebook]' (a clone: pip install -e '.[dev]'), or pass --no-notebook."
        ) from None
    output = Path(report_dir) / "analysis.ipynb"
    papermill.execute_notebook(
        str(settings.notebook),
        str(output),
        parameters={"report_dir": str(Path(report_dir).resolve())},
        kernel_name="python3",
        cwd=str(Path(settings.notebook).parent),
        progress_bar=progress_enabled(),  # papermill's own bar (tqdm) over the cells
    )
    return output
