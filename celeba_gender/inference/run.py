"""The predict job: photos in, one row per face out (CSV and JSON), plus pictures.

Photos stream through in batches of ``batch_size``: read, find faces, classify, write their
rows and their annotated copies, then let them go, so memory stays bounded for any number of
photos. Each photo's rows reach predictions.csv in one write as soon as they are known, so a
run stopped at any point (Ctrl-C, SIGTERM, even SIGKILL) leaves a valid CSV of the photos done;
predictions.json is completed from the same rows when the run ends or is interrupted. The
gallery keeps small copies of the first ``gallery_max_photos`` photos only.

No photo stops the job: one that cannot be read, or on which face detection, alignment or
classification fails, gets a row with status "error" and the reason; a photo with no face gets
a row that says so. Annotated copies are named after their photo (see ``output_names``): never
two photos on one name, never outside annotated/.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import signal
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image

from celeba_gender.config_schema import ConfigError, validate
from celeba_gender.data import DataError
from celeba_gender.data.cache import atomic_output
from celeba_gender.inference.drawing import GALLERY_DPI, annotate, gallery, thumbnail
from celeba_gender.inference.faces import DetectorUnavailable, FaceAligner
from celeba_gender.inference.labelling import (
    Decimals,
    PhotoResult,
    error_text,
    predict_photos,
    printable,
    printable_logs,
)
from celeba_gender.inference.photos import expand_inputs, is_video_name
from celeba_gender.inference.predictor import GenderPredictor
from celeba_gender.inference.row_files import RowFiles
from celeba_gender.inference.schema import PredictSchema
from celeba_gender.inference.video import TRACK_COLUMNS, VideoSettings, predict_video, video_name
from celeba_gender.progress import progress
from celeba_gender.stop_signals import StopSignalHandler

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
    "explained",  # the face's crop with its heat map, relative to the output folder (explain=true)
)
# Annotated copies keep their photo's format when PIL writes RGB pictures in it; others are PNG.
SAVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_NAME_BYTES = 200  # file names stay well under the usual 255-byte limit
# Characters a file name cannot hold on some system: separators, controls, Windows' reserved.
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def _short_hash(path: Path) -> str:
    return hashlib.sha1(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character boundary."""
    return text.encode("utf-8", "surrogateescape")[:max_bytes].decode("utf-8", "ignore")


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A distinct, readable, safe file name for each photo's pictures: its path below the inputs'
    common folder, folders joined by '__' (``two/a.jpg`` -> ``two__a.jpg``), so that ``a.jpg``
    and ``a.png``, or ``a.jpg`` in two folders, never overwrite each other.

    Always a plain name inside the folder it is written to: separators, control characters and
    characters some systems forbid become '_', no leading dot, at most MAX_NAME_BYTES bytes (a
    longer name is cut and gets a short hash of the photo's full path), a format PIL writes
    (else '.png' is added). A name already taken (ignoring case and Unicode normal form, as some
    file systems do) gets that hash, then a counter if need be: no two photos share a name."""
    absolute = [Path(os.path.abspath(path)) for path in paths]  # without any '..'
    root = Path(os.path.commonpath([path.parent for path in absolute])) if paths else Path()
    names: dict[Path, str] = {}
    taken: set[str] = set()

    def key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    for path, full in zip(paths, absolute, strict=True):
        name = "__".join(full.relative_to(root).parts) or full.name or "photo"
        name = _UNSAFE_CHARACTERS.sub(
            "_", name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        )
        name = name.strip(" .") or "photo"  # no hidden files, no '.' or '..'
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in SAVE_SUFFIXES:  # a glob or folder may hold other formats
            stem, suffix = name, ".png"
        digest = _short_hash(full)
        room = MAX_NAME_BYTES - len(suffix.encode()) - len(digest) - 8  # '-', a counter
        if len(f"{stem}{suffix}".encode()) > MAX_NAME_BYTES:
            stem = f"{_clip(stem, room)}-{digest}"
        name = f"{stem}{suffix}"
        if key(name) in taken:
            stem = f"{_clip(stem, room)}-{digest}" if not stem.endswith(digest) else stem
            name = f"{stem}{suffix}"
        count = 1
        while key(name) in taken:
            count += 1
            name = f"{stem}-{count}{suffix}"
        taken.add(key(name))
        names[path] = name
    return names


class PredictionInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the rows done so far are written, then the run stops."""

    def __init__(self, signum: int, photos: int = 0, output_dir: Path | None = None) -> None:
        super().__init__(signum)
        self.signum, self.photos, self.output_dir = signum, photos, output_dir

    def __str__(self) -> str:
        return (
            f"interrupted by {signal.Signals(self.signum).name}: predictions.csv and "
            f"predictions.json in {self.output_dir} hold the {self.photos} photos done"
        )


def _save_annotated(result: PhotoResult, target: Path) -> str | None:
    """Write the photo's annotated copy; the reason it could not be, or None. The copy is
    written beside ``target`` and renamed onto it: whatever is at ``target`` already (a link
    left in a reused output folder) is replaced, never written through."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if target.exists() and os.path.samefile(target, result.path):
            return f"annotated copy not written: {target} is the input photo itself"
        copy = annotate(result.photo, result.rows)
        # In the photo's format (the name's suffix is one PIL writes).
        copy.save(
            temporary, format=Image.registered_extensions()[target.suffix.lower()], quality=95
        )
        os.replace(temporary, target)
    except Exception as error:  # noqa: BLE001 - the rows matter more than the picture
        log.warning("%s: annotated copy not written: %s", result.path, error)
        temporary.unlink(missing_ok=True)
        return f"annotated copy not written ({error_text(error)})"
    return None


def _save_explained(
    result: PhotoResult, explainer: Any, folder: Path, name: str, alpha: float, colormap: str
) -> None:
    """Write each classified face's crop with its heat map, colour bar and caption
    (``explain.explained_picture``) as ``explained/<name>_<ext>.face<N>.png`` (from the photo's
    annotated copy's name, its extension kept: a.jpg and a.png are two photos) and name it in
    the face's row; a face whose map cannot be made gets the reason in its row instead. The map
    explains the row's label. The caption is also the PNG's "Description" text."""
    from PIL.PngImagePlugin import PngInfo

    from celeba_gender.inference.explain import explained_picture, face_caption

    face_rows = [row for row in result.rows if row.get("face") is not None]  # one per crop
    faces = [
        (row, crop)
        for row, crop in zip(face_rows, result.crops, strict=True)
        if row["status"] == "ok"
    ]
    if not faces:
        return
    try:
        maps = explainer.explain(
            [crop for _, crop in faces], [row["label"] == "male" for row, _ in faces]
        )
    except Exception as error:  # noqa: BLE001 - the rows matter more than the picture
        log.warning("%s: no heat maps: %s", result.path, error)
        for row, _ in faces:
            problem = f"heat map not made ({error_text(error)})"
            row["error"] = "; ".join(filter(None, (row.get("error"), problem)))
        return
    head, dot, extension = name.rpartition(".")  # a name of output_names has an extension
    stem = f"{head}_{extension}" if dot else name
    for (row, crop), heat_map in zip(faces, maps, strict=True):
        target = folder / f"{stem}.face{row['face']}.png"
        caption = f"{name}\n" + face_caption(
            row["face"], row["label"], row["p_male"], explainer.toward
        )
        text = PngInfo()
        text.add_itxt("Description", caption)
        with atomic_output(target) as file:
            explained_picture(crop, heat_map, caption, alpha, colormap).save(
                file, format="PNG", pnginfo=text
            )
        row["explained"] = f"explained/{target.name}"


# The tables a prediction run writes: a folder holding one of them holds an earlier run's.
PREDICTION_FILES = ("predictions.csv", "predictions.json", "tracks.csv", "tracks.json")


def predict(cfg: DictConfig) -> Counter[str]:
    """Write predictions.csv/.json (and the pictures) for ``cfg.input``; the rows' statuses.
    Ctrl-C or SIGTERM stops it with PredictionInterrupted, the rows done so far written."""
    validate(cfg, PredictSchema)  # before anything is loaded or written
    # Their owners read and check the video and decimals settings: now, not after the model.
    video_settings = VideoSettings.from_config(cfg.get("video", {}))
    decimals = Decimals.from_config(cfg.get("decimals"))
    output_dir = Path(cfg.paths.output_dir)
    # A link of that name is replaced below, not written through: what it points to stays.
    earlier = [
        n
        for n in PREDICTION_FILES
        if (output_dir / n).exists() and not (output_dir / n).is_symlink()
    ]
    if earlier:  # checked first: nothing is loaded or written
        raise DataError(
            f"{output_dir} already holds predictions ({', '.join(earlier)}): predict never "
            "overwrites them. Choose another hydra.run.dir (the default is a new folder per "
            "run), or move them away."
        )
    predictor = GenderPredictor.load(cfg.ckpt_path, cfg.device, cfg.batch_size)
    aligner = FaceAligner.from_config(cfg.alignment, cfg.device) if cfg.detect else None
    explainer = None
    if cfg.get("explain"):
        from celeba_gender.inference.explain import CropExplainer

        explainer = CropExplainer.from_predictor(
            predictor, cfg.explain_target_layer, cfg.explain_toward
        )
    inputs = expand_inputs(
        OmegaConf.to_container(cfg.input) if OmegaConf.is_list(cfg.input) else cfg.input
    )
    if not inputs:
        raise DataError(
            f"input={cfg.input} matches no photo or video (no file of a format PIL opens, "
            "nor a video file)."
        )
    names = output_names(inputs)
    videos = [path for path in inputs if is_video_name(path)]
    paths = [path for path in inputs if not is_video_name(path)]  # the photos
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.annotate or videos and video_settings.annotate_video:
        (output_dir / "annotated").mkdir(exist_ok=True)
    if explainer is not None:
        (output_dir / "explained").mkdir(exist_ok=True)
    # A link left there: replaced, not written through.
    for output in ("predictions.csv", "gallery.png", "tracks.csv"):
        if (output_dir / output).is_symlink():
            (output_dir / output).unlink()
    shown: list[tuple[str, Image.Image | None, list[dict[str, Any]]]] = []  # the gallery's
    counts: Counter[str] = Counter()
    done = 0
    # Ctrl-C, SIGTERM, a cluster's SIGUSR1/2, a closed terminal's SIGHUP: PredictionInterrupted
    # while photos are being done; held while a photo's rows are written (and once the run is
    # stopping), raised once the outputs are complete.
    stop = StopSignalHandler(raises=PredictionInterrupted)
    stop.held = True
    with (
        stop,
        RowFiles(output_dir, "predictions", COLUMNS) as predictions,
        RowFiles(output_dir, "tracks", TRACK_COLUMNS)
        if videos
        else contextlib.nullcontext() as tracks,
    ):
        failure: BaseException | None = None
        stop.held = False
        try:
            results = predict_photos(
                paths, predictor, aligner, cfg.threshold, cfg.max_pixels, decimals
            )
            for result in progress(results, total=len(paths), desc="Photos", unit="photo"):
                name = names[result.path]
                result.rows = [{k: printable(v) for k, v in row.items()} for row in result.rows]
                if cfg.annotate and result.photo is not None:
                    problem = _save_annotated(result, output_dir / "annotated" / name)
                    for row in result.rows:
                        if problem is None:
                            row["annotated"] = f"annotated/{name}"
                        else:
                            row["error"] = "; ".join(filter(None, (row.get("error"), problem)))
                if explainer is not None:
                    _save_explained(
                        result,
                        explainer,
                        output_dir / "explained",
                        name,
                        cfg.explain_alpha,
                        cfg.explain_colormap,
                    )
                result.crops = []  # let them go with the batch
                if cfg.gallery and len(shown) < cfg.gallery_max_photos:
                    picture = None
                    try:
                        if result.photo is not None:
                            picture = thumbnail(result.photo, result.rows)
                    except Exception as error:  # noqa: BLE001 - the rows matter more
                        log.warning("%s: no gallery picture: %s", result.path, error)
                    shown.append((name, picture, result.rows))
                # Both outputs' text first, then the writes: a stop never splits a row.
                prepared = predictions.prepare(result.rows)
                # A stop during the writes waits until both files have the photo's rows.
                stop.held = True
                predictions.write(prepared)
                done += 1
                counts.update(row["status"] for row in result.rows)
                stop.raise_if_requested()
                stop.held = False
            for path in progress(videos, desc="Videos", unit="video"):
                annotated = None
                if video_settings.annotate_video:
                    name = video_name(names[path])
                    annotated = (output_dir / "annotated" / name, f"annotated/{name}")
                rows = predict_video(
                    path, predictor, aligner, video_settings, cfg.threshold, annotated, decimals
                )
                prepared = tracks.prepare([{k: printable(v) for k, v in r.items()} for r in rows])
                stop.held = True  # a stop waits until both files have the video's rows
                tracks.write(prepared)
                done += 1
                counts.update(f"video_{row['status']}" for row in rows)
                stop.raise_if_requested()
                stop.held = False
        except PredictionInterrupted as interrupted:
            stop.requested = interrupted.signum
            # A video stopped midway: the tracks it had so far, cut where it stopped.
            rows = getattr(interrupted, "track_rows", None)
            if tracks is not None and rows:
                tracks.write(
                    tracks.prepare([{k: printable(v) for k, v in r.items()} for r in rows])
                )
        except BaseException as error:  # noqa: BLE001 - re-raised once the outputs are complete
            failure = error
        finally:
            stop.held = True  # a signal from now on waits until the outputs are complete
    if failure is not None:
        raise failure
    if stop.requested is not None:
        stopped = PredictionInterrupted(stop.requested, done, output_dir)
        log.warning("%s", stopped)
        raise stopped
    if cfg.gallery and paths:
        if len(paths) > len(shown):
            log.info("gallery.png shows the first %d of %d photos", len(shown), len(paths))
        figure = gallery(shown, cfg.gallery_columns)
        figure.savefig(output_dir / "gallery.png", dpi=GALLERY_DPI)
    log.info("%d photos: %s -> %s", len(paths), dict(counts), output_dir / "predictions.csv")
    if videos:
        log.info("%d videos -> %s", len(videos), output_dir / "tracks.csv")
    return counts


def run_prediction(cfg: DictConfig) -> None:
    """predict with a user's mistake (bad path, bad model file, missing detector) ending in one
    clear line, and an interrupted run in one line saying what it kept."""
    printable_logs()
    try:
        predict(cfg)
    except (ConfigError, DataError, DetectorUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except PredictionInterrupted as stopped:
        print(str(stopped), file=sys.stderr)
        raise SystemExit(128 + stopped.signum) from None
    except OSError as error:  # photos' own errors are their rows: the output folder's, mostly
        where = cfg.paths.output_dir
        print(f"error: {printable(str(error))} (predicting into {where})", file=sys.stderr)
        raise SystemExit(2) from None
