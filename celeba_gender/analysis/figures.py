"""The report's pictures. Each function returns a matplotlib Figure (built without pyplot); the
report saves them as PNG and logs them to TensorBoard, and the notebook shows them.

Conventions shared by the figures: a treatment keeps its colour and marker everywhere
(``treatment_styles``); numbers drawn on a coloured cell are white on dark and black on light
(``text_colour``); configurations are listed best validation accuracy first."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import LogFormatter, MaxNLocator
from matplotlib.transforms import Bbox
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from celeba_gender.analysis.conclusions import chosen, configuration_name
from celeba_gender.analysis.statistics import CONFIGURATION, IDENTITIES, correct
from celeba_gender.inference.explain import overlay

# The study's treatments first, so each keeps its colour and marker from sweep to sweep.
KNOWN_TREATMENTS = ("pretrained_bce", "scratch_bce", "scratch_ce")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")
METRIC_NAMES = {"acc": "accuracy", "f1": "F1", "precision": "precision", "recall": "recall"}
CLASS_NAMES = ("female", "male")  # label 0, label 1 (male is the positive class)


def _figure(rows: int = 1, columns: int = 1, **options):
    """A figure without pyplot: no backend or global state, nothing to close."""
    figure = Figure(figsize=options.pop("figsize"), layout=options.pop("layout", None))
    return figure, figure.subplots(rows, columns, **options)


def treatment_styles(treatments) -> dict[str, dict[str, str]]:
    """Colour and marker of each treatment: the study's three first, then others by name."""
    order = list(dict.fromkeys([*KNOWN_TREATMENTS, *sorted(map(str, set(treatments)))]))
    return {
        t: {"color": f"C{k % 10}", "marker": MARKERS[k % len(MARKERS)]}
        for k, t in enumerate(order)
        if t in set(treatments)
    }


