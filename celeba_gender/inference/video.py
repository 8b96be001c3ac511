"""Videos in predict: frames sampled at ``video.sample_fps``, faces linked into tracks, one row
per track (tracks.csv / tracks.json), and optionally an annotated copy of the sampled frames.

Frames are decoded with PyAV (any container and codec its FFmpeg reads) one at a time and
let go once their faces are classified: at most ``batch_size`` sampled frames are held, so a
video of any length runs in bounded memory. Each sampled frame goes through the photos' own
code (``labelling.detect_faces``: MTCNN, CelebA alignment; ``labelling.classify``: the
model's P(male), a batch of frames' faces at once).

Tracks: a face is linked to the open track whose box, moved on at the track's last speed,
overlaps it most (IoU, one face per track, Hungarian matching with scipy; the speed keeps two
people who cross from swapping tracks) when the overlap is at least ``video.min_iou`` and its
aligned crop looks like the track's last one (``video.min_similarity``: the cosine of the two
crops' small grey-level images, centred; the crops are aligned to the same template, so this
compares faces, not framing). Measured on real portraits: the same face in following sampled
frames 0.96-1.0 (moving, after a detector miss), two different people in the same place
-0.64-0.37; hence 0.7. A scene cut (the mean absolute difference of two following sampled
frames' 32x32 grey images above ``video.cut_threshold``: moving faces 0.02-0.04, whole-frame
cuts between unrelated pictures 0.20-0.30) ends every open track. A track unseen for more than
``video.max_gap_s`` ends. There is no re-identification: a person who leaves and comes back
is a new track.

A video that cannot be opened or decoded (corrupt, truncated, empty, no video stream) gets a
row with the reason; the tracks found before a decoding error are kept, and so are those found
before a stop (Ctrl-C, SIGTERM): the interruption carries their rows (``track_rows``) for the
caller to write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from celeba_gender.data import DataError
from celeba_gender.data.cache import atomic_output
from celeba_gender.inference.drawing import annotate
from celeba_gender.inference.faces import FaceAligner
from celeba_gender.inference.labelling import (
    Decimals,
    classify,
    detect_faces,
    error_text,
    label_of,
)
from celeba_gender.inference.photos import VIDEO_SUFFIXES, is_video_name  # noqa: F401
from celeba_gender.inference.predictor import GenderPredictor
from celeba_gender.progress import progress

log = logging.getLogger(__name__)

TRACK_COLUMNS = (
    "video",
    "track",  # 1, 2, ... in order of first appearance; empty on a video's no_face/error row
    "status",  # ok, no_face or error
    "first_s",  # the video's own timestamps, in seconds
    "last_s",
    "frames",  # sampled frames in which the track's face was found
    "p_male_mean",
    "p_male_std",  # spread over those frames (population standard deviation)
    "label",  # of the mean P(male)
    "error",
    "annotated",  # the video's annotated copy, relative to the output folder
)


def video_name(name: str) -> str:
    """The annotated copy's file name, from the video's name by ``run.output_names`` (which
    adds '.png' to a name it cannot save a picture under): 'clip.mp4' -> 'clip_mp4.mp4'."""
    stem = name.removesuffix(".png")
    head, dot, tail = stem.rpartition(".")
    return f"{head}_{tail}.mp4" if dot else f"{stem}.mp4"


@dataclass(frozen=True)
class VideoSettings:
    """predict's ``video:`` block (conf/predict.yaml)."""

    sample_fps: float | None = 5.0  # None: every frame
    max_gap_s: float = 1.0
    min_iou: float = 0.3
    min_similarity: float = 0.7
    cut_threshold: float = 0.2
    annotate_video: bool = False

    @classmethod
    def from_config(cls, video: Mapping[str, Any]) -> VideoSettings:
        """Checked values (a key left out: its default); DataError naming the key and what is
        allowed otherwise."""
        video = dataclasses.asdict(cls()) | dict(video)

        def number(key: str, low: float, high: float = math.inf, low_open: bool = True) -> float:
            value = video.get(key)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and (value > low if low_open else value >= low)
            if not ok or value > high:
                bound = f"> {low}" if low_open else f">= {low}"
                upper = f" and <= {high}" if math.isfinite(high) else ""
                raise DataError(f"video.{key}={value!r}: it must be a number {bound}{upper}")
            return float(value)

        sample_fps = None if video.get("sample_fps") is None else number("sample_fps", 0)
        annotate_video = video.get("annotate_video")
        if not isinstance(annotate_video, bool):
            raise DataError(f"video.annotate_video={annotate_video!r}: it must be true or false")
        return cls(
            sample_fps=sample_fps,
            max_gap_s=number("max_gap_s", 0, low_open=False),
            min_iou=number("min_iou", 0, 1),
            min_similarity=number("min_similarity", -1, 1, low_open=False),
            cut_threshold=number("cut_threshold", 0, 1),
            annotate_video=annotate_video,
        )


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of every (x1, y1, x2, y2) box of ``boxes`` with every one of
    ``others``: an array of shape (len(boxes), len(others))."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)[:, None, :]
    others = np.asarray(others, dtype=float).reshape(-1, 4)[None, :, :]
    width = np.minimum(boxes[..., 2], others[..., 2]) - np.maximum(boxes[..., 0], others[..., 0])
    height = np.minimum(boxes[..., 3], others[..., 3]) - np.maximum(boxes[..., 1], others[..., 1])
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)

    def area(b: np.ndarray) -> np.ndarray:
        return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])

    union = area(boxes) + area(others) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


