"""CSV cells a spreadsheet would run as a formula, written so that it shows them as text.

A photo named ``=HYPERLINK(...).jpg`` or ``+cmd.jpg`` lands in predictions.csv as it is, and
Excel, LibreOffice and Google Sheets run a cell that begins with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return (CSV injection). The usual rule: such a cell gets a leading ``'``,
which spreadsheets hide and read as "text". A cell that already begins with ``'`` gets one
more, so ``unquote`` gives back every name exactly; the project's own readers of these files
(the analysis reading a run's predictions) call it. Only text cells change: numbers
(``-0.5``) are left as numbers.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"


def safe_cell(value: Any) -> Any:
    """``value`` as a spreadsheet shows it as text (text cells only)."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, TEXT_MARK)):
        return TEXT_MARK + value
    return value


def unquote_cell(value: Any) -> Any:
    """The value ``safe_cell`` was given."""
    if isinstance(value, str) and value.startswith(TEXT_MARK):
        return value[1:]
    return value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells are ``safe_cell``'s."""
    text = _text_columns(frame)
    return frame.assign(**{c: frame[c].map(safe_cell) for c in text}) if text else frame


def unquote_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A table read back from a file ``safe_frame`` wrote."""
    text = _text_columns(frame)
    return frame.assign(**{c: frame[c].map(unquote_cell) for c in text}) if text else frame


def _text_columns(frame: pd.DataFrame) -> list[str]:
    # Object columns, or pandas' own string dtype (the default for text from pandas 3).
    return [
        c
        for c in frame.columns
        if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c].dtype)
    ]