def _relative_luminance(colour) -> float:
    """WCAG 2 relative luminance of a colour (0: black, 1: white)."""
    channels = np.asarray(to_rgba(colour)[:3])
    linear = np.where(channels <= 0.03928, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def text_colour(background) -> str:
    """White or black, whichever contrasts more with ``background`` (WCAG contrast ratio;
    either way at least 4.5:1, the threshold for small text)."""
    luminance = _relative_luminance(background)
    return "white" if 1.05 / (luminance + 0.05) > (luminance + 0.05) / 0.05 else "black"


def _model_order(table: pd.DataFrame) -> list[str]:
    """Models by family, then depth, then name (vgg11 before vgg13 before vgg16)."""
    models = table.drop_duplicates("model").assign(
        _family=lambda t: t["family"].astype(str) if "family" in t else "",
        _depth=lambda t: pd.to_numeric(t["depth"], errors="coerce") if "depth" in t else 0,
    )
    models = models.sort_values(["_family", "_depth", "model"], na_position="last")
    return [str(m) for m in models["model"]]


def _treatment_order(treatments) -> list[str]:
    return list(treatment_styles(treatments))


def _runs_of(runs: pd.DataFrame, configuration: pd.Series) -> pd.DataFrame:
    """The successful runs of a configuration (the report's ``runs_of``), lowest seed first."""
    same = runs["status"] == "ok"
    for key in CONFIGURATION:
        if key in runs and key in configuration:
            same &= (runs[key] == configuration[key]) | (
                runs[key].isna() & pd.isna(configuration[key])
            )
    return runs[same].sort_values("seed")


def _bootstrap_words(runs: pd.DataFrame, level: float | None) -> str:
    """What the intervals are, as the runs table says they were computed."""
    units = set(runs.get("resampled", pd.Series(dtype=object)).dropna())
    kind = (
        "cluster bootstrap over test celebrities"
        if units == {IDENTITIES}
        else "bootstrap over test images"
        if units and IDENTITIES not in units
        else "bootstrap (celebrities or images: see runs.csv)"
    )
    return f"{100 * level:g}% {kind}" if level else kind


def metric_heatmap(configurations: pd.DataFrame, metric: str = "acc") -> Figure:
    """Mean test ``metric`` of every model x treatment (where several experiments ran one, the
    validation-best). A cell without a successful run says why: "failed" (every job of it
    failed), "not finished" (missing or interrupted jobs only) or "not run" (not in the sweep);
    a cell where some jobs did not succeed says how many did."""
    name = METRIC_NAMES.get(metric, metric)
    known = configurations.dropna(subset=["model", "treatment"]) if len(configurations) else None
    if known is None or known.empty:
        figure, axes = _figure(figsize=(4, 2))
        axes.axis("off")
        axes.text(0.5, 0.5, "no configuration in the sweep", ha="center", va="center")
        return figure
    models, treatments = _model_order(known), _treatment_order(known["treatment"])
    jobs = known.groupby(["model", "treatment"])[["runs", "ok", "failed"]].sum()
    best = chosen(known).set_index(["model", "treatment"])
    values = np.full((len(models), len(treatments)), np.nan)
    for i, model in enumerate(models):
        for j, treatment in enumerate(treatments):
            if (model, treatment) in best.index:
                values[i, j] = best.loc[(model, treatment), f"{metric}_mean"]
    figure, axes = _figure(
        figsize=(max(3.2 + 1.5 * len(treatments), 5.0), 1.4 + 0.5 * len(models)),
        layout="constrained",
    )
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if high - low < 0.01:  # one value, or all alike: a range the colour bar can show
        low, high = low - 0.005, high + 0.005
    image = axes.imshow(
        np.ma.masked_invalid(values), cmap="viridis", norm=Normalize(low, high), aspect="auto"
    )
    for i, model in enumerate(models):
        for j, treatment in enumerate(treatments):
            if np.isfinite(values[i, j]):
                text = f"{values[i, j]:.3f}"
                if (model, treatment) in jobs.index:
                    count = jobs.loc[(model, treatment)]
                    if count["ok"] < count["runs"]:
                        text += f"\n{int(count['ok'])} of {int(count['runs'])} jobs ok"
                colour = text_colour(image.to_rgba(values[i, j]))
                axes.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
                continue
            if (model, treatment) not in jobs.index:
                word = "not run"
            elif jobs.loc[(model, treatment), "failed"] > 0:
                word = "failed"
            else:
                word = "not finished"
            axes.add_patch(
                Rectangle(
                    (j - 0.5, i - 0.5),
                    1,
                    1,
                    facecolor="0.88",
                    edgecolor="0.6",
                    hatch="///" if word == "failed" else "",
                    linewidth=0,
                )
            )
            axes.text(
                j,
                i,
                word,
                ha="center",
                va="center",
                color="black",
                fontsize=8,
                bbox={"facecolor": "0.88", "edgecolor": "none", "pad": 1},
            )
    axes.set_xticks(range(len(treatments)), treatments)
    axes.set_yticks(range(len(models)), models)
    axes.set_xlabel("treatment")
    axes.set_ylabel("backbone")
    axes.tick_params(length=0)
    axes.set_title(f"test {name} (mean over seeds)", fontsize=10)
    bar = figure.colorbar(image, ax=axes)
    bar.set_label(f"test {name}")
    return figure


def metric_intervals(
    configurations: pd.DataFrame, runs: pd.DataFrame, metrics: tuple[str, ...] = ("acc", "f1")
) -> Figure:
    """Test accuracy and F1 of every configuration, best validation accuracy at the top: each
    successful run as a point with its bootstrap interval (the runs table's ``*_ci_low`` and
    ``*_ci_high``), and where a configuration has several seeds, a bar at their mean. Colour
    and marker: the treatment."""
    table = chosen(configurations)
    rows = max(len(table), 1)
    figure, all_axes = _figure(
        1,
        len(metrics),
        figsize=(5 + 3.2 * len(metrics), 1.9 + 0.38 * rows),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    all_axes = all_axes[0]
    styles = treatment_styles(table["treatment"]) if len(table) else {}
    several_experiments = len(table) and table["experiment"].nunique(dropna=False) > 1
    several_seeds = False
    shown = runs.iloc[0:0]
    for position, (_, row) in enumerate(table.iterrows()):
        seeds = _runs_of(runs, row)
        shown = pd.concat([shown, seeds])
        several_seeds |= len(seeds) > 1
        offsets = np.linspace(-0.22, 0.22, len(seeds)) if len(seeds) > 1 else np.zeros(1)
        style = styles[row["treatment"]]
        for axes, metric in zip(all_axes, metrics, strict=True):
            if position % 2 == 0:
                axes.axhspan(position - 0.5, position + 0.5, color="0.94", zorder=0, linewidth=0)
            for offset, (_, run) in zip(offsets, seeds.iterrows(), strict=False):
                y = position + offset
                low, high = run.get(f"{metric}_ci_low"), run.get(f"{metric}_ci_high")
                if pd.notna(low) and pd.notna(high):
                    axes.plot(
                        [low, high],
                        [y, y],
                        color=style["color"],
                        linewidth=1.3,
                        solid_capstyle="butt",
                        zorder=2,
                        gid="interval",
                    )
                axes.plot(
                    [run[metric]],
                    [y],
                    linestyle="none",
                    marker=style["marker"],
                    markersize=5,
                    color=style["color"],
                    markerfacecolor="white" if len(seeds) > 1 else None,
                    markeredgewidth=1.2,
                    zorder=3,
                    gid="run",
                )
            if len(seeds) > 1:
                axes.plot(
                    [row[f"{metric}_mean"]],
                    [position],
                    linestyle="none",
                    marker="|",
                    markersize=14,
                    markeredgewidth=2.2,
                    color="black",
                    zorder=4,
                    gid="mean",
                )
    names = [
        f"{k + 1}. "
        + (
            configuration_name(row)
            if several_experiments
            else f"{row['model']} / {row['treatment']}"
        )
        for k, (_, row) in enumerate(table.iterrows())
    ]
    level = table["ci_level"].dropna() if "ci_level" in table else pd.Series(dtype=float)
    words = _bootstrap_words(shown, float(level.iloc[0]) if len(level) else None)
    for axes, metric in zip(all_axes, metrics, strict=True):
        values = [
            shown.get(c, pd.Series(dtype=float))
            for c in (metric, f"{metric}_ci_low", f"{metric}_ci_high")
        ]
        values = pd.concat(values).astype(float).dropna()
        if len(values):
            low, high = float(values.min()), float(values.max())
            pad = max(0.02, 0.06 * (high - low))
            axes.set_xlim(max(-pad / 2, low - pad), min(1.0 + pad / 2, high + pad))
        axes.set_xlabel(f"test {METRIC_NAMES.get(metric, metric)}")
        axes.grid(axis="x", color="0.85", linewidth=0.6)
        axes.set_axisbelow(True)
    all_axes[0].set_yticks(range(len(names)), names, fontsize=8)
    all_axes[0].set_ylim(rows - 0.5, -0.5)  # best at the top
    all_axes[0].tick_params(axis="y", length=0)
    seeds_words = (
        "open markers: each seed, black bar: mean over seeds"
        if several_seeds
        else "one seed per configuration"
    )
    figure.suptitle(
        f"Test metrics by configuration, best validation accuracy first\n"
        f"{seeds_words}; lines: each run's {words}",
        fontsize=9,
    )
    handles = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=s["marker"],
            color=s["color"],
            label=t,
            markerfacecolor="white" if several_seeds else s["color"],
            markeredgewidth=1.2,
        )
        for t, s in styles.items()
    ]
    if several_seeds:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="|",
                markersize=12,
                markeredgewidth=2.2,
                color="black",
                label="mean over seeds",
            )
        )
    if handles:
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=len(handles),
            fontsize=8,
            frameon=False,
        )
    return figure