APPEARANCE_SIDE = 16  # pixels of the grey image a face's appearance is compared by
CUT_SIDE = 32  # pixels of the grey image following frames are compared by


def appearance(crop: Image.Image) -> np.ndarray:
    """An aligned face crop as a unit vector: its small grey image, centred (brightness
    changes cancel); the cosine of two of them is their similarity."""
    grey = crop.convert("L").resize((APPEARANCE_SIDE, APPEARANCE_SIDE), Image.BILINEAR)
    vector = np.asarray(grey, dtype=float).ravel()
    vector -= vector.mean()
    return vector / max(float(np.linalg.norm(vector)), 1e-8)


def frame_signature(frame: Image.Image) -> np.ndarray:
    """A frame as a small grey image in [0, 1], for the scene-cut test."""
    grey = frame.convert("L").resize((CUT_SIDE, CUT_SIDE), Image.BILINEAR)
    return np.asarray(grey, dtype=float) / 255


def is_cut(previous: np.ndarray | None, current: np.ndarray, threshold: float) -> bool:
    return previous is not None and float(np.abs(current - previous).mean()) > threshold


@dataclass
class Track:
    """One face followed across sampled frames; P(male)'s mean and spread kept as running
    sums (Welford), so a track of any length takes constant memory."""

    number: int
    first_s: float
    box: tuple[float, float, float, float]
    last_s: float = 0.0
    frames: int = 0
    mean: float = 0.0
    squares: float = field(default=0.0, repr=False)  # sum of squared deviations from the mean
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4), repr=False)  # per second
    look: np.ndarray | None = field(default=None, repr=False)  # the last face's appearance

    def add(
        self,
        time_s: float,
        box: tuple[float, float, float, float],
        p_male: float,
        look: np.ndarray | None = None,
    ) -> None:
        if self.frames and time_s > self.last_s:
            self.velocity = (np.asarray(box) - np.asarray(self.box)) / (time_s - self.last_s)
        self.box, self.last_s = box, time_s
        self.look = look if look is not None else self.look
        self.frames += 1
        delta = p_male - self.mean
        self.mean += delta / self.frames
        self.squares += delta * (p_male - self.mean)

    def expected_box(self, time_s: float) -> np.ndarray:
        """Where the face should be at ``time_s`` if it keeps moving as it last did."""
        return np.asarray(self.box, dtype=float) + self.velocity * (time_s - self.last_s)

    @property
    def std(self) -> float:
        return math.sqrt(self.squares / self.frames) if self.frames else 0.0


