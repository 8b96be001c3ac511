"""The committed report of the real cpu_study sweep (docs/study_cpu/, written by
`python -m celeba_gender.analysis` on the 20-job grid run on the shared CelebA subset): it is
what the README shows researchers, so it must hold together with its own tables."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from conftest import REPO
from omegaconf import OmegaConf

from celeba_gender.analysis.conclusions import configuration_name, ranked
from celeba_gender.config import CONFIG_DIR

STUDY = REPO / "docs" / "study_cpu"


def _report() -> str:
    return (STUDY / "report.md").read_text()


def test_the_study_report_is_small_and_linked_from_the_readme():
    files = [p for p in STUDY.rglob("*") if p.is_file()]
    assert {"report.md", "runs.csv", "configurations.csv", "paired.csv"} <= {p.name for p in files}
    assert not [p for p in files if p.suffix in (".ckpt", ".pt", ".pth", ".onnx")]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    assert "docs/study_cpu/report.md" in (REPO / "README.md").read_text()
    for figure in re.findall(r"!\[[^]]*\]\(([^)]+)\)", _report()):
        assert (STUDY / figure).is_file(), figure


def test_the_study_report_says_what_it_rests_on():
    """All 20 jobs of the grid, the note on the absent pretrained treatment, the compute, and a
    banner exactly when an evaluation was capped or an interval is wider than the threshold."""
    runs = pd.read_csv(STUDY / "runs.csv")
    header = _report().split("## Conclusions")[0]
    assert len(runs) == 20 and set(runs["experiment"]) == {"cpu_study"}
    assert set(runs["treatment"]) == {"scratch_bce", "scratch_ce"} and runs["model"].nunique() == 10
    assert "Experiment: cpu_study; 10 backbones x 2 treatments = 20 jobs" in header
    assert "not in this sweep: pretrained_bce" in header
    assert "pretrained_bce is not run: this machine cannot reach the ImageNet weights" in header
    assert "min of job wall time" in header
    ok = runs[runs["status"] == "ok"]
    width = OmegaConf.load(CONFIG_DIR / "analysis.yaml").finding.max_interval_width
    too_wide = (ok["acc_ci_high"] - ok["acc_ci_low"] > width).any()
    assert ("not a finding" in header) == bool(too_wide or "Capped:" in header)
    if (runs["status"] != "ok").any():
        assert "### Jobs that did not finish" in header


def test_the_study_names_a_best_only_where_its_paired_tests_separate_it():
    """The first conclusion names one best configuration only when paired.csv shows it beats
    every other significantly on the shared seed; otherwise it names the whole group."""
    configurations = pd.read_csv(STUDY / "configurations.csv")
    paired = pd.read_csv(STUDY / "paired.csv")
    first = _report().split("## Conclusions")[1].split("\n- ")[1]
    table = ranked(configurations)
    others = [configuration_name(row) for _, row in table.iloc[1:].iterrows()]
    beaten = {
        name
        for name, tests in paired.groupby("b")
        if (tests["significant"] & (tests["accuracy_difference"] > 0)).all()
    }
    assert configuration_name(table.iloc[0]) in first
    if set(others) <= beaten:
        assert first.startswith("**Best configuration")
    else:
        assert first.startswith("**No single best configuration**")
        for name in set(others) - beaten:
            assert name in first, name


def test_the_study_tables_are_narrow_and_rounded():
    """report.md's tables stay readable: at most 10 columns, no raw float or nan cells, and
    parameters in millions (the CSVs beside it keep every digit)."""
    for line in _report().splitlines():
        if line.startswith("|") and not line.startswith("|:"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            assert len(cells) <= 10, line
            # No raw float (0.8213930348): at most 3 significant digits after the point.
            raw = [c for c in cells if re.fullmatch(r"-?\d+\.0*[1-9]\d{3,}", c)]
            assert not raw, line
            assert "nan" not in cells, line
    assert "params M" in _report()


def test_the_study_report_was_written_by_this_analysis():
    """The committed analysis.yaml is conf/analysis.yaml's keys (a report from older code
    would lack the finding threshold the banner depends on)."""
    used = OmegaConf.load(STUDY / "analysis.yaml")
    assert "finding" in used and Path(used.sweep_dirs[0]).name == "cpu_study"
