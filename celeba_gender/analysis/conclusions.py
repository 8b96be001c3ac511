"""The study's questions, answered from a sweep's configuration table, with the evidence.

Every function takes the per-configuration table of ``statistics.seed_summary`` (means over
seeds) and returns sentences in Markdown; the numbers in them come from that table, so a reader
can check each one against the tables of the report. Configurations are chosen (ranked) by
validation accuracy and reported with their test metrics: the test set measures, it never
chooses.
"""

from __future__ import annotations

import pandas as pd
from scipy import stats

from celeba_gender.analysis.statistics import IDENTITIES, holm, wilcoxon_paired


def ranked(configurations: pd.DataFrame) -> pd.DataFrame:
    """Configurations with at least one successful run, best mean validation accuracy first.

    Ties on validation accuracy are broken the same way wherever a winner is named: fewer
    inference parameters first (the simpler model), then the configuration's name. The test
    results never choose.
    """
    if "acc_mean" not in configurations:
        return configurations.iloc[0:0]
    usable = configurations[configurations["ok"] > 0]
    if "val_acc_mean" not in usable:
        usable = usable.assign(val_acc_mean=float("nan"))
    order = usable.assign(
        _params=usable["params_mean"] if "params_mean" in usable else float("nan"),
        _name=usable.apply(configuration_name, axis=1) if len(usable) else "",
    )
    order = order.sort_values(
        ["val_acc_mean", "_params", "_name"],
        ascending=[False, True, True],
        kind="stable",
        na_position="last",
    )
    return order.drop(columns=["_params", "_name"]).reset_index(drop=True)


def _ranked_groups(table: pd.DataFrame, column: str, values: list[str]) -> pd.DataFrame:
    """Mean of ``values`` per ``column`` value, best mean validation accuracy first; a tie goes
    to the group whose best member ranks first in ``table`` (already ``ranked``), so a family or
    treatment named best agrees with the configuration named best."""
    grouped = table.groupby(column, sort=False)
    means = (
        grouped[values]
        .mean()
        .assign(size=grouped.size(), _first=grouped.apply(lambda group: group.index.min()))
    )
    means = means.sort_values(["val_acc_mean", "_first"], ascending=[False, True], kind="stable")
    return means.drop(columns="_first")


def _tied_with(table: pd.DataFrame) -> str:
    """' (tied on validation accuracy with A, B; ...)' when others equal the first's."""
    best = table.iloc[0]["val_acc_mean"]
    tied = table.iloc[1:][table.iloc[1:]["val_acc_mean"] == best]
    if tied.empty:
        return ""
    names = ", ".join(configuration_name(row) for _, row in tied.iterrows())
    return (
        f" (tied on validation accuracy with {names}; a tie goes to fewer inference "
        "parameters, then the name)"
    )


def chosen(configurations: pd.DataFrame) -> pd.DataFrame:
    """One configuration per model x treatment (where several experiments ran it, the one with
    the best validation accuracy), best first."""
    return ranked(configurations).drop_duplicates(["model", "treatment"]).reset_index(drop=True)


def configuration_name(row: pd.Series) -> str:
    experiment = row.get("experiment")
    return f"{row['model']}/{row['treatment']}" + (
        f" [{experiment}]" if isinstance(experiment, str) and experiment else ""
    )


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _points(value: float) -> str:
    return f"{100 * value:+.2f} points"


def _spread(row: pd.Series) -> str:
    std = row.get("acc_std")
    seeds = int(row["ok"])
    return f"± {100 * std:.2f} over {seeds} seeds" if seeds > 1 and pd.notna(std) else "1 seed"


def _val_and_test(val: float, test: float) -> str:
    return f"validation {_pct(val)}, test {_pct(test)}"


