"""Time to accuracy (DAWNBench-style): validation accuracy against wall-clock minutes of training.

Each recipe is ``experiment=cpu_quick`` plus a few overrides (``RECIPES`` below). ``run`` trains
it for every seed with train.py, one run folder each (``--out/<recipe>/seed<S>``; a finished
run is skipped, an interrupted one resumed), on the identity split of ``--root``. ``report``
reads every run's TensorBoard events (``val/acc`` after each epoch, with its wall-clock time)
and writes a JSON and a plot: mean validation accuracy over the seeds against mean minutes
since training started (the first event: fit start, after the data is scanned and cached),
min-max band, one line per recipe.

Recipes are chosen on **validation** accuracy only: the mean over at least 3 seeds of each
run's best validation accuracy (the checkpoint the run then tests), among recipes whose mean
fit time is within ``--budget-minutes`` (10). Every run tests its best checkpoint as train.py
does, but the report reads test metrics only with ``--test``, and only for the recipe chosen
on validation (any other is refused): the JSON holds no test figure of the others.

Usage:

    python benchmarks/time_to_accuracy.py run --recipe r96 --seeds 0,1,2 [--root DIR]
    python benchmarks/time_to_accuracy.py run --recipe r96 --seeds 0,1,2 --final-fit
    python benchmarks/time_to_accuracy.py report [--test r96] [--json OUT] [--plot OUT.png]
        [--previous EARLIER.json]
    python benchmarks/time_to_accuracy.py list       # the recipes and their overrides

``--final-fit`` trains the chosen recipe's epochs on the training and validation parts together
(``data.final_fit=true``: nothing left to choose a checkpoint by, so the last epoch is tested);
``report --test`` then reports those runs' test metrics beside the validation-chosen runs'.
``--previous`` carries over the recipes of an earlier report whose run folders are gone.

``--extra`` adds overrides to every run (tests use it to shrink runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "celeba-subset"
DEFAULT_OUT = REPO / "outputs" / "time_to_accuracy"
DEFAULT_JSON = REPO / "docs" / "figures" / "time_to_accuracy_cpu_2core.json"
BASE = ["experiment=cpu_quick"]  # the optimizer, schedule, batch size and trainer
JITTER = "{name:color_jitter,brightness:0.3,contrast:0.3,saturation:0.3}"
FLIP_CROP = (
    "[{name:horizontal_flip,p:0.5},{name:random_resized_crop,scale:[0.5,1.0],ratio:[0.8,1.25]}"
)
# What the recipes vary, at the values of the 48-px recipe before this search; every run sets
# all of them, so a recipe means the same whatever experiment=cpu_quick holds now.
BEFORE = {
    "data.image_size": "48",
    "data.face_crop": "null",
    "data.augmentations": f"{FLIP_CROP},{JITTER}]",
    "data.balance": "none",
    "data.progressive_resizing": "null",
    "label_smoothing": "0.0",
    "callbacks.ema": "null",
    "trainer.max_epochs": "28",
}
R96 = {
    "data.image_size": "96",
    "data.face_crop": "{top:30,left:0,height:178,width:178}",
    "data.augmentations": f"{FLIP_CROP}]",
    "data.balance": "loss_weights",
    "trainer.max_epochs": "16",
}
PROG64_112 = {
    **R96,
    "data.image_size": "112",
    "data.progressive_resizing": "{start_size:64,ramp:[0.25,0.75],multiple:16}",
    "trainer.max_epochs": "23",
}
# name -> (what it is, its values of BEFORE's keys). Epochs are set so that a run fits 10
# minutes on the idle 2-core box.
RECIPES: dict[str, tuple[str, dict[str, str]]] = {
    "cpu_quick_48": (
        "the recipe before this search: 48 px, whole frame, flip+crop+jitter, 28 epochs",
        {},
    ),
    "r96": (
        "96 px face crop, flip+crop (no colour jitter: kornia's costs ~0.15 s a batch), "
        "positive-class loss weights, 16 epochs",
        R96,
    ),
    "r96_22": (
        "as r96, 22 epochs (r96's 16 took ~7 minutes on the idle box: this uses the budget)",
        {**R96, "trainer.max_epochs": "22"},
    ),
    "prog64_112": (
        "as r96, 112 px at the end: progressive resizing from 64 px over the middle half of "
        "23 epochs (FFCV-style)",
        PROG64_112,
    ),
    "prog64_128": (
        "as prog64_112, 128 px at the end (the ramp 64 -> 128 px over the middle half), 20 "
        "epochs to stay within 10 minutes (a 128-px epoch costs ~46 s against ~35 s at 112)",
        {**PROG64_112, "data.image_size": "128", "trainer.max_epochs": "20"},
    ),
    "prog64_112_late": (
        "as prog64_112, a later ramp (64 px until half the epochs, 112 px from 85%) and 26 "
        "epochs: about the same minutes as prog64_112's 23 (16 epochs at 64 px, 4 at 112)",
        {
            **PROG64_112,
            "data.progressive_resizing": "{start_size:64,ramp:[0.5,0.85],multiple:16}",
            "trainer.max_epochs": "26",
        },
    ),
    "prog64_112_jitter": (
        "as prog64_112, with colour jitter (brightness, contrast, saturation 0.3): an accuracy "
        "comparison, over the budget on purpose (kornia's jitter costs ~0.15 s a batch here)",
        {**PROG64_112, "data.augmentations": f"{FLIP_CROP},{JITTER}]"},
    ),
    "prog64_112_r34": (
        "as prog64_112, ResNet-34 (twice ResNet-18's depth and compute: depth, the one size "
        "knob torchvision's ResNets give between 18 and 50 layers) and 12 epochs to stay "
        "within about prog64_112's minutes",
        {**PROG64_112, "model": "resnet34", "trainer.max_epochs": "12"},
    ),
    "prog64_112_x2": (
        "as prog64_112 at twice the budget (46 epochs, the same ramp fractions): where its "
        "curve crosses 95%, if it does, is the budget 95% needs (issue 27 item 4)",
        {**PROG64_112, "trainer.max_epochs": "46"},
    ),
    "prog64_112_ls_ema": (
        "as prog64_112, with label smoothing 0.1 and an EMA of the weights (decay 0.99 a step: "
        "about the last 2 epochs), the averaged weights validated and tested",
        {
            **PROG64_112,
            "label_smoothing": "0.1",
            "callbacks.ema": "{_target_:celeba_gender.training.callbacks.EMAWeights,decay:0.99}",
        },
    ),
}


def recipe_overrides(recipe: str) -> list[str]:
    """train.py's overrides of ``recipe``: BASE, then every key of BEFORE at its value."""
    return [*BASE, *(f"{k}={v}" for k, v in {**BEFORE, **RECIPES[recipe][1]}.items())]


