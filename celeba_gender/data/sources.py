"""Face sets beyond CelebA's layout: a folder per class (torchvision's ImageFolder), or a CSV.

Both are read into the labelled table ``index.build_index`` turns into an index, so the study
can be repeated on UTKFace, FairFace or LFW in a user's own copy without converting it to
CelebA's files:

- ``image_folder``: ``female/`` and ``male/`` (``data.class_names``, any case) under
  ``data.root``, images anywhere below them; ``male/<person>/x.jpg`` is person ``<person>``
  (LFW's layout), an image directly in a class folder has no identity.
- ``csv``: ``data.root`` is a CSV file with a header row; ``data.csv_columns`` names its path,
  label and (optional) identity columns; paths are relative to the CSV's folder, or absolute.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from celeba_gender.data.annotations import (
    _IMAGE_NAME,
    AnnotationWarning,
    _check_utf8,
    _duplicate_facts,
    _read_text,
    detect_layout,
    looks_like_celeba,
)
from celeba_gender.data.errors import DataError
from celeba_gender.data.images import describe_os_error

SOURCES = ("auto", "celeba", "image_folder", "csv")
OTHER_SOURCES = ("image_folder", "csv")  # read here; no attributes, identities optional
CSV_KEYS = ("path", "label", "identity")
DEFAULT_CLASS_NAMES = ("female", "male")  # label 0, label 1
DEFAULT_CSV_COLUMNS = {"path": "path", "label": "label", "identity": "identity"}
FILE_COLUMNS = ["file", "listed_as", "male", "identity"]

ACCEPTED = (
    "a CelebA copy (img_align_celeba/ with list_attr_celeba.txt, or the study's Images/ with "
    "list_attribute_edit.txt), a folder with one subfolder per class ({classes}: "
    "data.class_names), or a CSV file with a header row and path and label columns "
    "(data.csv_columns)"
)


@dataclass
class LabelledFiles:
    """A non-CelebA source read: ``files`` has one row per listed image file with ``file``
    (path relative to ``image_dir``, '/'-separated), ``listed_as`` (the path as the source
    names it, for predictions), ``male`` (0/1) and ``identity`` (text, '' where unknown)."""

    source: str  # image_folder | csv
    root: Path  # the folder holding the class folders, or the CSV file
    image_dir: Path
    files: pd.DataFrame
    listed: int  # image files found (folder) or rows listed (CSV)
    absent: list[str] = field(default_factory=list)  # listed in the CSV, no such file
    facts: dict = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)  # entries not used, and why


def _classes(class_names: Sequence[str]) -> str:
    return f"{class_names[0]}/ and {class_names[1]}/"


def _accepted(class_names: Sequence[str]) -> str:
    return ACCEPTED.format(classes=_classes(class_names))


def check_class_names(class_names: Sequence[str]) -> tuple[str, str]:
    """The two class names (label 0, label 1), distinct whatever their case."""
    names = tuple(str(name).strip() for name in class_names)  # CSV cells are read stripped
    if len(names) != 2 or not all(names):
        raise DataError(
            f"data.class_names must be two names (label 0, label 1), e.g. [female, male]; "
            f"got {list(class_names)}."
        )
    if names[0].casefold() == names[1].casefold() or {"0", "1"} & set(names):
        raise DataError(
            f"data.class_names {list(names)}: the two names must differ in more than case and "
            "not be 0 or 1 (those are accepted as labels anyway)."
        )
    # The models' output is P(label 1), written as p_male and compared with CelebA's Male:
    # [male, female] would silently invert every label, prediction and metric.
    if names[0].casefold() == "male" or names[1].casefold() == "female":
        raise DataError(
            f"data.class_names {list(names)}: label 1 is male (the models predict P(male), as "
            "CelebA's Male attribute), so name the female class first: [female, male] or, "
            "for other folder or label names, [<female name>, <male name>]."
        )
    return names  # type: ignore[return-value]


def _subfolders(root: Path) -> list[str]:
    try:
        with os.scandir(root) as listing:
            return sorted(
                entry.name for entry in listing if not entry.name.startswith(".") and entry.is_dir()
            )
    except OSError as error:
        raise DataError(f"Cannot list {root}: {describe_os_error(error, root)}.") from None


def _class_folders(root: Path, class_names: Sequence[str]) -> dict[int, str]:
    """The subfolder of each class found under ``root`` (label -> folder name), matched
    case-insensitively (FairFace writes Male, LFW-style copies male)."""
    folders: dict[int, str] = {}
    subfolders = _subfolders(root)
    for label, name in enumerate(class_names):
        matches = [folder for folder in subfolders if folder.casefold() == name.casefold()]
        if len(matches) > 1:
            raise DataError(
                f"{root}: {' and '.join(f'{m}/' for m in matches)} both name class '{name}' "
                "(class folders are matched whatever their case). Merge them into one."
            )
        if matches:
            folders[label] = matches[0]
    return folders


def detect_source(
    root: str | Path, source: str = "auto", class_names: Sequence[str] = DEFAULT_CLASS_NAMES
) -> str:
    """Which source ``data.root`` is: ``source`` itself unless 'auto'; for 'auto', a ``.csv``
    file is csv, a folder with CelebA's image folder is celeba, a folder with a class folder is
    image_folder. Anything else: a DataError naming the three layouts."""
    if source not in SOURCES:
        raise DataError(f"Unknown data.source '{source}'; choose one of {', '.join(SOURCES)}.")
    if source != "auto":
        return source
    class_names = check_class_names(class_names)
    path = Path(root).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(
            f"data.root {path} is a file, not a .csv file or a folder. Point data.root at "
            f"{_accepted(class_names)}; a CSV named otherwise: add data.source=csv."
        )
    if not path.is_dir():
        raise DataError(
            f"Dataset root {path} does not exist or is not a folder. Point data.root (or the "
            f"CELEBA_ROOT environment variable) at {_accepted(class_names)}."
        )
    if looks_like_celeba(path):
        return "celeba"
    if _class_folders(path, class_names):
        return "image_folder"
    subfolders = _subfolders(path)
    raise DataError(
        f"No CelebA layout recognised in {path}, nor class folders (its subfolders: "
        f"{', '.join(subfolders[:10]) or 'none'}). Expected {_accepted(class_names)}."
    )


def _image_suffixes() -> frozenset[str]:
    from celeba_gender.data.images import photo_suffixes

    return photo_suffixes()


def _walk(folder: Path) -> Iterator[str]:
    """Relative paths ('/'-separated, sorted) of every non-hidden entry below ``folder`` that
    is not a folder, as torchvision's ImageFolder walks it (symlinked folders followed, each
    folder once, so a link loop ends)."""
    seen: set[tuple[int, int]] = set()

    def visit(directory: Path, prefix: str) -> Iterator[str]:
        try:
            status = directory.stat()
            if (status.st_dev, status.st_ino) in seen:
                return
            seen.add((status.st_dev, status.st_ino))
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            raise DataError(
                f"Cannot list {directory}: {describe_os_error(error, directory)}."
            ) from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows a link; a dangling link or loop is a file: reported
                yield from visit(Path(entry.path), f"{prefix}{entry.name}/")
            else:
                yield f"{prefix}{entry.name}"

    yield from visit(folder, "")


def read_image_folder(
    root: str | Path, class_names: Sequence[str] = DEFAULT_CLASS_NAMES
) -> LabelledFiles:
    """Every image-named file below the class folders of ``root``, labelled by its folder."""
    class_names = check_class_names(class_names)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder (data.source=image_folder).")
    folders = _class_folders(root, class_names)
    missing = [name for label, name in enumerate(class_names) if label not in folders]
    if missing:
        raise DataError(
            f"{root} has no {missing[0]}/ folder: an image folder source has one subfolder per "
            f"class, {class_names[0]}/ (label 0) and {class_names[1]}/ (label 1), any case "
            f"(data.class_names); its subfolders are: {', '.join(_subfolders(root)) or 'none'}."
        )
    suffixes = _image_suffixes()
    rows, other = [], []
    for label, folder in sorted(folders.items()):
        for relative in _walk(root / folder):
            file = f"{folder}/{relative}"
            if Path(relative).suffix.lower() not in suffixes:
                other.append(file)
                continue
            parts = relative.split("/")
            rows.append((file, file, label, parts[0] if len(parts) > 1 else ""))
    ignored = {
        str(root / name): f"not a class folder ({_classes(class_names)}: data.class_names)"
        for name in _subfolders(root)
        if name not in folders.values()
    }
    files = pd.DataFrame(rows, columns=FILE_COLUMNS).astype({"male": "int64"})
    facts = {
        "class_folders": {class_names[label]: str(root / name) for label, name in folders.items()},
        "identity_from": "the first folder below each class folder (<class>/<person>/image)",
        "not_image_names": other,
    }
    return LabelledFiles("image_folder", root, root, files, len(files), [], facts, ignored)


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row of a UTF-8 CSV (BOM and CR line ends
    accepted; a byte that is not UTF-8 is a DataError naming its line)."""
    text = _read_text(path, 0)
    _check_utf8(text)
    reader = csv.reader(io.StringIO(text.raw.decode("utf-8")), strict=True)
    start = 1
    try:
        for fields in reader:
            if any(cell.strip() for cell in fields):
                yield start, [cell.strip() for cell in fields]
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({error}).") from None


