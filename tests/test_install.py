"""`pip install .` (not editable) works without the clone: the wheel carries the configs, the
analysis notebook, the sample data and the Hydra launchers, and its commands train, evaluate,
predict and analyse from any folder, writing their outputs there (not into site-packages).

The wheel is built from a copy of the sources (nothing is written into the clone) and installed
into a scratch environment that reuses this one's packages (torch, ...) through a .pth file:
no network, a few MB on disk, removed at the end."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import file_stamps
from omegaconf import OmegaConf

from celeba_gender import config

REPO = Path(__file__).resolve().parents[1]
# What the build reads: the metadata, and the folders the wheel is made of.
BUILD_INPUTS = ["pyproject.toml", "README.md", "LICENSE", ".gitignore"]
BUILD_TREES = ["celeba_gender", "conf", "notebooks", "hydra_plugins"]


def _shipped_files(folder: Path) -> list[Path]:
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]


def _run(command: list, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@dataclass(frozen=True)
class Build:
    wheel: Path
    log: str  # what the build printed (stdout and stderr, --verbose)
    untracked: list[str]  # files the build left that git would offer to commit


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Build:
    """The wheel `pip install .` would build, from a copy of the clone's sources made a git
    repository with everything staged, so that what the build leaves behind shows."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_TREES:
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    _run(["git", "init", "--quiet"], cwd=source)
    _run(["git", "add", "--all"], cwd=source)
    dist = tmp_path_factory.mktemp("dist")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--verbose", "--wheel-dir", str(dist), str(source)],
        cwd=source,
    )  # fmt: skip
    untracked = _run(["git", "ls-files", "--others", "--exclude-standard"], cwd=source)
    shutil.rmtree(source)
    (wheel_file,) = dist.glob("celeba_gender-*.whl")
    return Build(wheel_file, built.stdout + built.stderr, untracked.stdout.split())


@pytest.fixture(scope="module")
def wheel(build) -> Path:
    # A folder of files the packages list leaves out (a new config group): setuptools warns,
    # and says it will stop shipping such files.
    left_out = [line for line in build.log.splitlines() if "absent from the `packages`" in line]
    assert left_out == [], "add to pyproject's packages:\n" + "\n".join(left_out)
    return build.wheel


def test_the_build_declares_its_license_and_leaves_nothing_for_git(build):
    """PEP 639 metadata (an SPDX expression and the LICENSE file, no deprecated license
    table, which setuptools stops building after 2027-02-18), and no build leftovers (build/,
    *.egg-info) outside .gitignore."""
    lines = build.log.lower().splitlines()
    assert [line for line in lines if "deprecat" in line and "license" in line] == []
    with zipfile.ZipFile(build.wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        shipped = archive.read(license_file).decode()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    assert not [h for h in headers if h.startswith("License:")]  # the deprecated field
    assert shipped == (REPO / "LICENSE").read_text()
    assert "MIT License" in shipped and "non-commercial research" in shipped
    assert build.untracked == []


def test_configs_notebook_and_outputs_resolve_in_the_clone(monkeypatch, tmp_path):
    """From the clone (or an editable install): the clone's conf/ and notebooks/, and outputs/
    in the clone unless $CELEBA_GENDER_ROOT says where."""
    assert config.CONFIG_DIR == REPO / "conf"
    assert config.PROJECT_ROOT == REPO
    paths = OmegaConf.create({"root": "${project_root:}", "notebook": "${notebook_dir:}"})
    monkeypatch.delenv(config.ROOT_ENV, raising=False)
    assert Path(paths.root) == REPO
    assert Path(paths.notebook) == REPO / "notebooks"
    monkeypatch.setenv(config.ROOT_ENV, str(tmp_path))
    assert Path(paths.root) == tmp_path

    from celeba_gender.analysis.report import load_settings

    assert Path(load_settings().notebook) == REPO / "notebooks" / "analysis.ipynb"


def test_the_wheel_carries_configs_notebook_sample_data_and_launchers(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    expected = {
        # every config, under the package (conf/ stays at the top of the repository)
        *(f"celeba_gender/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in
          _shipped_files(REPO / "conf") if p.suffix == ".yaml"),
        "celeba_gender/notebooks/analysis.ipynb",
        # every file of the package: modules, the sample data, the analysis' reference table
        *(p.relative_to(REPO).as_posix() for p in _shipped_files(REPO / "celeba_gender")),
        "hydra_plugins/celeba_gender_launchers/__init__.py",
        "hydra_plugins/celeba_gender_search/__init__.py",
    }  # fmt: skip
    assert len([n for n in expected if n.startswith("celeba_gender/conf/")]) >= 30
    assert len([n for n in expected if "/assets/celeba_sample/img_align_celeba/" in n]) >= 100
    assert expected - names == set()
    # hydra_plugins stays a namespace (hydra-submitit-launcher adds to it); nothing else at
    # the top level (no stray conf/ or tests/ package).
    assert "hydra_plugins/__init__.py" not in names
    assert {n.split("/")[0] for n in names} == {
        "celeba_gender",
        "hydra_plugins",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    assert dict(scripts["console_scripts"]) == {
        "celeba-gender-train": "celeba_gender.train:main",
        "celeba-gender-eval": "celeba_gender.eval:main",
        "celeba-gender-predict": "celeba_gender.predict:main",
        "celeba-gender-demo": "celeba_gender.demo:main",
        "celeba-gender-analysis": "celeba_gender.analysis.__main__:main",
    }


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A scratch environment with the wheel installed (pip install --no-deps --no-index) and
    this environment's packages visible behind it; removed at the end."""
    folder = tmp_path_factory.mktemp("installed")
    env = folder / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    paths = json.loads(
        _run(
            [python, "-c", "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"]
        ).stdout
    )
    # Plain path lines: this environment's packages, but not its .pth files (an editable
    # install of the clone would otherwise shadow the wheel).
    reused = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
    Path(paths["purelib"], "_reuse_test_environment.pth").write_text(
        "\n".join(sorted(p for p in reused if Path(p).is_dir())) + "\n"
    )
    start = time.perf_counter()
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(wheel)])  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"wheel of {wheel.stat().st_size / 1e6:.1f} MB installed in {seconds:.1f} s")
    yield python, Path(paths["scripts"]), Path(paths["purelib"])
    shutil.rmtree(folder, ignore_errors=True)


