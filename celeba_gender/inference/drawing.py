"""Pictures of labelled faces: a photo with each face's box and label drawn on it, its
thumbnail, and the gallery of a predict run."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

GALLERY_CELL = (3.2, 3.4)  # inches per photo in the gallery, drawn at GALLERY_DPI
GALLERY_DPI = 100
# Box labels: text height as a fraction of the photo's longer side (about 18 px on a 512-px
# photo, 140 px on a 4000-px one: readable wherever the photo is shown whole), never below
# LABEL_MIN_PX; white on the box's colour.
LABEL_HEIGHT = 0.035
LABEL_MIN_PX = 14
BOX_COLOURS = {"male": (40, 120, 255), "female": (235, 50, 130)}


def label_font_size(photo_size: tuple[int, int]) -> int:
    """The box labels' font size in pixels for a photo of this (width, height)."""
    return max(LABEL_MIN_PX, round(LABEL_HEIGHT * max(photo_size)))


def annotate(photo: Image.Image, rows: Iterable[Mapping[str, Any]]) -> Image.Image:
    """The photo with each face's box, label and P(male) drawn on it: the label in white on a
    band of the box's colour above the box (inside it at the photo's top edge), its size in
    proportion to the photo (``label_font_size``)."""
    canvas = photo.copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 300))
    font = ImageFont.load_default(size=label_font_size(canvas.size))
    pad = max(1, font.size // 6)
    for row in rows:
        if row["status"] != "ok":
            continue
        colour = BOX_COLOURS[row["label"]]
        draw.rectangle((row["x1"], row["y1"], row["x2"], row["y2"]), outline=colour, width=line)
        text = f"{row['label']} {row['p_male']:.2f}"
        if row.get("track") is not None:  # a video's face: its track number, as in tracks.csv
            text = f"#{row['track']} {text}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        height = bottom - top + 2 * pad
        y = row["y1"] - height if row["y1"] >= height else row["y1"]
        x = min(max(0, row["x1"]), max(0, canvas.width - (right - left) - 2 * pad))
        draw.rectangle((x, y, x + right - left + 2 * pad, y + height), fill=colour)
        draw.text((x + pad - left, y + pad - top), text, fill="white", font=font)
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
        # Names are the user's: no mathtext ('$' in a file name is not a formula).
        axes.set_title(f"{name}\n{summary}", fontsize=8, parse_math=False)
    figure.tight_layout()
    return figure
