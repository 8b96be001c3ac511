"""Finding a CelebA copy's files (two layouts) and reading its annotation files with pandas."""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from celeba_gender.data.errors import DataError

LABEL_COLUMN = "Male"
NAME_COLUMN = "file_name"

# A copy's duplicate files carry a "(N)" before the extension: "000051(1).jpg".
_COPY_SUFFIX = re.compile(r"^(?P<stem>.+?)\(\d+\)(?P<ext>\.[^.]+)$")
# A file name of an image, as opposed to a header's column name ("file_name", "image_id").
_IMAGE_NAME = re.compile(r"\.(jpe?g|png|webp|bmp|gif|tiff?)$", re.IGNORECASE)


@dataclass(frozen=True)
class DatasetLayout:
    """Where the pieces of one CelebA copy are, and which files were deliberately not used."""

    name: str  # official | study_subset, or a non-CelebA source: image_folder | csv
    root: Path
    image_dir: Path
    attributes_file: Path | None  # None: a source without attributes (image folder, CSV)
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


# The image folders that make a folder a CelebA copy (official, torchvision's download, study).
_CELEBA_IMAGE_DIRS = ("img_align_celeba", "celeba/img_align_celeba", "Images")


def looks_like_celeba(root: str | Path) -> bool:
    """Whether ``root`` has one of CelebA's image folders (``detect_layout`` then reads it)."""
    root = Path(root).expanduser()
    return any((root / folder).is_dir() for folder in _CELEBA_IMAGE_DIRS)


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


# Values a CelebA attribute may take, by the file's encoding.
ATTRIBUTE_VALUES = (-1, 0, 1)  # one file uses 1/-1 (CelebA) or 1/0 (the study), not both
# Duplicate annotation rows named (with their lines) in the report; the rest are counted.
LISTED_DUPLICATES = 20


class AnnotationWarning(UserWarning):
    """An annotation file has something odd that does not stop reading it (identical
    duplicate rows, a count line that disagrees): it is also in the data report."""


@dataclass
class _Text:
    """An annotation file's bytes (UTF-8 checked, BOM dropped, line ends made LF) and where
    its data rows start."""

    path: Path
    raw: bytes
    head: list[tuple[int, list[str]]]  # the first non-blank lines: (line number, tokens)
    offsets: list[int]  # the byte offset just after each of ``head``'s lines


def _tokens(line: str) -> list[str]:
    """A line's fields as pandas' whitespace separator sees them: split at spaces and tabs."""
    return [token for token in line.replace("\t", " ").split(" ") if token]


def _read_text(path: Path, head_lines: int) -> _Text:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"Cannot read {path}: {error.strerror or error}.") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise DataError(f"{path}, line {line}: a NUL byte; this is not a plain text file.")
    text = _Text(path, raw, [], [])
    head, offsets = text.head, text.offsets
    position, number = 0, 0
    while position < len(raw) and len(head) < head_lines:
        end = raw.find(b"\n", position)
        end = len(raw) if end < 0 else end
        number += 1
        tokens = _tokens(_decode_line(text, raw[position:end]))
        if tokens:
            head.append((number, tokens))
            offsets.append(end + 1)
        position = end + 1
    return text