def accuracy_versus(
    configurations: pd.DataFrame, column: str, label: str, scale: float = 1.0
) -> Figure:
    """Mean test accuracy against a cost (inference parameters, training seconds; ``scale``
    times the column, log axis): colour and marker the treatment, each point labelled with its
    backbone where the label overlaps no other label or point."""
    table = chosen(configurations)
    if len(table) and column in table:
        table = table[table[column].notna() & table["acc_mean"].notna()]
    else:
        table = table.iloc[0:0].assign(**{column: []})
    x, y = table[column].to_numpy(dtype=float) * scale, table["acc_mean"].to_numpy(dtype=float)
    figure, axes = _figure(figsize=(7.5, 4.8))
    styles = treatment_styles(table["treatment"]) if len(table) else {}
    for treatment, style in styles.items():
        group = table[table["treatment"] == treatment]
        axes.plot(
            group[column].to_numpy(dtype=float) * scale,
            group["acc_mean"],
            linestyle="none",
            markersize=6,
            label=treatment,
            **style,
        )
    logarithmic = len(x) > 0 and bool((x > 0).all())
    if logarithmic:
        axes.set_xscale("log")
        # Plain numbers (6, 10, 20), labelled minor ticks where the axis spans little.
        axes.xaxis.set_major_formatter(LogFormatter())
        axes.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes.set_xlabel(label)
    axes.set_ylabel("test accuracy (mean over seeds)")
    axes.grid(color="0.9", linewidth=0.6)
    axes.set_axisbelow(True)
    if styles:
        axes.legend(
            title="treatment",
            fontsize=8,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
    if len(table):  # room around the points for their labels, even around a single one
        if logarithmic:
            low, high = np.log10(x.min()), np.log10(x.max())
            pad = 0.3 if high - low < 0.3 else 0.05 + 0.1 * (high - low)  # decades
            axes.set_xlim(10 ** (low - pad), 10 ** (high + pad))
        else:
            pad = max(0.1 * (x.max() - x.min()), 0.1 * abs(x.max()), 1e-9)
            axes.set_xlim(x.min() - pad, x.max() + pad)
        pad = max(0.1 * (y.max() - y.min()), 0.02)
        axes.set_ylim(y.min() - pad, y.max() + pad)
    figure.tight_layout()  # once, and before the labels: they are placed where the axes are
    points = list(zip(x, y, table["model"].astype(str), strict=True))
    place_labels(axes, points)
    return figure


# Where a label may go around its point: offsets (points) in rings of growing radius, the
# closest first, each direction in a fixed order, so the placement is deterministic.
_DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
_RADII = (5, 11, 18, 27, 38, 52, 70)


def place_labels(axes, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Annotate each (x, y, text) next to its point where the label's box overlaps no other
    label and no marker and stays inside the axes (with a thin leader line when it had to
    move away), or else where it overlaps least. Call once the figure's layout is final."""
    figure = axes.get_figure()
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()
    inside = axes.get_window_extent(renderer)
    centres = axes.transData.transform([(x, y) for x, y, _ in points]) if points else []
    half = 3.5 * figure.dpi / 72  # half a marker's width, pixels
    taken = [Bbox.from_extents(cx - half, cy - half, cx + half, cy + half) for cx, cy in centres]
    labels = []
    for x, y, text in points:
        probe = axes.annotate(text, (x, y), (0, 0), textcoords="offset points", fontsize=fontsize)
        best, least = None, math.inf
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                _align(probe, dx, dy, radius)
                box = probe.get_window_extent(renderer)
                overlap = sum(_overlap(box, other) for other in taken)
                overlap += box.width * box.height - _overlap(box, inside)
                if overlap < least:
                    best, least = (dx, dy, radius, box), overlap
                if least <= 0:
                    break
            if least <= 0:
                break
        probe.remove()
        dx, dy, radius, box = best
        leader = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 1, "shrinkB": 3}
        annotation = axes.annotate(
            text,
            (x, y),
            (0, 0),
            textcoords="offset points",
            fontsize=fontsize,
            arrowprops=leader if radius > _RADII[0] else None,
        )
        _align(annotation, dx, dy, radius)
        taken.append(box)
        labels.append(annotation)
    return labels


def _align(annotation, dx: int, dy: int, radius: float) -> None:
    """Put the label ``radius`` points from its point, on the side (dx, dy) points to."""
    annotation.set_position((dx * radius, dy * radius))
    annotation.set_horizontalalignment({1: "left", -1: "right", 0: "center"}[dx])
    annotation.set_verticalalignment({1: "bottom", -1: "top", 0: "center"}[dy])


def _overlap(a: Bbox, b: Bbox) -> float:
    """Area two boxes share (pixels squared)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def confusion_matrices(matrices: dict[str, np.ndarray], class_names=CLASS_NAMES) -> Figure:
    """One 2x2 matrix per entry (rows: true class, columns: predicted; female, male), each cell
    with its count and its share of the true class (row percentage), coloured by that share."""
    count = max(len(matrices), 1)
    columns = min(count, 5)
    rows = math.ceil(count / columns)
    figure, axes_grid = _figure(
        rows,
        columns,
        figsize=(max(2.5 * columns + 1.0, 4.5), 2.6 * rows + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for axes in axes_grid.flat:
        axes.axis("off")
    norm, cmap = Normalize(0, 1), "Blues"
    for axes, (name, matrix) in zip(axes_grid.flat, matrices.items(), strict=False):
        axes.axis("on")
        matrix = np.asarray(matrix, dtype=float)
        totals = matrix.sum(axis=1, keepdims=True)
        shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
        image = axes.imshow(shares, cmap=cmap, norm=norm)
        for (i, j), value in np.ndenumerate(matrix):
            text = f"{int(value)}\n{100 * shares[i, j]:.0f}%" if totals[i, 0] else f"{int(value)}"
            colour = text_colour(image.to_rgba(shares[i, j]))
            axes.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
        axes.set_xticks([0, 1], class_names, fontsize=8)
        axes.set_yticks([0, 1], class_names, fontsize=8, rotation=90, va="center")
        axes.set_xlabel("predicted", fontsize=8)
        axes.set_ylabel("true", fontsize=8)
        axes.tick_params(length=0)
        axes.set_title(name, fontsize=7)
    if matrices:
        bar = figure.colorbar(ScalarMappable(norm, cmap), ax=axes_grid, shrink=0.8)
        bar.set_label("share of the true class", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    figure.suptitle(
        "Test confusion matrices (male when P(male) > 0.5)\ncount and row percentage", fontsize=9
    )
    return figure


def worst_images(predictions: pd.DataFrame, image_dir: Path, count: int, title: str) -> Figure:
    """The test images the run was most confidently wrong about, with their P(male)."""
    wrong = predictions[~correct(predictions)]
    wrong = wrong.assign(confidence=(wrong["p_male"] - 0.5).abs()).nlargest(count, "confidence")
    columns = max(min(len(wrong), 8), 1)
    rows = max(math.ceil(len(wrong) / columns), 1)
    figure, axes_grid = _figure(rows, columns, figsize=(1.6 * columns, 2.1 * rows), squeeze=False)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, (_, row) in zip(axes_grid.flat, wrong.iterrows(), strict=False):
        path = image_dir / row["file_name"]
        if path.is_file():
            with Image.open(path) as image:
                axes.imshow(image.convert("RGB"))
        truth = "male" if row["label"] == 1 else "female"
        axes.set_title(f"{row['file_name']}\n{truth}, P(m)={row['p_male']:.2f}", fontsize=6)
    figure.suptitle(title if len(wrong) else f"{title}: no errors", fontsize=9)
    figure.tight_layout()
    return figure


def learning_curves(
    runs: pd.DataFrame, tags: tuple[str, ...] = ("val/acc", "train/loss_epoch")
) -> Figure:
    """Per epoch, from the runs' TensorBoard events: one line per model x treatment (``runs``:
    their successful runs, with ``run_dir``), the mean over its seeds, with a band from the
    lowest to the highest seed. Colour: the backbone; line style and marker: the treatment."""
    figure, all_axes = _figure(
        1, len(tags), figsize=(5.2 * len(tags) + 2.2, 4.2), squeeze=False, layout="constrained"
    )
    all_axes = all_axes[0]
    models = _model_order(runs) if len(runs) else []
    colours = {m: _model_colour(k, len(models)) for k, m in enumerate(models)}
    treatments = _treatment_order(runs["treatment"]) if len(runs) else []
    styles = {
        t: (LINE_STYLES[k % len(LINE_STYLES)], treatment_styles(treatments)[t]["marker"])
        for k, t in enumerate(treatments)
    }
    # Each configuration's curves per tag: seeds x epochs (NaN past a seed's last epoch).
    stacks: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for (model, treatment), group in runs.groupby(["model", "treatment"], sort=False):
        series = [read_scalars(Path(d), tags) for d in group["run_dir"]]
        for tag in tags:
            curves = [s[tag] for s in series if s.get(tag)]
            if curves:
                stacked = np.full((len(curves), max(len(c) for c in curves)), np.nan)
                for k, curve in enumerate(curves):
                    stacked[k, : len(curve)] = curve
                stacks.setdefault((model, treatment), {})[tag] = stacked
    longest = max((s.shape[1] for c in stacks.values() for s in c.values()), default=0)
    several_seeds = any(s.shape[0] > 1 for c in stacks.values() for s in c.values())
    # One epoch: the configurations' points side by side, not on top of each other.
    dodge = np.linspace(-0.3, 0.3, len(stacks)) if longest == 1 and len(stacks) > 1 else None
    for k, ((model, treatment), by_tag) in enumerate(stacks.items()):
        line_style, marker = styles[treatment]
        colour = colours[model]
        for axes, tag in zip(all_axes, tags, strict=True):
            if tag not in by_tag:
                continue
            stacked = by_tag[tag]
            x = np.arange(1, stacked.shape[1] + 1) + (dodge[k] if dodge is not None else 0)
            axes.plot(
                x,
                np.nanmean(stacked, axis=0),
                color=colour,
                linestyle=line_style,
                marker=marker if longest <= 20 else None,
                markersize=5,
                linewidth=1.5,
                label=f"{model} / {treatment}",
            )
            if stacked.shape[0] > 1:
                low, high = np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0)
                if stacked.shape[1] > 1:
                    axes.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
                else:
                    axes.vlines(x, low, high, color=colour, alpha=0.5, linewidth=1.5)
    drawn = set(stacks)
    names = {
        "val/acc": "validation accuracy",
        "train/loss_epoch": "training loss (epoch mean)",
        "val/loss": "validation loss",
        "train/acc_epoch": "training accuracy",
    }
    for axes, tag in zip(all_axes, tags, strict=True):
        axes.set_xlabel("epoch")
        axes.set_ylabel(names.get(tag, tag))
        if longest <= 20:
            axes.set_xticks(range(1, max(longest, 1) + 1))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(0.5, max(longest, 1) + 0.5)
        axes.grid(color="0.9", linewidth=0.6)
        if not drawn:
            axes.text(
                0.5,
                0.5,
                "no TensorBoard scalars found",
                ha="center",
                va="center",
                transform=axes.transAxes,
            )
    figure.suptitle(
        (
            "Learning curves: line = mean over seeds, band = lowest to highest seed"
            if several_seeds
            else "Learning curves (one seed per configuration)"
        )
        + ("; one epoch, configurations side by side" if dodge is not None else ""),
        fontsize=9,
    )
    drawn_models = [m for m in models if any(m == d[0] for d in drawn)]
    drawn_treatments = [t for t in treatments if any(t == d[1] for d in drawn)]
    handles = [Line2D([], [], color=colours[m], linewidth=2.5, label=m) for m in drawn_models]
    handles += [
        Line2D(
            [], [], color="0.3", linestyle=styles[t][0], marker=styles[t][1], markersize=5, label=t
        )
        for t in drawn_treatments
    ]
    if handles:
        figure.legend(
            handles=handles,
            loc="outside right upper",
            fontsize=8,
            frameon=False,
            title="backbone, treatment",
            title_fontsize=8,
        )
    return figure


def _model_colour(index: int, count: int):
    """Distinct colours for up to ten backbones (tab10), twenty beyond (tab20)."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return palette(index % palette.N)


