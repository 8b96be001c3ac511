"""The predict job: photos in, one row per face out (CSV and JSON), plus pictures.

Photos stream through in batches of ``batch_size``: read, find faces, classify, write their
rows and their annotated copies, then let them go, so memory stays bounded for any number of
photos. The CSV is flushed after each photo (a stopped run keeps the rows it wrote); the JSON
appears, complete, at the end. The gallery keeps small copies of the first
``gallery_max_photos`` photos only. A photo that cannot be read gets a row with its error and
the job goes on; a photo with no face gets a row that says so.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from celeba_gender.data import DataError
from celeba_gender.data.cache import atomic_output
from celeba_gender.inference.faces import DetectorUnavailable, Face, FaceAligner
from celeba_gender.inference.photos import PHOTO_SUFFIXES, PhotoError, expand_inputs, load_photo
from celeba_gender.inference.predictor import GenderPredictor

log = logging.getLogger(__name__)
COLUMNS = (
    "photo",
    "face",
    "status",
    "x1",
    "y1",
    "x2",
    "y2",
    "detector_score",
    "p_male",
    "label",
    "error",
    "annotated",  # the photo's annotated copy, relative to the output folder (annotate=true)
)
GALLERY_CELL = (3.2, 3.4)  # inches per photo in the gallery, drawn at GALLERY_DPI
GALLERY_DPI = 100


@dataclass
class PhotoResult:
    path: Path
    photo: Image.Image | None  # None when it could not be read
    rows: list[dict[str, Any]]  # one per face, or one saying "no_face" or "error"


def label_of(p_male: float, threshold: float) -> str:
    return "male" if p_male > threshold else "female"


def predict_photos(
    paths: Iterable[Path],
    predictor: GenderPredictor,
    aligner: FaceAligner | None,
    threshold: float = 0.5,
    max_pixels: int = 50_000_000,
) -> Iterator[PhotoResult]:
    """Each photo with its rows, in input order; faces are classified ``predictor.batch_size``
    photos at a time, and at most that many photos are held at once."""
    batch: list[tuple[PhotoResult, list[Image.Image]]] = []
    for path in paths:
        batch.append(_find_faces(path, aligner, max_pixels))
        if len(batch) >= predictor.batch_size:
            yield from _classify(batch, predictor, threshold)
            batch = []
    yield from _classify(batch, predictor, threshold)


def _find_faces(
    path: Path, aligner: FaceAligner | None, max_pixels: int
) -> tuple[PhotoResult, list[Image.Image]]:
    """The photo with one row per face found, and the faces' aligned crops."""
    try:
        photo = load_photo(path, max_pixels)
    except PhotoError as error:
        log.warning("%s", error)
        row = {"photo": str(path), "status": "error", "error": str(error)}
        return PhotoResult(path, None, [row]), []
    if aligner is None:  # already an aligned crop: the whole photo is the face
        width, height = photo.size
        faces = [Face((0.0, 0.0, float(width), float(height)), 1.0, np.zeros((5, 2)), photo)]
    else:
        faces = aligner.find(photo)
    rows = [
        {"photo": str(path), "face": number, "status": "ok", "detector_score": face.score}
        | dict(zip(("x1", "y1", "x2", "y2"), face.box, strict=True))
        for number, face in enumerate(faces)
    ]
    if not faces:
        rows = [{"photo": str(path), "status": "no_face", "error": "no face found"}]
    return PhotoResult(path, photo, rows), [face.crop for face in faces]


def _classify(
    batch: list[tuple[PhotoResult, list[Image.Image]]], predictor: GenderPredictor, threshold: float
) -> Iterator[PhotoResult]:
    probabilities = iter(predictor.predict([crop for _, crops in batch for crop in crops]))
    for result, _ in batch:
        for row in result.rows:
            if row["status"] == "ok":
                row["p_male"] = float(next(probabilities))
                row["label"] = label_of(row["p_male"], threshold)
        yield result


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A distinct, readable file name for each photo's pictures: its path below the inputs'
    common folder, folders joined by '__' (``two/a.jpg`` -> ``two__a.jpg``), so that ``a.jpg``
    and ``a.png``, or ``a.jpg`` in two folders, never overwrite each other. A name already taken
    (ignoring case, as some file systems do) gets a short hash of the photo's full path."""
    absolute = [Path(os.path.abspath(path)) for path in paths]  # without any '..'
    root = Path(os.path.commonpath([path.parent for path in absolute])) if paths else Path()
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for path, full in zip(paths, absolute, strict=True):
        name = "__".join(full.relative_to(root).parts)
        if Path(name).suffix.lower() not in PHOTO_SUFFIXES:  # a glob may match other files
            name += ".png"
        if name.casefold() in taken:
            stem, suffix = os.path.splitext(name)
            name = f"{stem}-{hashlib.sha1(str(full).encode()).hexdigest()[:8]}{suffix}"
        taken.add(name.casefold())
        names[path] = name
    return names