def _check_utf8(text: _Text) -> None:
    """DataError naming the line of the first byte that is not UTF-8 (checked only when
    something failed: pandas reads valid files faster without it)."""
    try:
        text.raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = text.raw.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{text.path}, line {line}: not UTF-8 text (byte {text.raw[error.start]:#04x}). Is "
            "this the right file? Re-download it or save it as plain text."
        ) from None


def _decode_line(text: _Text, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        _check_utf8(text)
        raise


def _data_lines(text: _Text, start: int, first_line: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, tokens) of every non-blank line from byte ``start`` (line ``first_line``)."""
    _check_utf8(text)
    for number, line in enumerate(text.raw[start:].split(b"\n"), start=first_line):
        tokens = _tokens(line.decode("utf-8"))
        if tokens:
            yield number, tokens


def _check_token(token: str, allowed: tuple[int, ...] | None) -> str | None:
    """Why ``token`` is not a valid value (None: it is)."""
    try:
        value = int(token)
    except ValueError:
        kind = _number_kind(token)
        return f"'{token}' is {kind}; expected {_expected(allowed)}"
    if token != str(value):  # "+1", "01", "-0", "1_0", non-ASCII digits: not as written
        return f"'{token}' is not written plainly (as {value}); expected {_expected(allowed)}"
    if allowed is not None and value not in allowed:
        return f"{token} is not allowed; expected {_expected(allowed)}"
    if not -(2**63) <= value < 2**63:
        return f"{token} is too large"
    return None


def _expected(allowed: tuple[int, ...] | None) -> str:
    if allowed is None:
        return "a whole number"
    if allowed == ATTRIBUTE_VALUES:
        return "1 or -1 (1 or 0 in the study's edited files)"
    return " or ".join(str(value) for value in allowed)


def _number_kind(token: str) -> str:
    """What a token that ``int`` refuses is: a fraction (0.5), a whole number written otherwise
    (1.0, 1e0), or no number at all."""
    try:
        value = float(token)
    except ValueError:
        return "not a whole number"
    if not math.isfinite(value):
        return "not a whole number"
    return "not written as a whole number" if value.is_integer() else "a fraction"


def _may_have_unplain_numbers(body: bytes) -> bool:
    """Whether a value may be written otherwise than plainly: a sign "+", "-0" or a leading
    zero ("01"), which pandas reads as the plain number. A name with such characters makes
    this True too: the slow path then checks each value (about 60 ms for the full CelebA
    file, against seconds for a Python loop)."""
    if not body:
        return False
    data = np.frombuffer(body, dtype=np.uint8)
    zero_next = data[1:] == ord("0")
    if (data == ord("+")).any() or ((data[:-1] == ord("-")) & zero_next).any():
        return True
    blank = (data[:-2] == ord(" ")) | (data[:-2] == ord("\t"))
    digit = (data[2:] >= ord("0")) & (data[2:] <= ord("9"))
    return bool((blank & zero_next[:-1] & digit).any())


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _locate_problem(
    text: _Text,
    start: int,
    first_line: int,
    names: list[str],
    allowed: Callable[[str], tuple[int, ...] | None],
    what: str,
    one_encoding: bool = False,
) -> None:
    """Find the first bad line of a file the fast path found wrong, and raise a DataError
    naming the file, the line and the column. Returns if none is found."""
    seen: dict[int, tuple[int, str]] = {}  # value -> first (line, column), for mixed encodings
    for number, tokens in _data_lines(text, start, first_line):
        where = f"{text.path}, line {number}"
        if len(tokens) < len(names):
            raise DataError(
                f"{where}: no value for column '{names[len(tokens)]}': the line has "
                f"{len(tokens)} fields, the header announces {len(names)} ({what}). A truncated "
                "download or an empty field? Re-download or fix that file."
            )
        if len(tokens) > len(names):
            raise DataError(
                f"{where}: {len(tokens)} fields, {len(tokens) - len(names)} more than the "
                f"header's {len(names)} ({what}; the last column is '{names[-1]}'). A name "
                "with a space, or a stray value? Fix that file."
            )
        for column, token in zip(names[1:], tokens[1:], strict=True):
            problem = _check_token(token, allowed(column))
            if problem:
                raise DataError(f"{where} ({tokens[0]}), column '{column}': {problem}.")
            if one_encoding:
                seen.setdefault(int(token), (number, column))
    if -1 in seen and 0 in seen:
        (zero_line, zero_column), (minus_line, minus_column) = seen[0], seen[-1]
        raise DataError(
            f"{text.path} mixes the 1/-1 and 1/0 encodings: 0 on line {zero_line} (column "
            f"'{zero_column}') and -1 on line {minus_line} (column '{minus_column}'). CelebA "
            "uses 1/-1; the study's edited files use 1/0. Fix the file to use one."
        )


def _parse(
    text: _Text,
    start: int,
    first_line: int,
    names: list[str],
    allowed: Callable[[str], tuple[int, ...] | None],
    what: str,
) -> pd.DataFrame:
    """The rows from byte ``start`` as a frame of ``names`` (file name, then int64 values),
    checked cell by cell without a Python loop over rows. Any problem: DataError naming the
    file, the line and the column."""
    problem = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.BytesIO(text.raw[start:]),
                sep=r"\s+",
                header=None,
                names=names,
                index_col=False,
                dtype={NAME_COLUMN: str},
                na_filter=False,  # "NA", "nan" or a missing field: text, found below
                quoting=csv.QUOTE_NONE,
                skip_blank_lines=True,
                encoding="utf-8",
            )
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError, OverflowError) as error:
        frame, problem = None, str(error).strip()
    if frame is not None and frame.empty:
        return frame.astype({column: "int64" for column in names[1:]})
    if frame is not None:
        for column in names[1:]:
            values = frame[column]
            valid = allowed(column)
            if values.dtype != np.int64 or (
                valid is not None and not np.isin(values.to_numpy(), valid).all()
            ):
                problem = f"column '{column}'"
                break
    if problem is not None or frame is None:
        _locate_problem(text, start, first_line, names, allowed, what)
        raise DataError(f"Cannot parse {text.path}: {problem}. Fix or re-download that file.")
    if _may_have_unplain_numbers(text.raw[start:]):
        _locate_problem(text, start, first_line, names, allowed, what)
    return frame


def _duplicates(
    text: _Text, start: int, first_line: int, frame: pd.DataFrame, what: str
) -> dict[str, list[int]]:
    """Lines of the names listed more than once. Different values: DataError naming the file,
    the two lines and the image; identical: an AnnotationWarning, and returned for the report."""
    repeated = frame[NAME_COLUMN].duplicated(keep=False)
    if not repeated.any():
        return {}
    names = set(frame.loc[repeated, NAME_COLUMN])
    lines: dict[str, list[tuple[int, list[str]]]] = {}
    for number, tokens in _data_lines(text, start, first_line):
        if tokens[0] in names:
            lines.setdefault(tokens[0], []).append((number, tokens))
    for name, occurrences in lines.items():
        first_number, first_tokens = occurrences[0]
        for number, tokens in occurrences[1:]:
            if [int(t) for t in tokens[1:]] != [int(t) for t in first_tokens[1:]]:
                raise DataError(
                    f"{text.path}: {name} is listed twice with different {what}: line "
                    f"{first_number} and line {number}. Which is right? Remove the wrong line."
                )
    duplicates = {
        name: [number for number, _ in occurrences] for name, occurrences in lines.items()
    }
    listed = ", ".join(
        f"{name} (lines {', '.join(str(n) for n in numbers)})"
        for name, numbers in list(duplicates.items())[:3]
    )
    more = f" and {len(duplicates) - 3} more" if len(duplicates) > 3 else ""
    warnings.warn(
        f"{text.path}: {len(duplicates)} image(s) listed more than once with identical "
        f"values: {listed}{more}; each is read once.",
        AnnotationWarning,
        stacklevel=3,
    )
    return duplicates


def _duplicate_facts(duplicates: dict[str, list[int]]) -> dict:
    return {
        "duplicate_rows": sorted(duplicates),
        "duplicate_lines": {
            name: duplicates[name] for name in sorted(duplicates)[:LISTED_DUPLICATES]
        },
    }


def read_attributes(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a CelebA attribute file into a frame indexed by file name, values 0/1 (int8).

    Accepts the official format (count line, then the 40 names, then rows of name + 1/-1),
    the same without the count line, a header that names the file column (``file_name ...``),
    CRLF, CR or LF endings, a UTF-8 BOM, and 1/-1 or (the study's edited files) 1/0 values.
    Anything else is a DataError naming the file, the line and the column: a fraction (0.5),
    another number (2), text, a missing or extra field, both encodings in one file, an image
    listed twice with different values. An image listed twice with the same values is an
    AnnotationWarning (and in the facts). Returns the frame and facts for the report.
    """
    path = Path(path)
    text = _read_text(path, 3)
    head = [tokens for _, tokens in text.head]
    if len(head) < 2:
        raise DataError(f"{path} has no data rows: expected a header line and one row per image.")
    declared_count = None
    header_at = 0
    if len(head[0]) == 1 and head[0][0].isascii() and head[0][0].isdigit():
        declared_count = int(head[0][0])
        header_at = 1
    if len(head) < header_at + 2:
        raise DataError(f"{path} has a header but no data rows.")
    header, first_row = head[header_at], head[header_at + 1]
    if len(header) == len(first_row) - 1:
        names = [NAME_COLUMN, *header]
    elif len(header) == len(first_row):
        names = [NAME_COLUMN, *header[1:]]
    else:
        raise DataError(
            f"{path}: the header (line {text.head[header_at][0]}) names {len(header)} columns "
            f"but the first row (line {text.head[header_at + 1][0]}) has {len(first_row)}. "
            "Expected one column per attribute plus the file name."
        )
    if LABEL_COLUMN not in names:
        raise DataError(f"{path} has no '{LABEL_COLUMN}' column; its header is: {' '.join(header)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names column(s) {', '.join(repeated)} twice.")

    start, first_line = text.offsets[header_at], text.head[header_at][0] + 1
    frame = _parse(
        text, start, first_line, names, lambda _: ATTRIBUTE_VALUES, "file name + attributes"
    )
    values = frame[names[1:]].to_numpy()
    has_minus, has_zero = bool((values == -1).any()), bool((values == 0).any())
    if has_minus and has_zero:
        _locate_problem(text, start, first_line, names, lambda _: ATTRIBUTE_VALUES, "", True)
    duplicates = _duplicates(text, start, first_line, frame, "attribute values")
    attributes = pd.DataFrame(
        (values > 0).astype("int8"),
        columns=names[1:],
        index=pd.Index(frame[NAME_COLUMN].astype(str), name=NAME_COLUMN),
    )
    attributes = attributes[~attributes.index.duplicated()]
    facts = {
        "file": str(path),
        "rows": int(len(attributes)),
        "declared_count": declared_count,
        "encoding": "1/-1" if has_minus else "1/0",
        **_duplicate_facts(duplicates),
    }
    if declared_count is not None and declared_count != len(frame):
        facts["count_mismatch"] = f"first line says {declared_count}, found {len(frame)} rows"
    return attributes, facts


def read_name_value_table(
    path: str | Path, value_column: str, allowed: tuple[int, ...] | None = None
) -> tuple[pd.Series, dict]:
    """Read a two-column ``file_name value`` file (identity or partition) into an int Series,
    and facts for the report. Values must be whole numbers (one of ``allowed`` if given); an
    optional header row is skipped. Problems are DataErrors naming the file, line and column;
    identical duplicate rows an AnnotationWarning."""
    path = Path(path)
    text = _read_text(path, 1)
    if not text.head:
        raise DataError(f"{path} is empty: expected one '<file> <{value_column}>' row per image.")
    (line, tokens), offset = text.head[0], text.offsets[0]
    # Tolerate a header row ("file_name identity") as some re-distributions add one; a first
    # line naming an image ("000001.jpg O", "000001.jpg") is a row, checked like the others.
    headed = len(tokens) >= 2 and not _is_number(tokens[-1]) and not _IMAGE_NAME.search(tokens[0])
    start, first_line = (offset, line + 1) if headed else (0, 1)
    names = [NAME_COLUMN, value_column]
    frame = _parse(text, start, first_line, names, lambda _: allowed, f"file name + {value_column}")
    duplicates = _duplicates(text, start, first_line, frame, f"{value_column} values")
    series = pd.Series(
        frame[value_column].to_numpy(), index=frame[NAME_COLUMN].astype(str), name=value_column
    )
    facts = {"file": str(path), "rows": int(len(series)), **_duplicate_facts(duplicates)}
    return series[~series.index.duplicated()], facts


def read_name_value_file(
    path: str | Path, value_column: str, allowed: tuple[int, ...] | None = None
) -> pd.Series:
    """``read_name_value_table``'s series alone."""
    return read_name_value_table(path, value_column, allowed)[0]
