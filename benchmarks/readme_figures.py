"""The README's two pictures, from a trained model, and a record of which one made them:

  demo.png               the browser demo (python -m celeba_gender.demo) answering scikit-image's
                         astronaut portrait, a full-page screenshot in headless Debian chromium
                         (every request the page makes must stay on 127.0.0.1)
  heat_maps.png          the report's mean Grad-CAM grid (analysis.report.heat_map_figure) of the
                         sweep's --heat-map-rows validation-best configurations
  readme_figures.json    the run and checkpoint behind them, its validation and test accuracy

The run is the report's best: the sweep's validation-best configuration (conclusions.ranked, as
python -m celeba_gender.analysis chooses it) and its lowest-seed run, whose evaluated checkpoint
the demo serves (it is also the grid's first row). --ckpt serves a checkpoint instead; its run
folder, when it is in one, gives the accuracies and a one-row grid.

    python benchmarks/readme_figures.py --sweep outputs/multiruns/<sweep> [--heat-map-rows 4]
    python benchmarks/readme_figures.py --ckpt outputs/runs/<run>/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from PIL import Image

from celeba_gender.analysis import analyze_sweep, load_settings
from celeba_gender.analysis.conclusions import configuration_name, ranked
from celeba_gender.analysis.heat_maps import evaluated_checkpoint
from celeba_gender.analysis.report import heat_map_figure, validation_best_run
from celeba_gender.data import DataError
from celeba_gender.demo import CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
DPI = 120  # the report's (write_report)
STARTUP_S = 180


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _whole(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def choose(args: argparse.Namespace) -> tuple[object | None, pd.Series | None, Path]:
    """(the analysis, the chosen run's row, the checkpoint to serve); no analysis and no row
    for a --ckpt outside a run folder."""
    settings = load_settings(
        **{
            "bootstrap.resamples": args.resamples,
            "heat_maps.max_configurations": args.heat_map_rows,
            "heat_maps.device": args.device,
        }
    )
    if args.ckpt:
        run_dir = args.ckpt.resolve().parent.parent  # <run>/checkpoints/<name>.ckpt
        try:
            tested = evaluated_checkpoint(run_dir).resolve() == args.ckpt.resolve()
        except DataError:  # not in a run folder, or its run kept no tested checkpoint
            tested = False
        if not tested:
            print(f"{args.ckpt} is not the checkpoint a run was tested with: no accuracies")
            return None, None, args.ckpt
        analysis = analyze_sweep(run_dir, settings)
        if analysis.best is None:
            raise DataError(f"{run_dir}: the run did not finish")
    else:
        analysis = analyze_sweep(args.sweep, settings)
        if analysis.best is None:
            raise DataError(f"{args.sweep}: no run finished, nothing to show")
    run = validation_best_run(analysis.runs)  # the demo's default on a sweep too
    return analysis, run, evaluated_checkpoint(run["run_dir"])


def heat_maps(analysis, path: Path) -> list[dict]:
    """heat_maps.png; its rows (configuration and job), top first."""
    figure = heat_map_figure(analysis)
    if figure is None:
        raise DataError("no heat-map grid: " + "; ".join(analysis.notes))
    figure.savefig(path, dpi=DPI)
    runs = analysis.runs.set_index("job")
    rows = []
    for axes in figure.axes[:-1]:  # the last is the colour bar
        if axes.get_ylabel():  # a row's first cell: "configuration\njob"
            name, job = axes.get_ylabel().split("\n")
            run = runs.loc[job]
            rows.append(
                {
                    "configuration": name,
                    "job": job,
                    "val_acc": _number(run["val_acc"]),
                    "test_acc": _number(run["acc"]),
                }
            )
    return rows


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo_screenshot(model: Path, path: Path, chromium: str, device: str) -> str:
    """Serve ``model`` with the demo, upload the astronaut portrait in headless chromium, wait
    for the answer and its heat maps, and save the whole page to ``path``; the page's answer."""
    from playwright.sync_api import expect, sync_playwright
    from skimage.data import astronaut

    work = Path(tempfile.mkdtemp(prefix="readme_figures_"))
    photo = work / "astronaut.jpg"
    Image.fromarray(astronaut()).save(photo, quality=92)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "celeba_gender.demo", f"ckpt_path={model}", f"port={port}",
         f"device={device}", f"hydra.run.dir={work / 'log'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    outside: list[str] = []  # every request the page makes beyond this machine

    def local_only(route) -> None:
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    output = server.communicate()[0][-3000:]
                    raise DataError(f"the demo did not start: {output}") from None
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                page.route("**/*", local_only)
                page.goto(url)  # the page keeps a connection open: never network-idle
                upload = page.locator("#photo input[type=file]")
                upload.wait_for(state="attached", timeout=60_000)
                upload.set_input_files(photo)
                # The message comes with the heat maps, after the boxes and the table.
                message = page.locator("#message")
                try:
                    expect(message).to_contain_text("face 0", timeout=120_000)
                except AssertionError:
                    raise DataError(f"the demo's answer: {message.inner_text()!r}") from None
                answer = message.inner_text().strip()
                for pictures in ("#annotated img", "#crops img"):
                    picture = page.locator(pictures).first
                    expect(picture).to_be_visible(timeout=60_000)
                    picture.evaluate("image => image.decode()")
                page.screenshot(path=path, full_page=True)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    if outside:
        raise DataError(f"the page asked the internet for {outside}: demo.png not trusted")
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sweep", type=Path, help="a finished sweep folder (train.py -m)")
    source.add_argument("--ckpt", type=Path, help="a checkpoint to serve instead")
    parser.add_argument("--heat-map-rows", type=int, default=4, help="configurations in the grid")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument(
        "--resamples", type=int, help="bootstrap resamples (default: report.md's, so its interval)"
    )
    parser.add_argument("--device", default="cpu", help="the demo's and the heat maps' device")
    parser.add_argument(
        "--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium")
    )
    parser.add_argument("--no-demo", action="store_true", help="leave demo.png as it is")
    parser.add_argument("--no-heat-maps", action="store_true", help="leave heat_maps.png as it is")
    args = parser.parse_args()
    if args.ckpt and not args.ckpt.is_file():
        parser.error(f"--ckpt {args.ckpt}: no such file")
    if not args.no_demo and not args.chromium:
        parser.error("no chromium on PATH: apt-get install chromium, or pass --chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        analysis, run, checkpoint = choose(args)
        record = {
            "command": " ".join(["python", *sys.argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "sweep": str(args.sweep.resolve()) if args.sweep else None,
            "checkpoint": str(checkpoint.resolve()),
            "figures": [],
        }
        if run is not None:
            record |= {
                "run_dir": str(run["run_dir"]),
                "job": run["job"],
                "configuration": configuration_name(analysis.best),
                **{key: _text(run[key]) for key in ("model", "treatment", "experiment")},
                "seed": _whole(run["seed"]),
                "val_acc": _number(run["val_acc"]),
                "val_images": _whole(run["val_images"]),
                "test_acc": _number(run["acc"]),
                "test_acc_interval": [_number(run.get(f"acc_ci_{end}")) for end in ("low", "high")],
                "interval_level": analysis.settings.bootstrap.confidence,
                "test_images": _whole(run["test_images"]),
                "configurations": len(ranked(analysis.configurations)),  # with a finished run
            }
            print(
                f"run: {run['run_dir']} ({record['configuration']}, seed {record['seed']}): "
                f"validation {100 * record['val_acc']:.1f}% of {record['val_images']} images, "
                f"test {100 * record['test_acc']:.1f}% of {record['test_images']}"
            )
        print(f"checkpoint: {checkpoint}")
        if analysis is not None and not args.no_heat_maps:
            record["heat_map_rows"] = heat_maps(analysis, args.out / "heat_maps.png")
            record["figures"].append("heat_maps.png")
            print(f"{args.out / 'heat_maps.png'}, rows:")
            for row in record["heat_map_rows"]:
                print(
                    f"  {row['configuration']} ({row['job']}): validation "
                    f"{100 * row['val_acc']:.1f}%, test {100 * row['test_acc']:.1f}%"
                )
        if not args.no_demo:
            # A run's best.ckpt is served as its run folder: the page then names the job.
            served = (
                run["run_dir"]
                if run is not None and checkpoint == Path(run["run_dir"]) / CHECKPOINT
                else checkpoint
            )
            record["demo_answer"] = demo_screenshot(
                Path(served), args.out / "demo.png", args.chromium, args.device
            )
            record["figures"].append("demo.png")
            print(f"{args.out / 'demo.png'}: {record['demo_answer']}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    record["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "readme_figures.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out / 'readme_figures.json'} ({record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
