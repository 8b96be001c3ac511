"""Finding a CelebA copy's files (two layouts) and reading its annotation files with pandas."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from celeba_gender.data.errors import DataError

LABEL_COLUMN = "Male"
NAME_COLUMN = "file_name"

# A copy's duplicate files carry a "(N)" before the extension: "000051(1).jpg".
_COPY_SUFFIX = re.compile(r"^(?P<stem>.+?)\(\d+\)(?P<ext>\.[^.]+)$")


@dataclass(frozen=True)
class DatasetLayout:
    """Where the pieces of one CelebA copy are, and which files were deliberately not used."""

    name: str
    root: Path
    image_dir: Path
    attributes_file: Path
    identity_file: Path | None
    partition_file: Path | None
    ignored_files: dict[str, str] = field(default_factory=dict)


def canonical_name(file_name: str) -> str:
    """The annotation name of an image file: ``000051(1).jpg`` -> ``000051.jpg``."""
    match = _COPY_SUFFIX.match(file_name)
    return f"{match['stem']}{match['ext']}" if match else file_name


def _first_existing(root: Path, candidates: list[str]) -> Path | None:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    return None


def detect_layout(root: str | Path) -> DatasetLayout:
    """Recognise the official CelebA release or the study's subset layout under ``root``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Dataset root {root} does not exist or is not a folder. Point data.root (or the "
            "CELEBA_ROOT environment variable) at a CelebA copy: a folder holding "
            "img_align_celeba/ and list_attr_celeba.txt (in Anno/ or at the root)."
        )
    # torchvision's download puts everything in root/celeba/; accept its parent too.
    if not (root / "img_align_celeba").is_dir() and (root / "celeba" / "img_align_celeba").is_dir():
        root = root / "celeba"

    official_images = _first_existing(
        root, ["img_align_celeba/img_align_celeba", "img_align_celeba"]
    )
    if official_images is not None and official_images.is_dir():
        attributes = _first_existing(root, ["Anno/list_attr_celeba.txt", "list_attr_celeba.txt"])
        if attributes is None:
            raise DataError(
                f"{root} has img_align_celeba/ but no attribute file: expected "
                f"{root / 'Anno' / 'list_attr_celeba.txt'} or {root / 'list_attr_celeba.txt'}."
            )
        return DatasetLayout(
            name="official",
            root=root,
            image_dir=official_images,
            attributes_file=attributes,
            identity_file=_first_existing(
                root, ["Anno/identity_CelebA.txt", "identity_CelebA.txt"]
            ),
            partition_file=_first_existing(
                root, ["Eval/list_eval_partition.txt", "list_eval_partition.txt"]
            ),
        )

    if (root / "Images").is_dir():
        attributes = root / "list_attribute_edit.txt"
        if not attributes.is_file():
            raise DataError(
                f"{root} looks like the study's subset layout (it has Images/) but has no "
                f"{attributes.name}: expected {attributes}."
            )
        ignored = {}
        csv = root / "gender_classification.csv"
        if csv.exists():
            ignored[str(csv)] = (
                "has a Male column but no file names, so its rows cannot be matched to images; "
                "labels come from list_attribute_edit.txt instead"
            )
        identity = root / "class_identity.txt"
        return DatasetLayout(
            name="study_subset",
            root=root,
            image_dir=root / "Images",
            attributes_file=attributes,
            identity_file=identity if identity.is_file() else None,
            partition_file=None,
            ignored_files=ignored,
        )

    raise DataError(
        f"No CelebA layout recognised in {root}. Expected either the official release "
        "(img_align_celeba/ with Anno/list_attr_celeba.txt, Anno/identity_CelebA.txt, "
        "Eval/list_eval_partition.txt, or those files at the root) or the study's subset "
        "(Images/ with list_attribute_edit.txt and class_identity.txt)."
    )


def _first_lines(path: Path, count: int) -> list[list[str]]:
    """Whitespace-split tokens of the first ``count`` non-blank lines (CRLF or LF)."""
    lines: list[list[str]] = []
    with open(path, encoding="utf-8", errors="replace", newline=None) as handle:
        for line in handle:
            tokens = line.split()
            if tokens:
                lines.append(tokens)
            if len(lines) == count:
                break
    return lines


