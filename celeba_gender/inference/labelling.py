"""Faces of photos labelled: each photo read, its faces found and aligned (MTCNN), classified
in batches, and given one row per face (or one saying why there is none), rounded as every
output shows it. predict's photos, a video's frames and the demo's uploads all come through
here."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from celeba_gender.data import DataError
from celeba_gender.inference.faces import Face, FaceAligner
from celeba_gender.inference.photos import PhotoError, load_photo
from celeba_gender.inference.predictor import GenderPredictor

log = logging.getLogger(__name__)
PROBABILITY_COLUMNS = ("p_male", "detector_score")
PIXEL_COLUMNS = ("x1", "y1", "x2", "y2")


def printable(value: Any) -> Any:
    """A text value as valid UTF-8 (a file name's undecodable bytes as ``\\xff``), others as
    they are: every row can be written to the CSV and the JSON, whatever its photo's name."""
    if not isinstance(value, str):
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class PrintableLog(logging.Filter):
    """A logger's lines as valid UTF-8: a photo name's undecodable bytes would make the log
    file's handler print a traceback (and the terminal get raw bytes) instead of the line. On
    the loggers of every module that names photos (labelling, run, video)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(record.getMessage()), None
        return True


# The loggers whose lines name photos and videos.
PHOTO_LOGGERS = (__name__, "celeba_gender.inference.run", "celeba_gender.inference.video")


def printable_logs() -> None:
    """``PrintableLog`` on every logger that names photos (the predict command and the demo
    call this when they start; idempotent)."""
    for name in PHOTO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, PrintableLog) for f in logger.filters):
            logger.addFilter(PrintableLog())


@dataclass(frozen=True)
class Decimals:
    """How many decimals the rows keep (conf/predict.yaml's ``decimals``; None: all): a 16-digit
    P(male) or box corner is noise to a reader, and no model or detector is that precise. The
    one place numbers are rounded (``rounded``): predictions.csv/.json, tracks.csv/.json, the
    demo's table and API. Labels are decided on the unrounded P(male)."""

    probability: int | None = None
    pixels: int | None = None

    @classmethod
    def from_config(cls, decimals: Mapping[str, Any] | None) -> Decimals:
        """Checked values; DataError naming the key otherwise."""
        decimals = dict(decimals or {})
        unknown = sorted(set(decimals) - {"probability", "pixels"})
        if unknown:
            raise DataError(
                f"decimals.{unknown[0]}: unknown key (decimals has probability, pixels)"
            )
        for key, value in decimals.items():
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 15
            ):
                raise DataError(
                    f"decimals.{key}={value!r}: a whole number of decimals from 0 to 15, or null"
                )
        return cls(**decimals)

    def probability_value(self, value: Any, threshold: float | None = None) -> Any:
        """``value`` rounded; with the ``threshold`` its label was decided by, never onto the
        other side of it: P(male) 0.50004 (male) is shown 0.5001, not 0.5, which reads female
        (``label_of``: male above the threshold)."""
        shown = _round(value, self.probability)
        if threshold is None or self.probability is None or not isinstance(shown, int | float):
            return shown
        step = Decimal(1).scaleb(-self.probability)
        at_or_below = (Decimal(repr(float(threshold))) / step).to_integral_value(ROUND_FLOOR)
        if value > threshold >= shown:  # male, shown at or below: the next step above
            steps = at_or_below + 1
        elif value <= threshold < shown:  # female, shown above: the last step not above
            steps = at_or_below
        else:
            return shown
        return int(steps) if self.probability == 0 else float(steps * step)

    def rounded(self, row: dict[str, Any], threshold: float | None = None) -> dict[str, Any]:
        """``row`` with its probabilities and box corners rounded (in place, and returned); its
        P(male) kept on its label's side of ``threshold`` (``probability_value``)."""
        for column in PIXEL_COLUMNS:
            if column in row:
                row[column] = _round(row[column], self.pixels)
        for column in PROBABILITY_COLUMNS:
            if column in row:
                row[column] = self.probability_value(
                    row[column], threshold if column == "p_male" else None
                )
        return row


def _round(value: Any, places: int | None) -> Any:
    """``value`` to ``places`` decimals (0: a whole number), or as it is (None, not a number)."""
    if places is None or value is None or isinstance(value, bool):
        return value
    if not isinstance(value, int | float | np.number) or not math.isfinite(value):
        return value
    return int(round(float(value))) if places == 0 else round(float(value), places)


@dataclass
class PhotoResult:
    path: Path
    photo: Image.Image | None  # None when it could not be read
    rows: list[dict[str, Any]]  # one per face, or one saying "no_face" or "error"
    # The faces' aligned crops, in row order (the demo shows them); empty without faces.
    crops: list[Image.Image] = field(default_factory=list)


def label_of(p_male: float, threshold: float) -> str:
    return "male" if p_male > threshold else "female"


def predict_photos(
    paths: Iterable[Path],
    predictor: GenderPredictor,
    aligner: FaceAligner | None,
    threshold: float = 0.5,
    max_pixels: int = 50_000_000,
    decimals: Decimals = Decimals(),
) -> Iterator[PhotoResult]:
    """Each photo with its rows, in input order; faces are classified ``predictor.batch_size``
    photos at a time, and at most that many photos are held at once. ``decimals``: how the
    rows' numbers are rounded (default: not at all)."""
    batch: list[tuple[PhotoResult, list[Image.Image]]] = []
    for path in paths:
        batch.append(_find_faces(path, aligner, max_pixels))
        if len(batch) >= predictor.batch_size:
            yield from classify(batch, predictor, threshold, decimals)
            batch = []
    yield from classify(batch, predictor, threshold, decimals)


def error_text(error: BaseException, limit: int = 300) -> str:
    """An exception on one line: its type and the start of its message."""
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _find_faces(
    path: Path, aligner: FaceAligner | None, max_pixels: int
) -> tuple[PhotoResult, list[Image.Image]]:
    """The photo with one row per face found, and the faces' aligned crops. Whatever goes
    wrong with this photo becomes its row; the caller goes on with the next."""
    try:
        photo = load_photo(path, max_pixels)
    except PhotoError as error:
        log.warning("%s", error)
        row = {"photo": str(path), "status": "error", "error": str(error)}
        return PhotoResult(path, None, [row]), []
    except Exception as error:  # noqa: BLE001 - one photo's failure is its row, not the job's
        log.warning("%s: %s", path, error)
        row = {"photo": str(path), "status": "error", "error": f"{path}: {error_text(error)}"}
        return PhotoResult(path, None, [row]), []
    return detect_faces(photo, path, aligner)


def detect_faces(
    photo: Image.Image, path: Path, aligner: FaceAligner | None
) -> tuple[PhotoResult, list[Image.Image]]:
    """A decoded photo (or a video's frame) with one row per face found, and the faces'
    aligned crops; a failing detector becomes its error row."""
    width, height = photo.size
    if aligner is None:  # already an aligned crop: the whole photo is the face
        faces = [Face((0.0, 0.0, float(width), float(height)), 1.0, np.zeros((5, 2)), photo)]
    else:
        try:
            faces = aligner.find(photo)
        except Exception as error:  # noqa: BLE001 - MTCNN or alignment failing on this photo
            log.warning("%s: face detection failed: %s", path, error)
            message = f"{path}: face detection or alignment failed ({error_text(error)})"
            row = {"photo": str(path), "status": "error", "error": message}
            return PhotoResult(path, photo, [row]), []
    rows = [
        {"photo": str(path), "face": number, "status": "ok", "detector_score": face.score}
        | dict(zip(("x1", "y1", "x2", "y2"), face.box, strict=True))
        for number, face in enumerate(faces)
    ]
    if not faces:
        smallest = getattr(aligner, "min_face_size", 0)
        why = (
            f"no face found: the photo is {width}x{height} pixels, smaller than the smallest "
            f"face searched (alignment.min_face_size={smallest})"
            if min(width, height) < smallest
            else "no face found"
        )
        rows = [{"photo": str(path), "status": "no_face", "error": why}]
    return PhotoResult(path, photo, rows), [face.crop for face in faces]


def classify(
    batch: list[tuple[PhotoResult, list[Image.Image]]],
    predictor: GenderPredictor,
    threshold: float,
    decimals: Decimals = Decimals(),
) -> Iterator[PhotoResult]:
    """P(male) of every face of the batch at once; if that fails, photo by photo, so that only
    the photo whose faces cannot be classified gets error rows. The rows leave here labelled
    and rounded (``decimals``): every output shows the same numbers."""
    try:
        flat = predictor.predict([crop for _, crops in batch for crop in crops])
        probabilities = []
        start = 0
        for _, crops in batch:
            probabilities.append(flat[start : start + len(crops)])
            start += len(crops)
    except Exception:  # noqa: BLE001 - find the photo that fails, keep the others
        probabilities = []
        for result, crops in batch:
            try:
                probabilities.append(predictor.predict(crops) if crops else [])
            except Exception as error:  # noqa: BLE001 - this photo's error row
                log.warning("%s: classification failed: %s", result.path, error)
                probabilities.append(error)
    for (result, crops), own in zip(batch, probabilities, strict=True):
        result.crops = crops
        if isinstance(own, Exception):
            for row in result.rows:
                if row["status"] == "ok":
                    row["status"] = "error"
                    row["error"] = f"{result.path}: classification failed ({error_text(own)})"
        else:
            values = iter(own)
            for row in result.rows:
                if row["status"] == "ok":
                    row["p_male"] = float(next(values))
                    row["label"] = label_of(row["p_male"], threshold)
        for row in result.rows:
            decimals.rounded(row, threshold)
        yield result
