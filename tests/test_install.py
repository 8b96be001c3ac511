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
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from celeba_gender import config

REPO = Path(__file__).resolve().parents[1]
# What the build reads: the metadata, and the folders the wheel is made of.
BUILD_INPUTS = ["pyproject.toml", "README.md"]
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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` would build, from a copy of the clone's sources."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_TREES:
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--verbose", "--wheel-dir", str(dist), str(source)],
        cwd=source,
    )  # fmt: skip
    # A folder of files the packages list leaves out (a new config group): setuptools warns,
    # and says it will stop shipping such files.
    left_out = [line for line in built.stderr.splitlines() if "absent from the `packages`" in line]
    assert left_out == [], "add to pyproject's packages:\n" + "\n".join(left_out)
    shutil.rmtree(source)
    (wheel_file,) = dist.glob("celeba_gender-*.whl")
    return wheel_file


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


@pytest.mark.slow
def test_installed_commands_run_outside_the_clone(installed, run_env, tmp_path):
    """A smoke sweep (through the wheel's Hydra launcher), eval, predict (face detection with
    the packaged alignment settings) and the analysis with its notebook, from a folder outside
    the clone: everything lands in that folder's outputs/."""
    python, scripts, site_packages = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    environment = {**os.environ, **run_env}
    for name in ("PYTHONPATH", "CELEBA_ROOT", config.ROOT_ENV):
        environment.pop(name, None)

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

    run(scripts / "celeba-gender-train", "-m", "hydra/launcher=local", "experiment=smoke")
    (job,) = (work / "outputs" / "multiruns").glob("*/0_resnet18_scratch_bce_seed42")
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

    run(python, "-m", "celeba_gender.analysis", str(job.parent))
    assert (job.parent / "report" / "report.md").is_file()
    assert (job.parent / "report" / "analysis.ipynb").is_file()  # the packaged notebook ran
    assert not list(installed_package.rglob("outputs"))
    shutil.rmtree(work)  # the checkpoint
