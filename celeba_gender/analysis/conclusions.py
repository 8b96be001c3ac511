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

from celeba_gender.analysis.collect import final_fits
from celeba_gender.analysis.statistics import IDENTITIES, holm, metric_seeds, wilcoxon_paired


def ranked(configurations: pd.DataFrame, with_final_fits: bool = False) -> pd.DataFrame:
    """Configurations with at least one successful run, best mean validation accuracy first.

    Ties on validation accuracy are broken the same way wherever a winner is named: fewer
    inference parameters first (the simpler model), then the configuration's name. The test
    results never choose. Final fits (no validation to rank by) are left out, or listed last
    ``with_final_fits``.
    """
    if "acc_mean" not in configurations:
        return configurations.iloc[0:0]
    usable = configurations[configurations["ok"] > 0]
    final = final_fits(usable)
    if not with_final_fits:
        usable, final = usable[~final], final[~final]
    if "val_acc_mean" not in usable:
        usable = usable.assign(val_acc_mean=float("nan"))
    order = usable.assign(
        _final=final,
        _params=usable["params_mean"] if "params_mean" in usable else float("nan"),
        _name=usable.apply(configuration_name, axis=1) if len(usable) else "",
    )
    order = order.sort_values(
        ["_final", "val_acc_mean", "_params", "_name"],
        ascending=[True, False, True, True],
        kind="stable",
        na_position="last",
    )
    return order.drop(columns=["_final", "_params", "_name"]).reset_index(drop=True)


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


# Sentences give accuracies to 0.1 point: the narrowest interval a CelebA test part gives (the
# full 19,962-image one: about +-0.4 points) does not support a second decimal.
def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _points(value: float) -> str:
    return f"{100 * value:+.1f} points"


def _spread(row: pd.Series) -> str:
    std = row.get("acc_std")
    seeds = metric_seeds(row, "acc")
    text = f"± {100 * std:.2f} over {seeds} seeds" if seeds > 1 and pd.notna(std) else "1 seed"
    if seeds < int(row["ok"]):
        text += f"; {int(row['ok']) - seeds} finished seed(s) without a test accuracy, left out"
    return text


def _val_and_test(val: float, test: float) -> str:
    return f"validation {_pct(val)}, test {_pct(test)}"


def _interval(row: pd.Series) -> str:
    """' (95% interval 88.6-93.8%, seed 0)' from the configuration's lowest-seed run."""
    low, high = row.get("acc_ci_low"), row.get("acc_ci_high")
    if pd.isna(low) or pd.isna(high):
        return ""
    level = row.get("ci_level")
    level = f"{100 * level:g}% " if pd.notna(level) else ""
    seed = row.get("ci_seed")
    seed = f", seed {int(seed)}" if pd.notna(seed) else ""
    return f" ({level}interval {100 * low:.1f}-{100 * high:.1f}%{seed})"