def run_folder(out: Path, recipe: str, seed: int, final_fit: bool = False) -> Path:
    """Where a run of ``recipe`` lives: ``out/<recipe>/seed<S>``, its final fit's under
    ``out/<recipe>/final_fit/``."""
    return out / recipe / ("final_fit" if final_fit else "") / f"seed{seed}"


def run_recipe(
    recipe: str,
    seeds: Sequence[int],
    root: Path,
    out: Path,
    extra: Sequence[str] = (),
    final_fit: bool = False,
) -> list[Path]:
    """Train ``recipe`` once per seed (train.py in a fresh process each); returns run folders.
    ``final_fit``: the same recipe on the training and validation parts together
    (data.final_fit=true), its last epoch tested."""
    folders = []
    for seed in seeds:
        folder = run_folder(out, recipe, seed, final_fit)
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, str(REPO / "train.py"), *recipe_overrides(recipe),
            f"seed={seed}", f"data.root={root}", f"hydra.run.dir={folder}",
            "resume=true", "logger=tensorboard", f"data.final_fit={str(final_fit).lower()}",
            *extra,
        ]  # fmt: skip
        load_before = os.getloadavg()[0]
        started = time.time()
        with open(folder / "benchmark.log", "a") as log:
            done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        facts = {
            "command": command[1:],
            "returncode": done.returncode,
            "load_1min_before": load_before,
            "load_1min_after": os.getloadavg()[0],
            "process_seconds": time.time() - started,
        }
        (folder / "benchmark.json").write_text(json.dumps(facts, indent=1))
        if done.returncode != 0:
            raise SystemExit(f"{recipe} seed {seed} failed: see {folder / 'benchmark.log'}")
        kind = " (final fit)" if final_fit else ""
        print(f"{recipe}{kind} seed {seed}: done in {facts['process_seconds']:.0f} s", flush=True)
        folders.append(folder)
    return folders