def _read_whitespace_table(path: Path, skip_rows: int, names: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            path,
            sep=r"\s+",
            header=None,
            skiprows=skip_rows,
            names=names,
            dtype={NAME_COLUMN: str},
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot parse {path}: {error}") from None
    incomplete = frame.isna().any(axis=1)
    if incomplete.any():
        # Rows start after the skipped lines; +1 converts to 1-based line numbers.
        line = int(incomplete.to_numpy().nonzero()[0][0]) + skip_rows + 1
        raise DataError(
            f"{path} is malformed: row {line} has fewer than the {len(names)} columns the "
            "header announces (truncated download?). Re-download or fix that file."
        )
    return frame


def read_attributes(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a CelebA attribute file into a frame indexed by file name, values 0/1 (int8).

    Accepts the official format (count line, then the 40 names, then rows of name + 1/-1),
    the same without the count line, a header that names the file column (``file_name ...``),
    CRLF or LF endings, and 1/-1 or 1/0 values. Returns the frame and facts for the report.
    """
    path = Path(path)
    head = _first_lines(path, 3)
    if len(head) < 2:
        raise DataError(f"{path} has no data rows: expected a header line and one row per image.")
    declared_count = None
    if len(head[0]) == 1 and head[0][0].isdigit():
        declared_count = int(head[0][0])
        head = head[1:]
        skip = 2
    else:
        skip = 1
    if len(head) < 2:
        raise DataError(f"{path} has a header but no data rows.")
    header, first_row = head[0], head[1]
    if len(header) == len(first_row) - 1:
        names = [NAME_COLUMN, *header]
    elif len(header) == len(first_row):
        names = [NAME_COLUMN, *header[1:]]
    else:
        raise DataError(
            f"{path}: the header names {len(header)} columns but the first row has "
            f"{len(first_row)}. Expected one column per attribute plus the file name."
        )
    if LABEL_COLUMN not in names:
        raise DataError(f"{path} has no '{LABEL_COLUMN}' column; its header is: {' '.join(header)}")

    frame = _read_whitespace_table(path, skip, names)
    values = frame.drop(columns=NAME_COLUMN)
    try:
        values = values.astype("int64")
    except (TypeError, ValueError):
        raise DataError(
            f"{path} has non-numeric attribute values; expected 1/-1 or 1/0 in every column."
        ) from None
    unexpected = ~values.isin([-1, 0, 1])
    if unexpected.to_numpy().any():
        row = int(unexpected.any(axis=1).to_numpy().nonzero()[0][0])
        raise DataError(
            f"{path}: row for {frame[NAME_COLUMN].iloc[row]} has values other than 1/-1 or 1/0."
        )
    attributes = (values > 0).astype("int8")
    attributes.index = pd.Index(frame[NAME_COLUMN].astype(str), name=NAME_COLUMN)
    duplicated = attributes.index.duplicated()
    facts = {
        "file": str(path),
        "rows": int(len(attributes)),
        "declared_count": declared_count,
        "encoding": "1/-1" if (values == -1).to_numpy().any() else "1/0",
        "duplicate_rows": sorted(set(attributes.index[duplicated])),
    }
    if declared_count is not None and declared_count != len(attributes):
        facts["count_mismatch"] = f"first line says {declared_count}, found {len(attributes)}"
    return attributes[~duplicated], facts


def read_name_value_file(path: str | Path, value_column: str) -> pd.Series:
    """Read a two-column ``file_name value`` file (identity or partition) into an int Series."""
    path = Path(path)
    head = _first_lines(path, 1)
    if not head:
        raise DataError(f"{path} is empty: expected one '<file> <{value_column}>' row per image.")
    # Tolerate a header row ("file_name identity") as some re-distributions add one.
    skip = 0 if head[0][-1].lstrip("-").isdigit() else 1
    frame = _read_whitespace_table(path, skip, [NAME_COLUMN, value_column])
    try:
        values = frame[value_column].astype("int64")
    except (TypeError, ValueError):
        raise DataError(f"{path}: the {value_column} column must hold integers.") from None
    series = pd.Series(values.to_numpy(), index=frame[NAME_COLUMN].astype(str), name=value_column)
    return series[~series.index.duplicated()]
