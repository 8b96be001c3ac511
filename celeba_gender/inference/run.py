"""The predict job: photos in, one row per face out (CSV and JSON), plus pictures.

A photo that cannot be read gets a row with its error and the job goes on; a photo with no
face gets a row that says so. Nothing already written is lost: the tables are written once,
at the end, atomically.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from celeba_gender.data import DataError
from celeba_gender.data.cache import atomic_write
from celeba_gender.inference.faces import DetectorUnavailable, Face, FaceAligner
from celeba_gender.inference.photos import PhotoError, expand_inputs, load_photo
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
)


def label_of(p_male: float, threshold: float) -> str:
    return "male" if p_male > threshold else "female"


def predict_photos(
    paths: list[Path],
    predictor: GenderPredictor,
    aligner: FaceAligner | None,
    threshold: float = 0.5,
    max_pixels: int = 50_000_000,
) -> tuple[pd.DataFrame, dict[Path, tuple[Image.Image, list[Face]]]]:
    """One row per face (or per photo without a face or with an error), and the photos read."""
    rows: list[dict[str, Any]] = []
    seen: dict[Path, tuple[Image.Image, list[Face]]] = {}
    pending: list[tuple[int, Image.Image]] = []  # (row index, aligned crop) to predict in batches
    for path in paths:
        try:
            photo = load_photo(path, max_pixels)
        except PhotoError as error:
            log.warning("%s", error)
            rows.append({"photo": str(path), "status": "error", "error": str(error)})
            continue
        if aligner is None:  # already an aligned crop: the whole photo is the face
            width, height = photo.size
            faces = [Face((0.0, 0.0, float(width), float(height)), 1.0, np.zeros((5, 2)), photo)]
        else:
            faces = aligner.find(photo)
        seen[path] = (photo, faces)
        if not faces:
            rows.append({"photo": str(path), "status": "no_face", "error": "no face found"})
        for number, face in enumerate(faces):
            x1, y1, x2, y2 = face.box
            rows.append(
                {
                    "photo": str(path),
                    "face": number,
                    "status": "ok",
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "detector_score": face.score,
                }
            )
            pending.append((len(rows) - 1, face.crop))
    probabilities = predictor.predict([crop for _, crop in pending])
    for (row, _), p_male in zip(pending, probabilities, strict=True):
        rows[row]["p_male"] = float(p_male)
        rows[row]["label"] = label_of(float(p_male), threshold)
    table = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    table["face"] = table["face"].astype("Int64")
    return table, seen


def annotate(photo: Image.Image, rows: pd.DataFrame) -> Image.Image:
    """The photo with each face's box, label and P(male) drawn on it."""
    canvas = photo.copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 300))
    for _, row in rows[rows["status"] == "ok"].iterrows():
        colour = (40, 120, 255) if row["label"] == "male" else (255, 60, 140)
        box = (row["x1"], row["y1"], row["x2"], row["y2"])
        draw.rectangle(box, outline=colour, width=line)
        text = f"{row['label']} {row['p_male']:.2f}"
        size = max(12, round((row["x2"] - row["x1"]) / 6))
        draw.text((row["x1"], max(0, row["y1"] - size - 2)), text, fill=colour, font_size=size)
    return canvas


def gallery(photos: dict[Path, Image.Image], table: pd.DataFrame, columns: int = 4) -> Figure:
    """A grid of the annotated photos, titled with their labels (a person can look)."""
    names = list(dict.fromkeys(table["photo"]))
    count = max(len(names), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows))
    axes_grid = np.atleast_1d(figure.subplots(rows, columns)).reshape(rows, columns)
    for axes in axes_grid.flat:
        axes.axis("off")
    for axes, name in zip(axes_grid.flat, names, strict=False):
        own = table[table["photo"] == name]
        photo = photos.get(Path(name))
        if photo is not None:
            axes.imshow(annotate(photo, own))
        faces = own[own["status"] == "ok"]
        summary = (
            ", ".join(f"{r.label} {r.p_male:.2f}" for r in faces.itertuples())
            if len(faces)
            else own["status"].iloc[0].replace("_", " ")
        )
        axes.set_title(f"{Path(name).name}\n{summary}", fontsize=8)
    figure.tight_layout()
    return figure


def predict(cfg: DictConfig) -> pd.DataFrame:
    output_dir = Path(cfg.paths.output_dir)
    predictor = GenderPredictor.load(cfg.ckpt_path, cfg.device, cfg.batch_size)
    aligner = FaceAligner.from_config(cfg.alignment, cfg.device) if cfg.detect else None
    paths = expand_inputs(
        OmegaConf.to_container(cfg.input) if OmegaConf.is_list(cfg.input) else cfg.input
    )
    if not paths:
        raise DataError(f"input={cfg.input} matches no photo (.jpg, .jpeg, .png, .webp).")
    table, seen = predict_photos(paths, predictor, aligner, cfg.threshold, cfg.max_pixels)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(output_dir / "predictions.csv", table.to_csv(index=False).encode())
    records = json.loads(table.to_json(orient="records"))
    atomic_write(output_dir / "predictions.json", json.dumps(records, indent=2).encode())
    photos = {path: photo for path, (photo, _) in seen.items()}
    if cfg.annotate:
        folder = output_dir / "annotated"
        folder.mkdir(exist_ok=True)
        for path, photo in photos.items():
            annotate(photo, table[table["photo"] == str(path)]).save(folder / f"{path.stem}.png")
    if cfg.gallery:
        gallery(photos, table, cfg.gallery_columns).savefig(output_dir / "gallery.png", dpi=100)
    counts = table["status"].value_counts().to_dict()
    log.info("%d photos: %s -> %s", len(paths), counts, output_dir / "predictions.csv")
    return table


def run_prediction(cfg: DictConfig) -> None:
    """predict with a user's mistake (bad path, missing detector) ending in one clear line."""
    try:
        predict(cfg)
    except (DataError, DetectorUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