def annotate(photo: Image.Image, rows: Iterable[Mapping[str, Any]]) -> Image.Image:
    """The photo with each face's box, label and P(male) drawn on it."""
    canvas = photo.copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 300))
    for row in rows:
        if row["status"] != "ok":
            continue
        colour = (40, 120, 255) if row["label"] == "male" else (255, 60, 140)
        draw.rectangle((row["x1"], row["y1"], row["x2"], row["y2"]), outline=colour, width=line)
        text = f"{row['label']} {row['p_male']:.2f}"
        size = max(12, round((row["x2"] - row["x1"]) / 6))
        draw.text((row["x1"], max(0, row["y1"] - size - 2)), text, fill=colour, font_size=size)
    return canvas


def thumbnail(photo: Image.Image, rows: Iterable[Mapping[str, Any]]) -> Image.Image:
    """The annotated photo, small enough for a gallery cell (at twice its pixels)."""
    small = annotate(photo, rows)
    side = 2 * GALLERY_DPI * max(GALLERY_CELL)
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return small


def gallery(
    entries: Sequence[tuple[str, Image.Image | None, list[dict[str, Any]]]], columns: int = 4
) -> Figure:
    """A grid of (name, thumbnail or None, rows), titled with their labels (a person can look)."""
    count = max(len(entries), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(GALLERY_CELL[0] * columns, GALLERY_CELL[1] * rows))
    axes_grid = np.atleast_1d(figure.subplots(rows, columns)).reshape(rows, columns)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, (name, picture, own) in zip(axes_grid.flat, entries, strict=False):
        if picture is not None:
            axes.imshow(picture)
        faces = [row for row in own if row["status"] == "ok"]
        summary = (
            ", ".join(f"{row['label']} {row['p_male']:.2f}" for row in faces)
            if faces
            else own[0]["status"].replace("_", " ")
        )
        axes.set_title(f"{name}\n{summary}", fontsize=8)
    figure.tight_layout()
    return figure


def predict(cfg: DictConfig) -> Counter[str]:
    """Write predictions.csv/.json (and the pictures) for ``cfg.input``; the rows' statuses."""
    output_dir = Path(cfg.paths.output_dir)
    predictor = GenderPredictor.load(cfg.ckpt_path, cfg.device, cfg.batch_size)
    aligner = FaceAligner.from_config(cfg.alignment, cfg.device) if cfg.detect else None
    paths = expand_inputs(
        OmegaConf.to_container(cfg.input) if OmegaConf.is_list(cfg.input) else cfg.input
    )
    if not paths:
        raise DataError(f"input={cfg.input} matches no photo (.jpg, .jpeg, .png, .webp).")
    names = output_names(paths)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.annotate:
        (output_dir / "annotated").mkdir(exist_ok=True)
    shown: list[tuple[str, Image.Image | None, list[dict[str, Any]]]] = []  # the gallery's
    counts: Counter[str] = Counter()
    with (
        open(output_dir / "predictions.csv", "w", newline="") as table,
        atomic_output(output_dir / "predictions.json") as records,
    ):
        writer = csv.DictWriter(table, COLUMNS)
        writer.writeheader()
        table.flush()
        records.write(b"[")
        separator = b"\n  "
        for result in predict_photos(paths, predictor, aligner, cfg.threshold, cfg.max_pixels):
            name = names[result.path]
            if cfg.annotate and result.photo is not None:
                copy = annotate(result.photo, result.rows)
                copy.save(output_dir / "annotated" / name, quality=95)  # in the photo's format
                for row in result.rows:
                    row["annotated"] = f"annotated/{name}"
            if cfg.gallery and len(shown) < cfg.gallery_max_photos:
                picture = None if result.photo is None else thumbnail(result.photo, result.rows)
                shown.append((name, picture, result.rows))
            writer.writerows(result.rows)
            table.flush()
            for row in result.rows:
                records.write(separator + json.dumps({c: row.get(c) for c in COLUMNS}).encode())
                separator = b",\n  "
            counts.update(row["status"] for row in result.rows)
        records.write(b"\n]\n")
    if cfg.gallery:
        if len(paths) > len(shown):
            log.info("gallery.png shows the first %d of %d photos", len(shown), len(paths))
        figure = gallery(shown, cfg.gallery_columns)
        figure.savefig(output_dir / "gallery.png", dpi=GALLERY_DPI)
    log.info("%d photos: %s -> %s", len(paths), dict(counts), output_dir / "predictions.csv")
    return counts


def run_prediction(cfg: DictConfig) -> None:
    """predict with a user's mistake (bad path, missing detector) ending in one clear line."""
    try:
        predict(cfg)
    except (DataError, DetectorUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