def _outside_environment(run_env: dict) -> dict:
    """This environment with the session's caches, and nothing that would lead a command to the
    clone or elsewhere: no PYTHONPATH, CELEBA_ROOT or CELEBA_GENDER_ROOT."""
    environment = {**os.environ, **run_env}
    for name in ("PYTHONPATH", "CELEBA_ROOT", config.ROOT_ENV):
        environment.pop(name, None)
    return environment


@pytest.fixture(scope="module")
def installed_sweep(installed, run_env, tmp_path_factory):
    """A smoke sweep trained with the installed command from a folder outside the clone (through
    the wheel's Hydra launcher), and its analysis with the packaged notebook: (that folder,
    the sweep). The folder is removed at the end (checkpoints)."""
    python, scripts, _ = installed
    work = tmp_path_factory.mktemp("elsewhere")
    environment = _outside_environment(run_env)
    _run([scripts / "celeba-gender-train", "-m", "hydra/launcher=local", "experiment=smoke"],
         cwd=work, env=environment)  # fmt: skip
    (sweep,) = (work / "outputs" / "multiruns").iterdir()
    _run([python, "-m", "celeba_gender.analysis", str(sweep)], cwd=work, env=environment)
    yield work, sweep
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_installed_commands_run_outside_the_clone(installed, installed_sweep, run_env):
    """A smoke sweep, eval, predict (face detection with the packaged alignment settings) and
    the analysis with its notebook, from a folder outside the clone: everything lands in that
    folder's outputs/."""
    python, scripts, site_packages = installed
    work, sweep = installed_sweep
    environment = _outside_environment(run_env)

    def run(*command):
        return _run([*command], cwd=work, env=environment)

    where = run(
        python,
        "-c",
        "import celeba_gender.config as c, hydra_plugins.celeba_gender_launchers as h; "
        "print(c.__file__, h.__file__, c.CONFIG_DIR, c.NOTEBOOK_DIR, c.PROJECT_ROOT, sep='\\n')",
    ).stdout.splitlines()
    installed_package = site_packages / "celeba_gender"
    assert where[:4] == [
        str(installed_package / "config.py"),
        str(site_packages / "hydra_plugins" / "celeba_gender_launchers" / "__init__.py"),
        str(installed_package / "conf"),
        str(installed_package / "notebooks"),
    ]
    assert where[4] == "None"  # no clone

    (job,) = sweep.glob("0_resnet18_scratch_bce_seed42")
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["data_root"] == str(installed_package / "assets" / "celeba_sample")
    checkpoint = job / "checkpoints" / "best.ckpt"

    run(scripts / "celeba-gender-eval", f"ckpt_path={checkpoint}")
    (evaluated,) = (work / "outputs" / "eval").glob("*/metrics.json")
    assert json.loads(evaluated.read_text())["test_images"] > metrics["test_images"]  # split=all

    sample = sorted((installed_package / "assets" / "celeba_sample" / "img_align_celeba").glob("*"))
    photos = ",".join(str(p) for p in sample[:2])
    run(scripts / "celeba-gender-predict", f"ckpt_path={checkpoint}", f"input=[{photos}]")
    (predictions,) = (work / "outputs" / "predictions").glob("*/predictions.csv")
    assert predictions.read_text().count(",ok,") == 2  # a face found in each

    assert (sweep / "report" / "report.md").is_file()  # the analysis, run by installed_sweep
    assert (sweep / "report" / "analysis.ipynb").is_file()  # the packaged notebook ran
    assert not list(installed_package.rglob("outputs"))