def check_csv_columns(columns: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """data.csv_columns over the defaults (path, label, identity): each a column name, identity
    also null (none). The one statement of the rule: the config schema asks it too."""
    chosen = {**DEFAULT_CSV_COLUMNS, **dict(columns or {})}
    unknown = sorted(set(chosen) - set(CSV_KEYS))
    named = all(name is None or (isinstance(name, str) and name) for name in chosen.values())
    if unknown or not named or not chosen["path"] or not chosen["label"]:
        raise DataError(
            f"data.csv_columns {dict(columns or {})}: expected {{path: <column>, label: "
            "<column>, identity: <column> or null}; path and label are required."
        )
    return chosen


def read_csv_source(
    path: str | Path,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    columns: Mapping[str, str | None] | None = None,
) -> LabelledFiles:
    """The rows of a CSV of path,label[,identity] (column names from ``columns``; others
    ignored). A bad label, an empty path, a row of another length or a path listed twice with
    different values: DataError naming the file, line and column. Identical repeated rows: an
    AnnotationWarning, and in the facts. Listed files that do not exist are ``absent``."""
    class_names = check_class_names(class_names)
    columns = check_csv_columns(columns)
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.root {path} is not a file (data.source=csv).")
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(
            f"{path} is empty: expected a header row naming the columns (e.g. "
            "path,label,identity) and one row per image."
        )
    header_line, header = first
    where_names = f"data.csv_columns; its columns are: {', '.join(header)}"
    for key in ("path", "label"):
        if columns[key] not in header:
            if header and _IMAGE_NAME.search(header[0]):
                raise DataError(
                    f"{path} has no header row: line {header_line} is a row "
                    f"({','.join(header[:3])}). Add a first line naming the columns, e.g. "
                    "path,label,identity."
                )
            raise DataError(
                f"{path} has no column '{columns[key]}' for the image {key} ({where_names}). "
                f"Name the column to use: data.csv_columns.{key}=<column>."
            )
    repeated = sorted({name for name in header if header.count(name) > 1} & set(columns.values()))
    if repeated:
        raise DataError(f"{path}: the header (line {header_line}) names {repeated[0]} twice.")
    identity_column = columns["identity"] if columns["identity"] in header else None
    positions = {key: header.index(name) for key, name in columns.items() if name in header}
    labels = {class_names[0].casefold(): 0, "0": 0, class_names[1].casefold(): 1, "1": 1}
    expected = f"{class_names[0]} or {class_names[1]} (any case; data.class_names), or 0 or 1"

    base = path.parent
    seen: dict[str, tuple[int, int, str]] = {}  # file -> (line, label, identity)
    repeats: dict[str, list[int]] = {}
    records, absent = [], []
    listed = 0
    for line, cells in rows:
        listed += 1
        where = f"{path}, line {line}"
        if len(cells) != len(header):
            raise DataError(
                f"{where}: {len(cells)} fields, the header (line {header_line}) has "
                f"{len(header)}. A comma inside a value needs quotes; fix that line."
            )
        written = cells[positions["path"]]
        if not written:
            raise DataError(f"{where}, column '{columns['path']}': no path.")
        cell = cells[positions["label"]]
        label = labels.get(cell.casefold())
        if label is None:
            raise DataError(
                f"{where} ({written}), column '{columns['label']}': '{cell}' is not a label; "
                f"expected {expected}."
            )
        identity = cells[positions["identity"]] if identity_column else ""
        # One key per file however it is written (./a.jpg, a.jpg, /abs/dir/a.jpg).
        absolute = os.path.normpath(os.path.join(base, written))
        file = Path(os.path.relpath(absolute, base)).as_posix()
        if file in seen:
            first_line, first_label, first_identity = seen[file]
            if (first_label, first_identity) != (label, identity):
                what = "labels" if first_label != label else "identities"
                raise DataError(
                    f"{path}: {written} is listed twice with different {what}: line "
                    f"{first_line} and line {line}. Which is right? Remove the wrong line."
                )
            repeats.setdefault(file, [first_line]).append(line)
            continue
        seen[file] = (line, label, identity)
        if not os.path.lexists(absolute):
            absent.append(written)
            continue
        records.append((file, written, label, identity))
    if listed == 0:
        raise DataError(f"{path} has a header (line {header_line}) but no rows.")
    if repeats:
        shown = ", ".join(
            f"{name} (lines {', '.join(str(n) for n in lines)})"
            for name, lines in list(repeats.items())[:3]
        )
        warnings.warn(
            f"{path}: {len(repeats)} image(s) listed more than once with identical values: "
            f"{shown}; each is read once.",
            AnnotationWarning,
            stacklevel=2,
        )
    facts = {
        "file": str(path),
        "rows": listed,
        "columns": {key: columns[key] for key in CSV_KEYS},
        "identity_column": identity_column,
        **_duplicate_facts(repeats),
    }
    files = pd.DataFrame(records, columns=FILE_COLUMNS).astype({"male": "int64"})
    return LabelledFiles("csv", path, base, files, len(seen), absent, facts)


def read_source(
    root: str | Path,
    source: str,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    csv_columns: Mapping[str, str | None] | None = None,
) -> LabelledFiles:
    """Read a non-CelebA source (``detect_source``'s image_folder or csv)."""
    if source == "image_folder":
        return read_image_folder(root, class_names)
    if source == "csv":
        return read_csv_source(root, class_names, csv_columns)
    raise DataError(f"read_source reads image_folder or csv sources, not '{source}'.")


def source_image_dir(
    root: str | Path, source: str = "auto", class_names: Sequence[str] = DEFAULT_CLASS_NAMES
) -> Path:
    """The folder a run's file names (predictions' ``file_name``) are relative to: a CelebA
    copy's image folder, an image folder source's root, a CSV's own folder."""
    kind = detect_source(root, source, class_names)
    if kind == "celeba":
        return detect_layout(root).image_dir
    path = Path(root).expanduser()
    return path.parent if kind == "csv" else path


def source_identities(labelled: LabelledFiles) -> pd.Series:
    """Identity by file name as a run's predictions name it (``listed_as``), for the images
    whose source names one."""
    files = labelled.files[labelled.files["identity"] != ""]
    return pd.Series(files["identity"].to_numpy(), index=files["listed_as"].to_numpy())