class FaceTracker:
    """Links each sampled frame's faces to the open tracks by box overlap and appearance, and
    ends them at a scene cut (see the module)."""

    def __init__(
        self,
        min_iou: float = VideoSettings.min_iou,  # the defaults are predict's (VideoSettings)
        max_gap_s: float = VideoSettings.max_gap_s,
        min_similarity: float = VideoSettings.min_similarity,
    ) -> None:
        self.min_iou, self.max_gap_s, self.min_similarity = min_iou, max_gap_s, min_similarity
        self.open: list[Track] = []
        self.closed: list[Track] = []
        self.count = 0

    def update(
        self,
        time_s: float,
        boxes: list[tuple[float, float, float, float]],
        p_male: list[float],
        looks: list[np.ndarray] | None = None,
        cut: bool = False,
    ) -> list[int]:
        """Add one sampled frame's faces (``looks``: their ``appearance``; ``cut``: the frame
        follows a scene cut); the track number of each face, in order."""
        ended = self.open if cut else [t for t in self.open if time_s - t.last_s > self.max_gap_s]
        for track in list(ended):
            self.open.remove(track)
            self.closed.append(track)
        looks = looks if looks is not None else [None] * len(boxes)
        numbers: list[int | None] = [None] * len(boxes)
        if boxes and self.open:
            expected = np.array([t.expected_box(time_s) for t in self.open])
            overlap = box_iou(np.array(boxes), expected)
            allowed = overlap >= self.min_iou
            for face, look in enumerate(looks):
                for index, track in enumerate(self.open):
                    if look is not None and track.look is not None:
                        allowed[face, index] &= float(look @ track.look) >= self.min_similarity
            for face, index in zip(
                *linear_sum_assignment(-np.where(allowed, overlap, -1)), strict=True
            ):
                if allowed[face, index]:
                    self.open[index].add(time_s, boxes[face], p_male[face], looks[face])
                    numbers[face] = self.open[index].number
        for face, number in enumerate(numbers):
            if number is None:
                self.count += 1
                track = Track(self.count, time_s, boxes[face])
                track.add(time_s, boxes[face], p_male[face], looks[face])
                self.open.append(track)
                numbers[face] = track.number
        return [int(n) for n in numbers]

    def tracks(self) -> list[Track]:
        """Every track so far, in order of first appearance."""
        return sorted(self.closed + self.open, key=lambda t: t.number)


def sampled_frames(
    path: Path, sample_fps: float | None
) -> Iterator[tuple[float, Image.Image, float]]:
    """(time in seconds, RGB frame, the stream's frame rate) of the first video stream, at most
    ``sample_fps`` frames a second (None: all), decoded one at a time. Raises
    av.error.FFmpegError (or OSError) when the file cannot be opened or decoded; ValueError
    when it has no video stream."""
    try:
        import av
    except ImportError:  # the video's row says what to install
        raise RuntimeError(
            "reading videos needs PyAV: `pip install 'celeba-gender[video]'` (or make setup)"
        ) from None

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode with every core; frames still come in order
        next_time = -math.inf
        for index, frame in enumerate(container.decode(stream)):
            rate = stream.average_rate or stream.guessed_rate or 25
            time_s = frame.time if frame.time is not None else index / float(rate)
            if sample_fps is not None:
                if time_s < next_time - 1e-6:
                    continue
                # The next sample is due on the sample_fps grid after this frame.
                next_time = (math.floor(time_s * sample_fps + 1e-6) + 1) / sample_fps
            yield float(time_s), frame_image(frame), float(rate)


# A display rotation (degrees counter-clockwise, as PyAV reads it) and the transpose doing it.
_ROTATIONS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    -180: Image.Transpose.ROTATE_180,
    -90: Image.Transpose.ROTATE_270,
    270: Image.Transpose.ROTATE_270,
}