def _execute_notebook(python: Path, notebook: Path, *options: str, cwd: Path, env: dict):
    """`jupyter nbconvert --to notebook --execute NOTEBOOK` with no parameters, as nbconvert
    (the app `jupyter nbconvert` starts) of ``python``: the kernel it starts is that python
    (the `python3` kernel of ipykernel), so it imports what ``python`` imports. Jupyter's and
    IPython's own folders are the test's, so no kernel of this machine's user stands in."""
    home = cwd.parent / "jupyter-home"
    env = {**env, "JUPYTER_DATA_DIR": str(home / "data"), "IPYTHONDIR": str(home / "ipython")}
    return subprocess.run(
        [python, "-m", "nbconvert", "--to", "notebook", "--execute", *options, str(notebook)],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )  # fmt: skip


def _outputs(notebook: Path) -> tuple[str, list[dict]]:
    """The text an executed notebook shows (streams, results, displays), and all its outputs."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    outputs = [output for cell in cells for output in cell["outputs"]]
    text = "".join(
        "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
        for output in outputs
    )
    return text, outputs


@pytest.mark.slow
@pytest.mark.parametrize("where", ["installed", "clone"])
def test_the_notebook_shows_the_newest_report_with_no_arguments(
    where, installed, installed_sweep, run_env, tmp_path
):
    """The installed notebook (or the clone's), executed headless with no parameters from a
    folder outside the clone, shows the most recently written report under
    $CELEBA_GENDER_ROOT/outputs/multiruns/, passing over a sweep without one; it writes
    nothing beside itself (site-packages, the clone's notebooks/)."""
    python, _, site_packages = installed
    _, sweep = installed_sweep
    root = tmp_path / "root"
    multiruns = root / "outputs" / "multiruns"
    shown = multiruns / sweep.name / "report"
    shutil.copytree(sweep / "report", shown)
    # An older report under a name that sorts last, and a newer sweep not analysed yet.
    older = multiruns / "study" / "report"
    shutil.copytree(sweep / "report", older)
    day_before = (shown / "runs.csv").stat().st_mtime - 24 * 3600
    os.utime(older / "runs.csv", (day_before, day_before))
    (multiruns / "9999-12-31_23-59-59" / "0_resnet18_scratch_bce_seed42").mkdir(parents=True)
    if where == "installed":
        notebooks, environment = site_packages / "celeba_gender" / "notebooks", {}
    else:  # this python, importing the clone as the tests do (their PYTHONPATH kept)
        python, notebooks = Path(sys.executable), REPO / "notebooks"
        environment = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
    environment = {**_outside_environment(run_env), **environment, config.ROOT_ENV: str(root)}
    before = file_stamps(notebooks)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    result = _execute_notebook(
        python, notebooks / "analysis.ipynb", "--output-dir", str(elsewhere), cwd=elsewhere,
        env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    text, outputs = _outputs(elsewhere / "analysis.ipynb")
    assert [output for output in outputs if output["output_type"] == "error"] == []
    assert f"report: {shown}\n" in text
    jobs = len(pd.read_csv(shown / "runs.csv"))
    assert f"{sweep}: {jobs} jobs" in text  # that sweep's report (its analysis.yaml, runs.csv)
    assert "resnet18" in text  # its tables
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == len(list((shown / "figures").glob("*.png"))) > 0
    assert file_stamps(notebooks) == before


def test_the_notebook_names_the_folder_it_looked_in_when_there_is_no_report(
    installed, run_env, tmp_path
):
    """Installed, the notebook copied into a folder whose outputs/multiruns/ holds only a sweep
    not analysed yet, executed there with no parameters and no CELEBA_GENDER_ROOT: it ends
    with one line naming that folder and the command to run, no traceback of its own."""
    python, _, site_packages = installed
    work = (tmp_path / "elsewhere").resolve()
    multiruns = work / "outputs" / "multiruns"
    (multiruns / "2025-01-01_00-00-00" / "0_resnet18_scratch_bce_seed42").mkdir(parents=True)
    shutil.copy(site_packages / "celeba_gender" / "notebooks" / "analysis.ipynb", work)

    result = _execute_notebook(
        python, work / "analysis.ipynb", cwd=work, env=_outside_environment(run_env)
    )
    assert result.returncode != 0
    # nbconvert's report of the failing cell ends with what the cell showed: the one line.
    shown = result.stderr.rstrip().rsplit("-" * 18, 1)[1].strip()
    assert shown == (
        f"No sweep under {multiruns} has a report (report/runs.csv): run "
        "`python -m celeba_gender.analysis SWEEP` on one, or set CELEBA_GENDER_ROOT to the "
        "folder that holds outputs/."
    ), result.stderr[-4000:]
