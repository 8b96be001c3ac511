"""From a CelebA folder (or an image folder or CSV source) to one table of usable, unique,
labelled images, and what was left out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from celeba_gender.data.annotations import (
    LABEL_COLUMN,
    NAME_COLUMN,
    DatasetLayout,
    canonical_name,
    detect_layout,
    read_attributes,
    read_name_value_table,
)
from celeba_gender.data.errors import DataError
from celeba_gender.data.scan import cache_content_ids, scan_image_folder
from celeba_gender.data.sources import (
    DEFAULT_CLASS_NAMES,
    LabelledFiles,
    check_class_names,
    detect_source,
    read_source,
)

IMAGE_EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
MISSING = -1  # identity / partition of an image its file does not list
PARTITION_VALUES = (0, 1, 2)  # list_eval_partition.txt: train, val, test


def _annotation_warnings(facts: dict) -> list[str]:
    """What an annotation file's facts hold that a person should know, one sentence each:
    images listed more than once (identical rows, each read once), a count line that
    disagrees with the rows."""
    lines = []
    shown = facts.get("duplicate_lines", {})
    for name, numbers in shown.items():
        lines.append(
            f"{facts['file']}: {name} is listed {len(numbers)} times with identical values "
            f"(lines {', '.join(str(n) for n in numbers)}); read once"
        )
    more = len(facts.get("duplicate_rows", [])) - len(shown)
    if more > 0:
        lines.append(f"{facts['file']}: {more} more images listed more than once (see the JSON)")
    if facts.get("count_mismatch"):
        lines.append(f"{facts['file']}: {facts['count_mismatch']}")
    return lines


@dataclass
class CelebAIndex:
    """``images``: one row per usable unique image, in file-name order, with columns
    ``file_name`` (annotation name), ``file`` (name on disk), ``male`` (0/1), ``identity``,
    ``partition``, ``fingerprint`` (name:size:sha1), ``cache_row`` (its row in the decoded-image
    cache) and every attribute (0/1). ``attributes``: the attribute files' column names other
    than the label. ``report``: what was found and dropped. ``cache_files`` and
    ``cache_content``: every scanned entry in cache row order and what keys its row (""
    leaves it zero; ``ImageTensorCache.build_or_open``).
    """

    layout: DatasetLayout
    images: pd.DataFrame
    report: dict = field(default_factory=dict)
    attributes: list[str] = field(default_factory=list)
    cache_files: list[str] = field(default_factory=list)
    cache_content: list[str] = field(default_factory=list)

    def paths(self) -> list[Path]:
        return [self.layout.image_dir / name for name in self.images["file"]]


def _deduplicate(
    usable: pd.DataFrame, name_of: Callable[[str], str] = canonical_name
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Keep one file per annotation name (``name_of`` a file) and per content; say what each
    dropped file copies."""
    usable = usable.assign(
        file_name=usable["file"].map(name_of),
        is_copy_name=lambda frame: frame["file"] != frame["file_name"],
    ).sort_values(["file_name", "is_copy_name", "file"], ignore_index=True)
    duplicates: dict[str, str] = {}

    same_name = usable.duplicated("file_name", keep="first")
    kept_by_name = usable.drop_duplicates("file_name", keep="first").set_index("file_name")
    for row in usable[same_name].itertuples():
        original = kept_by_name.loc[row.file_name]
        how = "same bytes" if original["sha1"] == row.sha1 else "different bytes, same name"
        duplicates[row.file] = f"copy of {original['file']} ({how})"
    usable = usable[~same_name]

    same_bytes = usable.duplicated("sha1", keep="first")
    kept_by_hash = usable.drop_duplicates("sha1", keep="first").set_index("sha1")
    for row in usable[same_bytes].itertuples():
        duplicates[row.file] = f"copy of {kept_by_hash.loc[row.sha1, 'file']} (same bytes)"
    return usable[~same_bytes].drop(columns="is_copy_name"), duplicates


def _image_facts(scan: pd.DataFrame, frame: pd.DataFrame) -> dict:
    """The report's facts about the images themselves: formats their names belie, modes
    converted to RGB, sizes."""
    registered = Image.registered_extensions()
    extension_format = scan["file"].map(
        lambda name: (
            IMAGE_EXTENSIONS.get(Path(name).suffix.lower())
            or registered.get(Path(name).suffix.lower())
        )
    )
    mismatched = scan[(scan["format"] != "") & (extension_format != scan["format"])]
    return {
        "format_differs_from_extension": {row.file: row.format for row in mismatched.itertuples()},
        "converted_to_rgb": {
            str(mode): int(count)
            for mode, count in frame.loc[frame["mode"] != "RGB", "mode"].value_counts().items()
        },
        "image_sizes": {
            f"{w}x{h}": int(n) for (w, h), n in frame.groupby(["width", "height"]).size().items()
        },
    }