def best_choices(configurations: pd.DataFrame) -> list[str]:
    """Best configuration, backbone, family and treatment, each chosen by validation accuracy
    and reported with its test accuracy."""
    table = chosen(configurations)
    if table.empty:
        return ["No run finished: nothing to conclude."]
    best = table.iloc[0]
    lines = [
        f"**Best configuration (chosen by validation accuracy): {configuration_name(best)}**, "
        f"validation accuracy {_pct(best['val_acc_mean'])}{_tied_with(table)}; test accuracy "
        f"{_pct(best['acc_mean'])} ({_spread(best)}), F1 {best['f1_mean']:.4f}."
    ]
    by_model = table.drop_duplicates("model")  # each backbone's validation-best treatment
    first = by_model.iloc[0]
    lines.append(
        f"**Best backbone: {first['model']}** (with {first['treatment']}: "
        f"{_val_and_test(first['val_acc_mean'], first['acc_mean'])}"
        + (
            f"; runner-up {by_model.iloc[1]['model']} with {by_model.iloc[1]['treatment']}: "
            f"{_val_and_test(by_model.iloc[1]['val_acc_mean'], by_model.iloc[1]['acc_mean'])})."
            if len(by_model) > 1
            else ")."
        )
    )
    by_family = _ranked_groups(
        table.rename(columns={"acc_mean": "test"}), "family", ["val_acc_mean", "test"]
    ).rename(columns={"val_acc_mean": "val"})
    family_text = "; ".join(
        f"{name} {_val_and_test(row['val'], row['test'])} (mean over {int(row['size'])} "
        "configurations)"
        for name, row in by_family.iterrows()
    )
    lines.append(f"**Best family: {by_family.index[0]}** — {family_text}.")
    complete = _by_model(table, "treatment")  # backbones that ran every treatment
    if complete is not None and not complete.empty:
        rows, scope = (
            table[table["model"].isin(complete.index)],
            (f"over the {len(complete)} backbones that ran every treatment"),
        )
    else:
        rows, scope = table, "(no backbone ran every treatment: different sets of backbones)"
    means = _ranked_groups(rows, "treatment", ["val_acc_mean", "acc_mean"])
    lines.append(
        f"**Best treatment: {means.index[0]}** — mean accuracy {scope}: "
        + "; ".join(
            f"{name} {_val_and_test(row['val_acc_mean'], row['acc_mean'])}"
            for name, row in means.iterrows()
        )
        + "."
    )
    return lines