def validation_curve(folder: Path) -> list[dict[str, float]]:
    """(epoch, minutes since fit start, val/acc) of a run, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    # Each epoch's last step (metrics.csv, the run's per-epoch table): a validation logged at
    # that step closes that epoch.
    table = pd.read_csv(folder / "metrics.csv")
    epochs = dict(zip(table["step"], table["epoch"], strict=True))
    files = sorted((folder / "tensorboard").glob("events.out.tfevents.*"))
    curve: dict[int, dict[str, float]] = {}
    start = None
    for file in files:
        first = next(iter(EventFileLoader(str(file)).Load()), None)
        if first is not None and start is None:
            start = first.wall_time  # the fit's first event (files are in time order)
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        if "val/acc" not in events.Tags()["scalars"]:
            continue
        for event in events.Scalars("val/acc"):
            epoch = int(epochs.get(event.step, len(curve)))
            curve[epoch] = {
                "epoch": epoch + 1,  # epochs completed
                "minutes": (event.wall_time - start) / 60,
                "val_acc": event.value,
            }
    return [curve[k] for k in sorted(curve)]


def summarise_run(folder: Path) -> dict[str, Any]:
    """Validation facts of one finished run (no test figure)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    if metrics.get("status") != "ok":
        raise SystemExit(f"{folder}: not finished (status {metrics.get('status')}); run it again")
    bench = folder / "benchmark.json"
    curve = validation_curve(folder)
    finished = (folder / "metrics.json").stat().st_mtime
    return {
        "folder": str(folder),
        # The day it ran: minutes from different days of a shared machine may not compare.
        "measured_on": time.strftime("%Y-%m-%d", time.gmtime(finished)),
        "seed": metrics["seed"],
        "epochs": metrics["epochs_trained"],
        "best_val_acc": metrics["best_val"],
        "final_val_acc": curve[-1]["val_acc"] if curve else None,
        "fit_seconds": metrics["fit_seconds"],
        "train_seconds": metrics["train_seconds"],
        "train_images_per_second": metrics["train_images_per_second"],
        "load": json.loads(bench.read_text()) if bench.is_file() else None,
        "curve": curve,
    }


def validation_accuracy_with_flip(folder: Path) -> tuple[float, float]:
    """Validation accuracy of a run's best.ckpt without and with test-time flip averaging
    (the mean P(male) of the image and its mirror image): TTA judged on validation only."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from celeba_gender.models import load_classifier

    config = OmegaConf.load(folder / ".hydra" / "resolved_config.yaml")
    data = OmegaConf.to_container(config.data, resolve=True)
    data.update(summary_path=None, num_workers=0)
    datamodule = instantiate(data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    accuracies = []
    for flip in (False, True):
        model = load_classifier(str(folder / "checkpoints" / "best.ckpt"))
        model.hparams.flip_tta = flip
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        trainer.validate(model, datamodule=datamodule, verbose=False)
        accuracies.append(float(trainer.callback_metrics["val/acc"]))
    return accuracies[0], accuracies[1]


def _mean_spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _test_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread of the test metrics of finished runs' metrics.json records."""
    return {
        "seeds": [m["seed"] for m in records],
        **{
            name: _mean_spread([m[f"test/{name}"] for m in records])
            for name in ("acc", "precision", "recall", "f1", "auroc")
        },
        "per_seed_acc": [m["test/acc"] for m in records],
        "test_images": records[0]["test_images"],
    }


def _final_fit_summary(out: Path, recipe: str) -> dict[str, Any] | None:
    """The final fits of ``recipe`` (``run --final-fit``): fit time and test metrics of its
    last epoch, or None when it has none finished (unfinished seeds are listed, not read)."""
    records, unfinished = [], []
    for folder in sorted((out / recipe / "final_fit").glob("seed*")):
        path = folder / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        if metrics.get("status") != "ok":
            unfinished.append(str(folder))
            continue
        if not metrics.get("final_fit"):
            raise SystemExit(f"{path}: not a final fit (final_fit is not true)")
        summary_path = folder / "data_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        images = summary.get("balance", {}).get("train_images_per_epoch")
        records.append({**metrics, "train_images": images})
    if unfinished:
        print(f"final fits not finished (left out; run them again): {unfinished}", flush=True)
    if not records:
        return None
    return {
        "recipe": recipe,
        "what": "the recipe's epochs on the training and validation parts together "
        "(data.final_fit=true); no validation, so the last epoch is tested",
        "train_images": records[0]["train_images"],
        "fit_minutes": _mean_spread([m["fit_seconds"] / 60 for m in records]),
        "evaluated_checkpoint": sorted({m["evaluated_checkpoint"] for m in records}),
        "unfinished": unfinished,
        **_test_summary(records),
    }