def _fingerprints(frame: pd.DataFrame) -> pd.Series:
    """name:size:sha1 of each image: what identifies its content, wherever the copy lives."""
    return frame["file"] + ":" + frame["size"].astype(str) + ":" + frame["sha1"]


def build_index(
    root: str | Path,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    tensor_size: tuple[int, int] | None = None,
    source: str = "auto",
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    csv_columns: Mapping[str, str | None] | None = None,
) -> CelebAIndex:
    """Read annotations, check every image once (cached), drop duplicates and broken files.

    ``tensor_size`` (height, width): the run will want a decoded-image cache of that size, so
    files the scan must check fill it in the same pass (``scan_image_folder``).
    ``source`` (``sources.SOURCES``) says what ``root`` is; 'auto' tells a CelebA copy, a
    folder of class folders and a CSV apart. ``class_names`` and ``csv_columns`` are the
    image folder and CSV sources' settings (see ``sources``)."""
    kind = detect_source(root, source, class_names)
    if kind != "celeba":
        labelled = read_source(root, kind, class_names, csv_columns)
        return _build_source_index(
            labelled, check_class_names(class_names), cache_dir, workers, tensor_size
        )
    layout = detect_layout(root)
    attributes, attribute_facts = read_attributes(layout.attributes_file)
    scan, scan_facts = scan_image_folder(layout.image_dir, cache_dir, workers, tensor_size)
    scan["cache_row"] = range(len(scan))

    problems = scan[scan["problem"] != ""]
    usable, duplicates = _deduplicate(scan[scan["problem"] == ""])
    listed = usable["file_name"].isin(attributes.index)
    unannotated = sorted(usable.loc[~listed, "file"])
    usable = usable[listed]

    frame = usable[
        ["file_name", "file", "size", "sha1", "cache_row", "mode", "format", "width", "height"]
    ]
    frame = frame.join(attributes, on="file_name").rename(columns={LABEL_COLUMN: "male"})
    annotation_warnings = _annotation_warnings(attribute_facts)
    for column, path, allowed in (
        ("identity", layout.identity_file, None),
        ("partition", layout.partition_file, PARTITION_VALUES),
    ):
        if path is None:
            frame[column] = MISSING
        else:
            values, facts = read_name_value_table(path, column, allowed)
            annotation_warnings += _annotation_warnings(facts)
            frame[column] = frame["file_name"].map(values).fillna(MISSING).astype("int64")
    frame["fingerprint"] = _fingerprints(frame)
    frame = frame.sort_values("file_name", ignore_index=True)

    if frame.empty:
        raise DataError(
            f"No usable labelled images in {layout.image_dir}: {len(scan)} files found, "
            f"{len(problems)} unreadable, {len(unannotated)} not listed in "
            f"{layout.attributes_file}. Check that data.root points at the right copy."
        )

    present_names = set(scan["file"].map(canonical_name)) & set(attributes.index)
    report = {
        "root": str(layout.root),
        "layout": layout.name,
        "image_dir": str(layout.image_dir),
        "annotation_files": {
            "attributes": attribute_facts,
            "identity": str(layout.identity_file) if layout.identity_file else None,
            "partition": str(layout.partition_file) if layout.partition_file else None,
        },
        "ignored_files": layout.ignored_files,
        "annotation_warnings": annotation_warnings,
        "files_in_folder": int(len(scan)),
        "images_listed": int(len(attributes)),
        "images_present": len(present_names),
        "listed_but_absent": int(len(attributes) - len(present_names)),
        "images_usable": int(len(frame)),
        "duplicates": dict(sorted(duplicates.items())),
        "unreadable": dict(zip(problems["file"], problems["problem"], strict=True)),
        "unannotated_files": unannotated,
        **_image_facts(scan, frame),
        "without_identity": int((frame["identity"] == MISSING).sum())
        if layout.identity_file
        else None,
        "without_partition": int((frame["partition"] == MISSING).sum())
        if layout.partition_file
        else None,
        "scan": scan_facts,
    }
    return CelebAIndex(
        layout=layout,
        images=frame.drop(columns=["size", "sha1"]),
        report=report,
        attributes=[name for name in attributes.columns if name != LABEL_COLUMN],
        cache_files=scan["file"].tolist(),
        cache_content=cache_content_ids(scan),
    )


