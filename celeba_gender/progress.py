"""Progress bars for the long steps other than training (Lightning draws its own): checking
and decoding a dataset, predicting over many photos, the analysis, an export.

One helper, so every bar looks and behaves the same: tqdm on stderr, shown only when stderr is
a terminal and ``CI`` is not set, so logs, pipes and CI output stay plain, and nothing is
ever written into the CSV/JSON results (they go to files, bars to stderr).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
CI_ENV = "CI"
_CI_OFF = ("", "0", "false", "no")


def progress_enabled() -> bool:
    """Whether bars are drawn: stderr is a terminal and CI is unset (or false)."""
    if os.environ.get(CI_ENV, "").strip().lower() not in _CI_OFF:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without a file, or closed
        return False


def progress(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
) -> tqdm:
    """``iterable`` wrapped in a bar on stderr (a no-op wrapper where bars are off). Without
    an iterable, a bar to ``update()`` by hand (use it as a context manager)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not progress_enabled(),
        dynamic_ncols=True,
        mininterval=0.5,  # a redraw every half second at most: no flood on slow terminals
    )
