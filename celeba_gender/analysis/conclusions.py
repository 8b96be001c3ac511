"""The study's questions, answered from a sweep's configuration table, with the evidence.

Every function takes the per-configuration table of ``statistics.seed_summary`` (mean test
metrics over seeds) and returns sentences in Markdown; the numbers in them come from that
table, so a reader can check each one against the tables of the report.
"""

from __future__ import annotations

import pandas as pd
from scipy import stats

from celeba_gender.analysis.statistics import PairedComparison, wilcoxon_paired


def ranked(configurations: pd.DataFrame) -> pd.DataFrame:
    """Configurations with at least one successful run, best mean test accuracy first (F1
    breaks ties)."""
    if "acc_mean" not in configurations:
        return configurations.iloc[0:0]
    usable = configurations[configurations["ok"] > 0]
    return usable.sort_values(["acc_mean", "f1_mean"], ascending=False).reset_index(drop=True)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _points(value: float) -> str:
    return f"{100 * value:+.2f} points"


def _spread(row: pd.Series) -> str:
    std = row.get("acc_std")
    seeds = int(row["ok"])
    return f"± {100 * std:.2f} over {seeds} seeds" if seeds > 1 and pd.notna(std) else "1 seed"


def best_choices(configurations: pd.DataFrame) -> list[str]:
    """Best configuration, backbone, family and treatment."""
    table = ranked(configurations)
    if table.empty:
        return ["No run finished: nothing to conclude."]
    best = table.iloc[0]
    lines = [
        f"**Best configuration: {best['model']} with {best['treatment']}**, test accuracy "
        f"{_pct(best['acc_mean'])} ({_spread(best)}), F1 {best['f1_mean']:.4f}."
    ]
    by_model = table.groupby("model")["acc_mean"].max().sort_values(ascending=False)
    lines.append(
        f"**Best backbone: {by_model.index[0]}** (its best treatment: {_pct(by_model.iloc[0])}"
        + (
            f"; runner-up {by_model.index[1]} at {_pct(by_model.iloc[1])})."
            if len(by_model) > 1
            else ")."
        )
    )
    by_family = table.groupby("family")["acc_mean"].agg(["mean", "max", "size"])
    by_family = by_family.sort_values("mean", ascending=False)
    family_text = "; ".join(
        f"{name} {_pct(row['mean'])} mean over {int(row['size'])} configurations "
        f"(best {_pct(row['max'])})"
        for name, row in by_family.iterrows()
    )
    lines.append(f"**Best family: {by_family.index[0]}** — {family_text}.")
    treatments = _paired_by_model(table, "treatment")
    if treatments is not None and not treatments.empty:
        means = treatments.mean().sort_values(ascending=False)
        lines.append(
            f"**Best treatment: {means.index[0]}** — mean accuracy over the "
            f"{len(treatments)} backbones that ran every treatment: "
            + ", ".join(f"{name} {_pct(value)}" for name, value in means.items())
            + "."
        )
    else:
        means = table.groupby("treatment")["acc_mean"].mean().sort_values(ascending=False)
        lines.append(
            f"**Best treatment: {means.index[0]}** (no backbone ran every treatment, so this "
            "compares different sets of backbones): "
            + ", ".join(f"{name} {_pct(value)}" for name, value in means.items())
            + "."
        )
    return lines