def report(
    out: Path,
    test_recipe: str | None = None,
    flip: bool = False,
    budget_minutes: float = 10.0,
    previous: Path | None = None,
    target: float = 0.95,
) -> dict[str, Any]:
    """Every recipe with finished runs under ``out``: validation summary, curves; the test
    metrics of ``test_recipe`` only, and of its final fits if any; with ``flip``, each
    best.ckpt's validation accuracy with test-time flip averaging too. ``previous``: an
    earlier report's JSON whose recipes with no runs under ``out`` are carried over (marked
    with that report's file) and compete in the choice."""
    recipes: dict[str, Any] = {}
    for recipe_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        runs = [
            summarise_run(f)
            for f in sorted(recipe_dir.glob("seed*"))
            if (f / "metrics.json").is_file()
        ]
        if not runs:
            continue
        flip_summary = {}
        if flip:
            for run in runs:
                plain, flipped = validation_accuracy_with_flip(Path(run["folder"]))
                run["val_acc_evaluated"], run["val_acc_flip_tta"] = plain, flipped
            flip_summary = {"val_acc_flip_tta": _mean_spread([r["val_acc_flip_tta"] for r in runs])}
        description = RECIPES.get(recipe_dir.name, ("(not in RECIPES)",))[0]
        overrides = recipe_overrides(recipe_dir.name) if recipe_dir.name in RECIPES else []
        recipes[recipe_dir.name] = {
            "description": description,
            "overrides": overrides,
            "seeds": [r["seed"] for r in runs],
            "best_val_acc": _mean_spread([r["best_val_acc"] for r in runs]),
            "fit_minutes": _mean_spread([r["fit_seconds"] / 60 for r in runs]),
            **flip_summary,
            "runs": runs,
        }
    earlier_report: dict[str, Any] = {}
    if previous is not None:
        earlier_report = json.loads(previous.read_text())
        for name, recipe in earlier_report["recipes"].items():
            if name not in recipes:
                # Where its runs were read first, if it was carried over before.
                recipes[name] = {
                    **recipe,
                    "carried_over_from": recipe.get("carried_over_from", str(previous)),
                }
    if not recipes:
        raise SystemExit(f"no finished runs under {out}: run some first ({__file__} run ...)")
    for recipe in recipes.values():
        recipe["minutes_to_target"] = minutes_to(recipe, target)
    # The choice: highest mean best-validation accuracy over at least 3 seeds, among recipes
    # whose runs fit the budget (mean fit minutes).
    eligible = {
        k: v
        for k, v in recipes.items()
        if len(v["seeds"]) >= 3 and v["fit_minutes"]["mean"] <= budget_minutes
    }
    chosen = max(eligible, key=lambda k: eligible[k]["best_val_acc"]["mean"]) if eligible else None
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "selection": "highest mean (over >= 3 seeds) of each run's best validation accuracy, "
        f"among recipes whose mean fit time is <= {budget_minutes} minutes",
        "chosen_by_validation": chosen,
        "budget_minutes": budget_minutes,
        "target_val_acc": target,
        "recipes": recipes,
    }
    if test_recipe is not None:
        if test_recipe not in recipes:
            raise SystemExit(f"--test {test_recipe}: no finished runs of it under {out}")
        if test_recipe != chosen:
            raise SystemExit(
                f"--test {test_recipe}: the test part is read for the recipe chosen on "
                f"validation only, which is {chosen}"
            )
        carried_from = recipes[test_recipe].get("carried_over_from")
        if carried_from is None:
            tested = [
                json.loads((Path(r["folder"]) / "metrics.json").read_text())
                for r in recipes[test_recipe]["runs"]
            ]
            result["test"] = {"recipe": test_recipe, **_test_summary(tested)}
        elif earlier_report.get("test", {}).get("recipe") == test_recipe:
            # Its runs are gone: the figures the earlier report read from them, read once.
            test = earlier_report["test"]
            result["test"] = {
                **test,
                "carried_over_from": test.get("carried_over_from", carried_from),
            }
        else:
            raise SystemExit(
                f"--test {test_recipe}: its runs are not under {out} (carried over from "
                f"{carried_from}) and that report holds no test figures of it"
            )
        final_fit = _final_fit_summary(out, test_recipe)
        if final_fit is not None:
            result["final_fit"] = final_fit
    return result


def mean_curve(recipe: dict[str, Any]) -> tuple[list[float], list[list[float]]]:
    """A recipe's curve over its seeds, up to the shortest run: mean minutes after each epoch,
    and every seed's validation accuracy there."""
    curves = [r["curve"] for r in recipe["runs"]]
    length = min(len(c) for c in curves)
    minutes = [statistics.fmean(c[i]["minutes"] for c in curves) for i in range(length)]
    return minutes, [[c[i]["val_acc"] for c in curves] for i in range(length)]


