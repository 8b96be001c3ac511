"""The smoke grid, every backbone under every treatment:
the four ResNets and Inception-v3 (the other half is in
test_smoke_grid_vgg.py: two files, so that two test workers share the 30 jobs)."""

from __future__ import annotations

import pytest
from smoke_grid import GRID_HALVES, check_grid, run_grid

MODELS = GRID_HALVES[1]


@pytest.mark.slow
def test_the_smoke_grid_completes_for_resnets_and_inception(run_env, tmp_path):
    result, sweep, home = run_grid(MODELS, run_env, tmp_path)
    check_grid(result, sweep, home, MODELS)