def _conflicting_labels(usable: pd.DataFrame, class_names: Sequence[str]) -> dict[str, str]:
    """Files whose bytes are also another file's with the other label: which label is right
    cannot be known, so every copy is left out (file -> why)."""
    labels = usable.groupby("sha1")["male"].transform("nunique")
    conflicting = usable[labels > 1]
    why = {}
    for _, group in conflicting.groupby("sha1"):
        for row in group.itertuples():
            others = [
                f"{other.file} ({class_names[other.male]})"
                for other in group.itertuples()
                if other.file != row.file
            ]
            why[row.file] = (
                f"labelled {class_names[row.male]}, same bytes as {', '.join(others)}: "
                "every copy left out"
            )
    return why


def _identity_codes(identities: pd.Series, listed: pd.Series) -> pd.Series:
    """Identity texts as ints (numbered in the sorted order of every identity ``listed``, so
    dropping a file renumbers nothing); '' (unknown) is MISSING."""
    codes = {name: code for code, name in enumerate(sorted(set(listed) - {""}))}
    return identities.map(codes).fillna(MISSING).astype("int64")


def _build_source_index(
    labelled: LabelledFiles,
    class_names: Sequence[str],
    cache_dir: str | Path | None,
    workers: int | None,
    tensor_size: tuple[int, int] | None = None,
) -> CelebAIndex:
    """``build_index`` for an image folder or CSV source: check the listed files, drop broken
    ones, byte-identical copies, and copies labelled both ways."""
    files = labelled.files
    scan, scan_facts = scan_image_folder(
        labelled.image_dir, cache_dir, workers, tensor_size, names=files["file"].tolist()
    )
    scan["cache_row"] = range(len(scan))
    problems = scan[scan["problem"] != ""]
    usable = scan[scan["problem"] == ""].merge(files, on="file")
    conflicting = _conflicting_labels(usable, class_names)
    usable, duplicates = _deduplicate(usable[~usable["file"].isin(conflicting)], name_of=str)

    frame = usable[
        ["file", "listed_as", "male", "identity", "size", "sha1", "cache_row", "mode", "format"]
        + ["width", "height"]
    ]
    frame = frame.assign(
        file_name=frame["listed_as"],  # predictions name files as the source lists them
        identity=_identity_codes(frame["identity"], files["identity"]),
        partition=MISSING,
        fingerprint=_fingerprints(frame),
    ).drop(columns="listed_as")
    frame = frame.sort_values("file_name", ignore_index=True)
    if frame.empty:
        raise DataError(
            f"No usable labelled images in {labelled.root} ({labelled.source}): "
            f"{labelled.listed} listed, {len(labelled.absent)} absent, {len(problems)} "
            f"unreadable, {len(conflicting)} labelled both ways. Check data.root and "
            "data.class_names."
        )
    has_identities = bool(files["identity"].ne("").any())
    layout = DatasetLayout(
        name=labelled.source,
        root=labelled.root,
        image_dir=labelled.image_dir,
        attributes_file=None,
        identity_file=labelled.root if labelled.source == "csv" and has_identities else None,
        partition_file=None,
        ignored_files=labelled.ignored,
    )
    report = {
        "root": str(labelled.root),
        "layout": labelled.source,
        "image_dir": str(labelled.image_dir),
        "annotation_files": {"labels": labelled.facts},
        "ignored_files": labelled.ignored,
        "annotation_warnings": _annotation_warnings(labelled.facts),
        "files_in_folder": int(len(scan)),
        "images_listed": int(labelled.listed),
        "images_present": int(labelled.listed - len(labelled.absent)),
        "listed_but_absent": len(labelled.absent),
        "absent_files": labelled.absent,
        "images_usable": int(len(frame)),
        "duplicates": dict(sorted(duplicates.items())),
        "conflicting_labels": dict(sorted(conflicting.items())),
        "unreadable": dict(zip(problems["file"], problems["problem"], strict=True)),
        "unannotated_files": [],
        **_image_facts(scan, frame),
        "without_identity": int((frame["identity"] == MISSING).sum()),
        "without_partition": None,
        "scan": scan_facts,
    }
    return CelebAIndex(
        layout=layout,
        images=frame.drop(columns=["size", "sha1"]),
        report=report,
        cache_files=scan["file"].tolist(),
        cache_content=cache_content_ids(scan),
    )


__all__ = ["CelebAIndex", "build_index", "MISSING", "NAME_COLUMN"]