def minutes_to(recipe: dict[str, Any], target: float) -> float | None:
    """Mean minutes at the first epoch whose mean validation accuracy reaches ``target``
    (None: the curve never does)."""
    minutes, accs = mean_curve(recipe)
    return next(
        (m for m, a in zip(minutes, accs, strict=True) if statistics.fmean(a) >= target), None
    )


def plot(result: dict[str, Any], path: Path) -> Path:
    """Mean validation accuracy vs mean minutes, one line per recipe, min-max band; the
    target accuracy and the budget as dotted lines."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for name, recipe in result["recipes"].items():
        minutes, accs = mean_curve(recipe)
        mean = [statistics.fmean(a) for a in accs]
        days = sorted({r["measured_on"] for r in recipe["runs"] if "measured_on" in r})
        when = ", ".join(days) or f"from {Path(recipe.get('carried_over_from', '?')).name}"
        label = f"{name} ({len(recipe['runs'])} seeds, {when})"
        (line,) = axes.plot(minutes, mean, marker=".", label=label)
        axes.fill_between(
            minutes, [min(a) for a in accs], [max(a) for a in accs], alpha=0.15,
            color=line.get_color(), linewidth=0,
        )  # fmt: skip
    axes.axvline(result["budget_minutes"], color="grey", linestyle=":", linewidth=1)
    axes.axhline(result["target_val_acc"], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("minutes of training (2-core CPU, incl. per-epoch validation)")
    axes.set_ylabel("validation accuracy (identity split)")
    axes.set_ylim(0.80, 1.0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "report", "list"])
    parser.add_argument("--recipe", choices=sorted(RECIPES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    parser.add_argument("--test", help="the chosen recipe: also report its test metrics")
    parser.add_argument(
        "--flip", action="store_true", help="also each best.ckpt's val accuracy with flip TTA"
    )
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument(
        "--target", type=float, default=0.95, help="report minutes to this mean val accuracy"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--plot", type=Path, help="default: --json with .png")
    parser.add_argument(
        "--final-fit",
        action="store_true",
        help="run: the recipe on train + validation (data.final_fit=true), its last epoch tested",
    )
    parser.add_argument(
        "--previous", type=Path, help="report: carry over the recipes of this earlier JSON"
    )
    args = parser.parse_args(argv)
    if args.action == "list":
        for name, (description, _) in RECIPES.items():
            print(f"{name}: {description}\n    {' '.join(recipe_overrides(name))}")
        return
    if args.action == "run":
        if args.recipe is None:
            parser.error("run needs --recipe")
        if not args.root.is_dir():
            raise SystemExit(f"--root {args.root}: no such folder (a CelebA copy)")
        seeds = [int(s) for s in args.seeds.split(",")]
        run_recipe(args.recipe, seeds, args.root, args.out, args.extra, args.final_fit)
        return
    result = report(args.out, args.test, args.flip, args.budget_minutes, args.previous, args.target)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    picture = plot(result, args.plot or args.json.with_suffix(".png"))
    for name, recipe in result["recipes"].items():
        val, minutes = recipe["best_val_acc"], recipe["fit_minutes"]
        print(
            f"{name:16s} seeds {recipe['seeds']}: best val {val['mean']:.4f} "
            f"(sd {val['std']:.4f}, {val['min']:.4f}-{val['max']:.4f}), "
            f"fit {minutes['mean']:.1f} min, "
            + (
                f"mean val {args.target} at {recipe['minutes_to_target']:.1f} min"
                if recipe["minutes_to_target"] is not None
                else f"mean val never {args.target}"
            )
            + (
                f", flip TTA val {recipe['val_acc_flip_tta']['mean']:.4f}"
                if "val_acc_flip_tta" in recipe
                else ""
            )
        )
    print(f"chosen by validation: {result['chosen_by_validation']}")
    if "test" in result:
        test = result["test"]
        print(
            f"test ({test['recipe']}, {test['test_images']} images): acc "
            f"{test['acc']['mean']:.4f} (sd {test['acc']['std']:.4f}; {test['per_seed_acc']})"
        )
    if "final_fit" in result:
        fit = result["final_fit"]
        print(
            f"final fit ({fit['recipe']}, {fit['train_images']} training images, last epoch, "
            f"{fit['fit_minutes']['mean']:.1f} min): test acc {fit['acc']['mean']:.4f} "
            f"(sd {fit['acc']['std']:.4f}; {fit['per_seed_acc']})"
        )
    print(f"wrote {args.json} and {picture}")


if __name__ == "__main__":
    main()