def best_group(table: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """The configurations the test set cannot separate from the validation-best one (first in
    ``table``, already ``ranked``): the best itself and every other that it does not beat
    significantly (after Holm's correction, ``paired``'s ``significant``) on every shared seed.
    One with no shared seed was never tested against it, so it is not separated either."""
    names = [configuration_name(row) for _, row in table.iterrows()]
    group = names[:1]
    for name in names[1:]:
        tests = paired[paired["b"] == name] if not paired.empty else paired
        beaten = not tests.empty and bool(
            (tests["significant"].astype(bool) & (tests["accuracy_difference"] > 0)).all()
        )
        if not beaten:
            group.append(name)
    return group


def _group_members(table: pd.DataFrame, group: list[str], column: str) -> list[str]:
    """The distinct ``column`` values (backbones, families) of the group, best first."""
    members = table[table.apply(configuration_name, axis=1).isin(group)]
    return list(dict.fromkeys(members[column]))


def best_choices(
    configurations: pd.DataFrame,
    paired: pd.DataFrame | None = None,
    level: float = 0.05,
    runs: pd.DataFrame | None = None,
) -> list[str]:
    """Best configuration, backbone, family and treatment, each chosen by validation accuracy
    and reported with its test accuracy and interval. A best is named only where the test set
    separates it (``paired``: the validation-best against each other, Holm-corrected; the
    treatments: Wilcoxon over backbones); otherwise the sentence says so and names the group
    that cannot be separated. ``runs`` (every job) lets a sentence say which treatments it
    does not cover, and why."""
    table = chosen(configurations)
    if table.empty:
        return ["No run finished: nothing to conclude."]
    paired = paired if paired is not None else pd.DataFrame()
    best = table.iloc[0]
    name = configuration_name(best)
    not_covered = _not_covered(runs, table) if runs is not None else ""
    scope = f"over the {len(table)} configurations that finished" + (
        f"; {not_covered}" if not_covered else ""
    )
    group = best_group(table, paired) if len(table) > 1 else [name]
    first = (
        f"{name}, validation accuracy {_pct(best['val_acc_mean'])}{_tied_with(table)}; test "
        f"accuracy {_pct(best['acc_mean'])}{_interval(best)} ({_spread(best)}), F1 "
        f"{best['f1_mean']:.3f}"
    )
    if len(table) == 1:
        lines = [f"**Only one configuration finished: {first}**; nothing to compare it with."]
    elif len(group) == 1:
        lines = [
            f"**Best configuration (chosen by validation accuracy, {scope}): {first}**. The test "
            f"set separates it from every other (Holm-corrected paired tests at {level:g})."
        ]
    else:
        others = "; ".join(
            f"{configuration_name(row)} (test {_pct(row['acc_mean'])}{_interval(row)})"
            for _, row in table.iterrows()
            if configuration_name(row) in group[1:]
        )
        lines = [
            f"**No single best configuration** ({scope}): {first} is first by validation "
            f"accuracy, but after Holm's correction at {level:g} the test set does not separate "
            f"it from {len(group) - 1} other{'s' if len(group) > 2 else ''}: {others}. These "
            f"{len(group)} configurations are the best group; naming one of them would claim more "
            "than the data shows."
        ]
    by_model = table.drop_duplicates("model")  # each backbone's validation-best treatment
    top = by_model.iloc[0]
    backbones = _group_members(table, group, "model")
    runner_up = (
        f"; runner-up {by_model.iloc[1]['model']} with {by_model.iloc[1]['treatment']}: "
        f"{_val_and_test(by_model.iloc[1]['val_acc_mean'], by_model.iloc[1]['acc_mean'])}"
        if len(by_model) > 1
        else ""
    )
    if len(backbones) <= 1 and len(by_model) > 1:
        lines.append(
            f"**Best backbone: {top['model']}** (with {top['treatment']}: "
            f"{_val_and_test(top['val_acc_mean'], top['acc_mean'])}{runner_up})."
        )
    elif len(by_model) > 1:
        lines.append(
            f"**Best backbone: not separable** — the best group holds {len(backbones)} backbones "
            f"({', '.join(backbones)}); first by validation {top['model']} with "
            f"{top['treatment']}: {_val_and_test(top['val_acc_mean'], top['acc_mean'])}"
            f"{runner_up}."
        )
    by_family = _ranked_groups(
        table.rename(columns={"acc_mean": "test"}), "family", ["val_acc_mean", "test"]
    ).rename(columns={"val_acc_mean": "val"})
    family_text = "; ".join(
        f"{family} {_val_and_test(row['val'], row['test'])} (mean over {int(row['size'])} "
        "configurations)"
        for family, row in by_family.iterrows()
    )
    families = _group_members(table, group, "family")
    if len(by_family) > 1:
        verdict = (
            f"**Best family: {by_family.index[0]}**"
            if len(families) <= 1
            else f"**Best family: not separable** (the best group spans {', '.join(families)})"
        )
        lines.append(f"{verdict} — {family_text}.")
    lines.append(_best_treatment(table, runs, level))
    return lines


def _not_covered(runs: pd.DataFrame, table: pd.DataFrame) -> str:
    """'pretrained_bce: no finished run (2 failed)' for each configuration of the runs that is
    not in ``table``, grouped by treatment."""
    finished = set(zip(table["model"], table["treatment"], strict=True))
    missing: dict[str, list[tuple[object, pd.Series]]] = {}
    for (model, treatment), jobs in runs.groupby(["model", "treatment"], dropna=False):
        if (model, treatment) not in finished and not (jobs["status"] == "ok").any():
            missing.setdefault(str(treatment), []).append((model, jobs["status"]))
    parts = []
    for treatment, entries in missing.items():
        statuses = pd.concat([s for _, s in entries]).value_counts()
        counts = ", ".join(f"{n} {s}" for s, n in statuses.items())
        models = ", ".join(str(m) for m, _ in entries)
        parts.append(f"not covered: {treatment} with {models} ({counts})")
    return "; ".join(parts)


def _treatment_status(runs: pd.DataFrame | None, treatment: str) -> str:
    """Why a treatment has no finished configuration: not in the sweep, or its jobs' states."""
    if runs is None:
        return f"no {treatment} run finished"
    jobs = runs[runs["treatment"] == treatment]
    if jobs.empty:
        return f"the sweep has no {treatment} job"
    counts = ", ".join(f"{n} {s}" for s, n in jobs["status"].value_counts().items())
    return f"no {treatment} run finished ({counts})"


def _best_treatment(table: pd.DataFrame, runs: pd.DataFrame | None, level: float) -> str:
    """The treatment first by mean validation accuracy over the backbones that finished every
    treatment compared, named best only when a Wilcoxon signed-rank test over those backbones
    (test accuracy, Holm over the other treatments) separates it from each other."""
    treatments = list(dict.fromkeys(table["treatment"]))
    absent = []
    if runs is not None:
        absent = [
            _treatment_status(runs, t)
            for t in dict.fromkeys(runs["treatment"].dropna())
            if t not in treatments
        ]
    absent_text = f"; {'; '.join(absent)}" if absent else ""
    if len(treatments) < 2:
        return (
            f"Best treatment: not answerable — only {', '.join(treatments)} finished{absent_text}."
        )
    wide = table.pivot_table(index="model", columns="treatment", values="acc_mean").dropna()
    if wide.empty:
        return (
            f"Best treatment: not answerable — no backbone finished every one of "
            f"{', '.join(treatments)}{absent_text}."
        )
    rows = table[table["model"].isin(wide.index)]
    means = _ranked_groups(rows, "treatment", ["val_acc_mean", "acc_mean"])
    first = means.index[0]
    scope = f"over the {len(wide)} backbones that finished {', '.join(means.index)}{absent_text}"
    p_values = {t: wilcoxon_paired(wide[first] - wide[t]) for t in means.index[1:]}
    tested = {t: p for t, p in p_values.items() if p is not None}
    adjusted = dict(zip(tested, holm(list(tested.values())), strict=True))
    better = {
        t: adjusted.get(t, 1.0) < level and (wide[first] - wide[t]).mean() > 0
        for t in means.index[1:]
    }
    test_text = "; ".join(
        f"{first} vs {t}: Wilcoxon p = {p_values[t]:.3g}, Holm p = {adjusted[t]:.3g}"
        if t in adjusted
        else f"{first} vs {t}: too few backbones ({len(wide)}) for a paired test"
        for t in means.index[1:]
    )
    verdict = (
        f"**Best treatment: {first}**"
        if all(better.values())
        else f"**Best treatment: not separable** ({first} is first by validation, but the test "
        f"set does not separate it from {', '.join(t for t, b in better.items() if not b)})"
    )
    return (
        f"{verdict} — mean accuracy {scope}: "
        + "; ".join(
            f"{t} {_val_and_test(row['val_acc_mean'], row['acc_mean'])}"
            for t, row in means.iterrows()
        )
        + f" ({test_text})."
    )


def treatment_effects(
    configurations: pd.DataFrame,
    questions: list[tuple[str, str, str]],
    level: float,
    runs: pd.DataFrame | None = None,
) -> list[str]:
    """For each (better, worse, question): per backbone, test accuracy under ``better`` minus
    under ``worse`` (each the backbone's validation-chosen configuration of that treatment),
    summarised with a Wilcoxon signed-rank test over backbones, Holm-adjusted over the
    questions that have one."""
    wide = chosen(configurations).pivot(index="model", columns="treatment", values="acc_mean")
    answers: list[str | pd.Series] = []
    for better, worse, question in questions:
        if better not in wide or worse not in wide:
            why = "; ".join(_treatment_status(runs, t) for t in (better, worse) if t not in wide)
            answers.append(f"{question} Not answerable: {why}.")
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