def _paired_by_model(table: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """Mean accuracy per model x ``column`` value, models with every value only."""
    if table.empty:
        return None
    wide = table.pivot_table(index="model", columns=column, values="acc_mean")
    return wide.dropna()


def treatment_effect(
    configurations: pd.DataFrame, better: str, worse: str, question: str, level: float
) -> str:
    """Per backbone, accuracy under ``better`` minus under ``worse``, summarised."""
    table = ranked(configurations)
    wide = table.pivot_table(index="model", columns="treatment", values="acc_mean")
    if better not in wide or worse not in wide:
        return f"{question} Not answerable: the sweep lacks {better} or {worse} runs."
    differences = (wide[better] - wide[worse]).dropna()
    if differences.empty:
        return f"{question} Not answerable: no backbone finished both {better} and {worse}."
    p_value = wilcoxon_paired(differences)
    improved = int((differences > 0).sum())
    test = (
        f"Wilcoxon signed-rank p = {p_value:.3g} over {len(differences)} backbones"
        + (" (significant)" if p_value < level else " (not significant)")
        if p_value is not None
        else f"too few backbones ({len(differences)}) for a paired test"
    )
    per_model = ", ".join(f"{m} {_points(d)}" for m, d in differences.items())
    return (
        f"{question} {better} minus {worse}: mean {_points(differences.mean())}, from "
        f"{_points(differences.min())} to {_points(differences.max())}; {better} is better for "
        f"{improved} of {len(differences)} backbones; {test}. Per backbone: {per_model}."
    )


def depth_trend(configurations: pd.DataFrame) -> str:
    """Spearman correlation of depth and accuracy within each family and treatment."""
    table = ranked(configurations)
    parts = []
    for (family, treatment), group in table.groupby(["family", "treatment"]):
        if group["depth"].nunique() < 3:
            continue
        rho = stats.spearmanr(group["depth"].astype(float), group["acc_mean"]).statistic
        trend = "deeper is better" if rho > 0.5 else "deeper is worse" if rho < -0.5 else "no trend"
        order = ", ".join(
            f"{row['model']} {_pct(row['acc_mean'])}"
            for _, row in group.sort_values("depth").iterrows()
        )
        parts.append(f"{family} / {treatment}: Spearman ρ = {rho:+.2f}, {trend} ({order})")
    if not parts:
        return "Depth versus accuracy: no family has three depths that finished in this sweep."
    return "Depth versus accuracy within a family: " + "; ".join(parts) + "."


def cost_tradeoff(configurations: pd.DataFrame, tolerance: float) -> str:
    """The cheapest configurations within ``tolerance`` of the best accuracy, by each cost."""
    table = ranked(configurations)
    if table.empty:
        return ""
    best = table.iloc[0]
    near = table[table["acc_mean"] >= best["acc_mean"] - tolerance]
    parts = []
    for column, label, fmt in (
        ("params_mean", "fewest parameters", lambda v: f"{v / 1e6:.1f} M"),
        ("train_seconds_mean", "shortest training", lambda v: f"{v:.0f} s"),
    ):
        if column in near and near[column].notna().any():
            row = near.loc[near[column].idxmin()]
            parts.append(
                f"{label}: {row['model']} / {row['treatment']} ({fmt(row[column])}, "
                f"{_pct(row['acc_mean'])})"
            )
    if "test_images_per_second_mean" in near and near["test_images_per_second_mean"].notna().any():
        row = near.loc[near["test_images_per_second_mean"].idxmax()]
        parts.append(
            f"fastest inference: {row['model']} / {row['treatment']} "
            f"({1000 / row['test_images_per_second_mean']:.2f} ms per test image, "
            f"{_pct(row['acc_mean'])})"
        )
    return (
        f"Accuracy versus cost, among the {len(near)} configurations within "
        f"{100 * tolerance:.1f} points of the best: " + "; ".join(parts) + "."
    )


def paired_verdict(
    first: pd.Series, second: pd.Series, comparisons: dict[int, PairedComparison], level: float
) -> str:
    """The best two configurations compared on the same test images, seed by seed."""
    if not comparisons:
        return (
            f"The best two configurations ({first['model']}/{first['treatment']} and "
            f"{second['model']}/{second['treatment']}) share no successful seed: no paired test."
        )
    significant = sum(c.significant(level) for c in comparisons.values())
    details = "; ".join(
        f"seed {seed}: difference {_points(c.accuracy_difference)} "
        f"[{_points(c.difference_interval[0])}, {_points(c.difference_interval[1])}], "
        f"{c.a_only_correct} vs {c.b_only_correct} images only one got right, "
        f"McNemar p = {c.p_value:.3g}"
        for seed, c in comparisons.items()
    )
    verdict = (
        "significant"
        if significant == len(comparisons)
        else "not significant"
        if significant == 0
        else "significant for some seeds only"
    )
    return (
        f"Is {first['model']}/{first['treatment']} really better than "
        f"{second['model']}/{second['treatment']}? The difference is **{verdict}** at "
        f"{level:g} ({significant} of {len(comparisons)} seeds): {details}."
    )
