"""The smoke grid, every backbone under every treatment:
the four VGGs and GoogLeNet (the other half is in
test_smoke_grid_resnet.py: two files, so that two test workers share the 30 jobs)."""

from __future__ import annotations

import pytest
from smoke_grid import (
    GRID_HALVES,
    check_grid,
    run_grid,
    test_the_two_halves_are_the_whole_grid,  # noqa: F401
)

MODELS = GRID_HALVES[0]


@pytest.mark.slow
def test_the_smoke_grid_completes_for_vggs_and_googlenet(run_env, tmp_path):
    result, sweep, home = run_grid(MODELS, run_env, tmp_path)
    check_grid(result, sweep, home, MODELS)
