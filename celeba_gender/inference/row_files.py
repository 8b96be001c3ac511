"""predict's row files, streamed: ``<stem>.csv`` gets each photo's (or video's) rows in one
write as soon as they are known, so a run stopped at any point (even SIGKILL) leaves a valid
CSV of what was done; ``<stem>.json`` is the same rows as a list, completed when the run ends
or stops. predictions.csv/.json and tracks.csv/.json are both written here."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from celeba_gender.data.cache import atomic_output
from celeba_gender.spreadsheet import safe_cell


def write_all(descriptor: int, data: bytes) -> None:
    """Append ``data`` to the file (one system call for any row set of a photo)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """The rows as CSV lines (cells a spreadsheet would run as formulas neutralised)."""
    text = io.StringIO()
    csv.DictWriter(text, columns, extrasaction="ignore").writerows(
        {key: safe_cell(value) for key, value in row.items()} for row in rows
    )
    return text.getvalue().encode()


class RowFiles:
    """``<stem>.csv`` and ``<stem>.json`` in ``output_dir``, rows of ``columns``. ``prepare``
    makes both files' bytes, ``write`` appends them: a stop between the two never splits a
    row set between the files."""

    def __init__(self, output_dir: Path, stem: str, columns: Sequence[str]) -> None:
        self.csv_path = output_dir / f"{stem}.csv"
        self.json_path = output_dir / f"{stem}.json"
        self.columns = tuple(columns)
        self._stack = contextlib.ExitStack()
        self._separator = b"\n  "

    def __enter__(self) -> RowFiles:
        with self._stack as stack:
            table = stack.enter_context(open(self.csv_path, "wb", buffering=0))
            self._records = stack.enter_context(atomic_output(self.json_path))
            self._table = table.fileno()
            write_all(self._table, ",".join(self.columns).encode() + b"\r\n")
            self._records.write(b"[")
            self._stack = stack.pop_all()
        return self

    def prepare(self, rows: Sequence[Mapping[str, Any]]) -> tuple[bytes, bytes]:
        """The CSV and the JSON bytes of ``rows`` (the JSON's separators follow on)."""
        records = b""
        for row in rows:
            record = {column: row.get(column) for column in self.columns}
            records += self._separator + json.dumps(record).encode()
            self._separator = b",\n  "
        return csv_text(rows, self.columns), records

    def write(self, prepared: tuple[bytes, bytes]) -> None:
        table, records = prepared
        write_all(self._table, table)
        self._records.write(records)

    def __exit__(self, *exc: object) -> None:
        # The JSON is completed whatever ended the run: the caller re-raises after.
        with self._stack:
            self._records.write(b"\n]\n")