def _by_model(table: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """Mean test accuracy per model x ``column`` value, models with every value only."""
    if table.empty:
        return None
    wide = table.pivot_table(index="model", columns=column, values="acc_mean")
    return wide.dropna()


def treatment_effects(
    configurations: pd.DataFrame, questions: list[tuple[str, str, str]], level: float
) -> list[str]:
    """For each (better, worse, question): per backbone, test accuracy under ``better`` minus
    under ``worse`` (each the backbone's validation-chosen configuration of that treatment),
    summarised with a Wilcoxon signed-rank test over backbones, Holm-adjusted over the
    questions that have one."""
    wide = chosen(configurations).pivot(index="model", columns="treatment", values="acc_mean")
    answers: list[str | pd.Series] = []
    for better, worse, question in questions:
        if better not in wide or worse not in wide:
            answers.append(f"{question} Not answerable: the sweep lacks {better} or {worse} runs.")
        elif (wide[better] - wide[worse]).dropna().empty:
            answers.append(
                f"{question} Not answerable: no backbone finished both {better} and {worse}."
            )
        else:
            answers.append((wide[better] - wide[worse]).dropna())
    p_values = {
        i: p
        for i, a in enumerate(answers)
        if isinstance(a, pd.Series) and (p := wilcoxon_paired(a)) is not None
    }
    adjusted = dict(zip(p_values, holm(list(p_values.values())), strict=True))
    lines = []
    for i, ((better, worse, question), answer) in enumerate(zip(questions, answers, strict=True)):
        if isinstance(answer, str):
            lines.append(answer)
            continue
        test = (
            f"Wilcoxon signed-rank over {len(answer)} backbones (the backbone is the unit; no "
            f"resampling): p = {p_values[i]:.3g}, Holm-adjusted over {len(p_values)} treatment "
            f"question{'s' if len(p_values) > 1 else ''} p = {adjusted[i]:.3g}"
            + (" (significant)" if adjusted[i] < level else " (not significant)")
            if i in p_values
            else f"too few backbones ({len(answer)}) for a paired test"
        )
        per_model = ", ".join(f"{m} {_points(d)}" for m, d in answer.items())
        lines.append(
            f"{question} Test accuracy, {better} minus {worse}: mean {_points(answer.mean())}, "
            f"from {_points(answer.min())} to {_points(answer.max())}; {better} is better for "
            f"{int((answer > 0).sum())} of {len(answer)} backbones; {test}. "
            f"Per backbone: {per_model}."
        )
    return lines


def depth_trend(configurations: pd.DataFrame) -> str:
    """Spearman correlation of depth and test accuracy within each family and treatment."""
    table = chosen(configurations)
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
    return "Depth versus test accuracy within a family: " + "; ".join(parts) + "."


def cost_tradeoff(configurations: pd.DataFrame, tolerance: float) -> str:
    """The cheapest configurations within ``tolerance`` of the best validation accuracy, by
    each cost (parameters: those used at inference)."""
    table = ranked(configurations)
    if table.empty:
        return ""
    near = table[table["val_acc_mean"] >= table.iloc[0]["val_acc_mean"] - tolerance]
    parts = []
    for column, label, fmt in (
        ("params_mean", "fewest inference parameters", lambda v: f"{v / 1e6:.1f} M"),
        ("train_seconds_mean", "shortest training", lambda v: f"{v:.0f} s"),
    ):
        if column in near and near[column].notna().any():
            row = near.loc[near[column].idxmin()]
            parts.append(
                f"{label}: {configuration_name(row)} ({fmt(row[column])}, test "
                f"{_pct(row['acc_mean'])})"
            )
    if "test_images_per_second_mean" in near and near["test_images_per_second_mean"].notna().any():
        row = near.loc[near["test_images_per_second_mean"].idxmax()]
        parts.append(
            f"fastest inference: {configuration_name(row)} "
            f"({1000 / row['test_images_per_second_mean']:.2f} ms per test image, test "
            f"{_pct(row['acc_mean'])})"
        )
    return (
        f"Accuracy versus cost, among the {len(near)} configurations within "
        f"{100 * tolerance:.1f} points of the best validation accuracy: " + "; ".join(parts) + "."
    )


def paired_verdict(first: pd.Series, second: pd.Series, paired: pd.DataFrame, level: float) -> str:
    """The validation-best configuration against the runner-up on the same test images, seed
    by seed, with how many of all the other configurations it beats; p-values Holm-adjusted
    over every comparison of the best with another configuration (``paired``)."""
    a, b = configuration_name(first), configuration_name(second)
    runner_up = paired[paired["b"] == b] if not paired.empty else paired
    if runner_up.empty:
        return (
            f"The best two configurations ({a} and {b}) share no successful seed: no paired test."
        )
    details = "; ".join(
        f"seed {row['seed']}: difference {_points(row['accuracy_difference'])} "
        f"[{_points(row['difference_low'])}, {_points(row['difference_high'])}], "
        f"{row['a_only_correct']} vs {row['b_only_correct']} images only one got right, "
        f"p = {row['p_value']:.3g}, Holm-adjusted p = {row['p_holm']:.3g}"
        for _, row in runner_up.iterrows()
    )
    significant = int(runner_up["significant"].sum())
    verdict = (
        "significant"
        if significant == len(runner_up)
        else "not significant"
        if significant == 0
        else "significant for some seeds only"
    )
    ahead = paired.assign(won=paired["significant"] & (paired["accuracy_difference"] > 0))
    beaten = int(ahead.groupby("b")["won"].all().sum())
    clustered = (paired["resampled"] == IDENTITIES).all()
    method = (
        "McNemar's test clustered by celebrity (Durkalski) and a cluster bootstrap of "
        "celebrities for the intervals"
        if clustered
        else "McNemar's test and a bootstrap of "
        + ("images" if (paired["resampled"] != IDENTITIES).all() else "identities or images")
        + " (see paired.csv: identities are not known for every test set)"
    )
    return (
        f"Is {a} (best by validation) really better than {b} (second by validation) on the "
        f"test set? The difference is **{verdict}** at {level:g} after Holm's correction over "
        f"all {len(paired)} tests of {a} against the {paired['b'].nunique()} other "
        f"configurations, seed by seed ({significant} of {len(runner_up)} seeds): {details}. "
        f"{a} is significantly better than {beaten} of the {paired['b'].nunique()} others on "
        f"every shared seed. Method: {method}."
    )