def read_scalars(run_dir: Path, tags: tuple[str, ...]) -> dict[str, list[float]]:
    """A run's logged scalar series by tag (TensorBoard event files under run_dir)."""
    series: dict[str, list[float]] = {}
    for events in sorted(Path(run_dir).glob("**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in tags:
            if tag in accumulator.Tags().get("scalars", []):
                series.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return series


def reliability_diagram(tables: dict[str, pd.DataFrame]) -> Figure:
    """Fraction of men against mean P(male) per bin, one line per run; the diagonal is ideal."""
    figure, axes = _figure(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for name, table in tables.items():
        filled = table[table["images"] > 0]
        axes.plot(filled["mean_p_male"], filled["fraction_male"], marker="o", label=name)
    axes.set_xlabel("mean P(male) in bin")
    axes.set_ylabel("fraction male in bin")
    if len(tables) <= 12:
        axes.legend(fontsize=6)
    figure.tight_layout()
    return figure


def heat_map_grid(rows: dict[str, dict[str, object]], title: str) -> Figure:
    """Rows: configurations; columns: their cells (``heat_maps.CELLS``), each the cell's mean
    Grad-CAM map over its mean image, with the number of images averaged (blank at n=0).
    ``rows`` maps a row's label to {cell title: ``heat_maps.MeanMap``}."""
    columns = max((len(cells) for cells in rows.values()), default=1)
    # Constrained layout: room for the colour bar beside the grid and the long row labels.
    figure = Figure(figsize=(1.7 * columns + 1.8, 2.2 * len(rows) + 0.6), layout="constrained")
    axes_grid = figure.subplots(len(rows), columns, squeeze=False)
    for axes_row, (label, cells) in zip(axes_grid, rows.items(), strict=True):
        for axes, (name, cell) in zip(axes_row, cells.items(), strict=False):
            axes.set_xticks([])
            axes.set_yticks([])
            if cell.count:
                face = Image.fromarray((cell.face * 255).round().astype(np.uint8))
                axes.imshow(overlay(face, cell.heat))
            else:
                axes.text(
                    0.5,
                    0.5,
                    "no images",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="0.4",
                    transform=axes.transAxes,
                )
            axes.set_title(f"{name}\nn={cell.count}", fontsize=7)
        axes_row[0].set_ylabel(label, fontsize=7)
    bar = figure.colorbar(
        ScalarMappable(Normalize(0, 1), cmap="jet"),
        ax=axes_grid.ravel().tolist(),
        shrink=min(0.8, 0.35 + 0.1 * len(rows)),
        aspect=30,
    )
    bar.set_label("mean Grad-CAM map (1: each image's peak)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=8)
    figure.supxlabel(
        "test images by true gender and whether the prediction was right (n: images averaged)",
        fontsize=7,
    )
    figure.supylabel("configuration (validation rank) and the job drawn", fontsize=7)
    return figure