def frame_image(frame: Any) -> Image.Image:
    """A decoded PyAV frame as an RGB picture, turned as a player shows it: a phone's video
    is stored sideways with a display rotation, and MTCNN and the model expect upright faces."""
    picture = frame.to_image()
    rotation = round(getattr(frame, "rotation", 0) or 0)
    if rotation in _ROTATIONS:
        picture = picture.transpose(_ROTATIONS[rotation])
    elif rotation % 360:  # not a quarter turn: rare, and rotated faces are still found
        picture = picture.rotate(rotation, expand=True)
    return picture


class AnnotatedVideo:
    """The sampled frames with their faces drawn, written as an MP4 (H.264 where this FFmpeg
    has it, else MPEG-4 Part 2) at the sampling rate. Written beside its name and renamed
    onto it when complete (``close``), so a stopped run leaves no half video."""

    def __init__(self, target: Path, fps: float | None) -> None:
        self.target, self.fps = target, fps  # None: the source's frame rate
        self._stack = contextlib.ExitStack()
        self._container: Any = None
        self._stream: Any = None
        self._last_pts = -1

    def write(self, picture: Image.Image, time_s: float, source_fps: float = 25.0) -> None:
        import av

        if self._container is None:
            self.fps = self.fps or source_fps
            handle = self._stack.enter_context(atomic_output(self.target))
            self._container = av.open(handle, "w", format="mp4")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            rate = Fraction(self.fps).limit_denominator(1000)
            self._stream = self._container.add_stream(codec, rate=rate)
            # yuv420p needs even sides.
            self._stream.width = picture.width - picture.width % 2
            self._stream.height = picture.height - picture.height % 2
            self._stream.pix_fmt = "yuv420p"
        picture = picture.crop((0, 0, self._stream.width, self._stream.height))
        frame = av.VideoFrame.from_image(picture)
        # One frame per sampling step, from the frame's own time: skipped samples stay gaps.
        self._last_pts = max(self._last_pts + 1, round(time_s * self.fps))
        frame.pts = self._last_pts
        self._container.mux(self._stream.encode(frame))

    def close(self) -> bool:
        """Finish the file; False when no frame was written (then there is no file)."""
        with self._stack:
            if self._container is None:
                return False
            self._container.mux(self._stream.encode(None))  # flush the encoder
            self._container.close()
        return True

    def discard(self) -> None:
        """Drop the unfinished file (a failure or a stop while writing)."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
        self._stack.__exit__(RuntimeError, RuntimeError("discarded"), None)


def predict_video(
    path: Path,
    predictor: GenderPredictor,
    aligner: FaceAligner | None,
    settings: VideoSettings,
    threshold: float = 0.5,
    annotated: tuple[Path, str] | None = None,
    decimals: Decimals | None = None,
) -> list[dict[str, Any]]:
    """One row per track of ``path`` (or one row saying why there is none). ``annotated``:
    (file to write, its name for the rows) when an annotated copy is wanted. ``decimals``: the
    track rows' P(male) mean and spread rounded (the frames' own P(male) are not: the means
    average them)."""
    decimals = decimals or Decimals()

    tracker = FaceTracker(settings.min_iou, settings.max_gap_s, settings.min_similarity)
    previous_frame: np.ndarray | None = None  # the last sampled frame's signature
    writer = None if annotated is None else AnnotatedVideo(annotated[0], settings.sample_fps)
    notes: list[str] = []  # what went wrong, for the video's rows
    sampled = failed = 0
    first_failure = ""
    last_time = 0.0
    tracked_until = 0.0  # the time of the last frame whose faces joined the tracks

    def consume(batch: list, source_fps: float) -> None:
        nonlocal failed, first_failure, writer, tracked_until, previous_frame
        results = classify([found for _, found in batch], predictor, threshold)
        for (time_s, _), result in zip(batch, results, strict=True):
            faces = [row for row in result.rows if row["status"] == "ok"]
            errors = [row for row in result.rows if row["status"] == "error"]
            if errors and not failed:
                first_failure = f"at {time_s:.2f} s: {errors[0]['error']}"
            failed += bool(errors)
            boxes = [(row["x1"], row["y1"], row["x2"], row["y2"]) for row in faces]
            looks = [appearance(result.crops[row["face"]]) for row in faces]
            signature = frame_signature(result.photo)
            cut = is_cut(previous_frame, signature, settings.cut_threshold)
            previous_frame = signature
            numbers = tracker.update(
                time_s, boxes, [row["p_male"] for row in faces], looks, cut=cut
            )
            tracked_until = time_s
            if writer is None:
                continue
            try:
                for row, number in zip(faces, numbers, strict=True):
                    row["track"] = number
                writer.write(annotate(result.photo, faces), time_s, source_fps)
            except Exception as error:  # noqa: BLE001 - the rows matter more than the video
                writer.discard()
                writer = None
                notes.append(f"annotated video not written ({error_text(error)})")

    stopped = None
    frames = sampled_frames(path, settings.sample_fps)
    bar = progress(desc=path.name, unit="frame")  # the length is known only once decoded
    batch: list = []
    try:
        while True:
            try:
                time_s, frame, source_fps = next(frames)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - a bad video is its row, not the job's end
                stopped = (
                    f"{path}: decoding stopped after {last_time:.2f} s ({error_text(error)})"
                    if sampled
                    else f"{path}: not a readable video ({error_text(error)})"
                )
                log.warning("%s", stopped)
                break
            sampled += 1
            bar.update()
            last_time = time_s
            batch.append((time_s, detect_faces(frame, path, aligner)))
            if len(batch) >= predictor.batch_size:
                consume(batch, source_fps)
                batch = []
        if batch:  # the frames decoded before the end, or before a decoding error
            consume(batch, source_fps)
    except BaseException as error:  # a stop signal: no half-written annotated video is left
        if writer is not None:
            writer.discard()
        if isinstance(error, KeyboardInterrupt) and tracker.count:
            stop = f"{path}: the run was stopped; frames after {tracked_until:.2f} s not looked at"
            common = {"video": str(path), "error": stop, "annotated": None}
            error.track_rows = [  # type: ignore[attr-defined]
                *_track_rows(tracker, common, threshold, decimals),
                common | {"status": "error"},
            ]
        raise
    finally:
        frames.close()  # the container, at once
        bar.close()
    name = None
    if writer is not None:
        try:
            name = annotated[1] if writer.close() else None
        except Exception as error:  # noqa: BLE001 - the rows matter more than the video
            writer.discard()
            notes.append(f"annotated video not written ({error_text(error)})")
    if sampled == 0:
        reason = stopped or f"{path}: the video has no frame to decode (an empty video?)"
        return [{"video": str(path), "status": "error", "error": reason}]
    if failed:
        notes.insert(0, f"{failed} of {sampled} sampled frames failed, the first {first_failure}")
    if stopped:
        notes.append(stopped)
    common = {"video": str(path), "error": "; ".join(notes) or None, "annotated": name}
    rows = _track_rows(tracker, common, threshold, decimals)
    if stopped:  # the tracks up to the error, and a row that says where decoding stopped
        rows.append(common | {"status": "error", "error": stopped})
    if not rows:
        reason = "; ".join([f"no face found in {sampled} sampled frames", *notes])
        rows = [common | {"status": "no_face", "error": reason}]
    return rows


def _track_rows(
    tracker: FaceTracker, common: dict[str, Any], threshold: float, decimals: Decimals
) -> list[dict[str, Any]]:
    """One row per track so far, in order of first appearance, each with ``common``'s values."""
    return [
        common
        | {
            "track": track.number,
            "status": "ok",
            "first_s": round(track.first_s, 3),
            "last_s": round(track.last_s, 3),
            "frames": track.frames,
            "p_male_mean": decimals.probability_value(track.mean, threshold),
            "p_male_std": decimals.probability_value(track.std),
            "label": label_of(track.mean, threshold),
        }
        for track in tracker.tracks()
    ]
