"""The benchmark scripts run end to end (their figures are recorded in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_data_loading_benchmark_runs(subset_root, cache_dir, tmp_path):
    output = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "data_loading.py"),
            "--root",
            str(subset_root),
            "--cache-dir",
            str(cache_dir),
            "--sizes",
            "32",
            "--batches",
            "3",
            "--repeats",
            "1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    (row,) = figures["rows"]
    assert row["size"] == 32 and row["per_sample"] > 0 and row["cached_batched"] > 0
    assert f"{row['ratio']:.1f}x" in result.stdout
