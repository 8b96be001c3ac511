"""predict.py on videos: frames sampled, faces linked into tracks, one row per track."""

from __future__ import annotations

import json
import os
import signal
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_script
from hydra import compose, initialize_config_dir
from PIL import Image

from celeba_gender.config import CONFIG_DIR
from celeba_gender.data import DataError
from celeba_gender.inference import FaceAligner, GenderPredictor
from celeba_gender.inference import run as predict_run
from celeba_gender.inference import video as video_module
from celeba_gender.inference.framing import smooth_background
from celeba_gender.inference.video import (
    FaceTracker,
    VideoSettings,
    box_iou,
    frame_signature,
    is_cut,
)
from celeba_gender.models.checkpoints import load_classifier

av = pytest.importorskip("av", reason="the video extra installs PyAV")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships photos")

FPS = 10
SIZE = (320, 240)  # width, height of the test videos


@pytest.fixture(scope="module")
def portraits() -> dict[str, Image.Image]:
    """Two real uncropped portraits, 240x240: a woman (the astronaut) and a man (the
    cameraman)."""
    return {
        "female": Image.fromarray(skimage_data.astronaut()).resize((240, 240), Image.LANCZOS),
        "male": Image.fromarray(skimage_data.camera()).convert("RGB").resize((240, 240)),
    }


def frame_with(portrait: Image.Image | None, x: int) -> Image.Image:
    """A 320x240 frame: a fixed face-free background, the portrait pasted at ``x``."""
    frame = smooth_background(SIZE, np.random.default_rng(7))
    if portrait is not None:
        frame.paste(portrait, (x, 0))
    return frame


def write_video(path: Path, frames, codec: str = "libx264") -> None:
    """Encode PIL frames at FPS with PyAV (the container from the suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode(None))


def scene_frames(portraits):
    """8 s at 10 fps: the woman 0-2 s (moving right, missing at 1.0 s: a blink of the
    detector), nobody 2-3 s, the man 3-5 s (moving left) elsewhere in the frame, nobody 5-6 s,
    the woman again 6-8 s."""
    for number in range(8 * FPS):
        second = number / FPS
        if second < 2 and number != 10:
            yield frame_with(portraits["female"], 2 * number)
        elif 3 <= second < 5:
            yield frame_with(portraits["male"], 80 - 2 * (number - 30))
        elif second >= 6:
            yield frame_with(portraits["female"], 40)
        else:
            yield frame_with(None, 0)


@pytest.fixture(scope="module")
def known_checkpoint(smoke_run, portraits, tmp_path_factory) -> Path:
    """The smoke model with its last layer fitted to these two people (woman: P(male) low, man:
    high). The smoke model itself answers ~0.5 for everyone; this one's answers on them are
    known, so the video test can check that each track carries its person's label."""
    source = smoke_run / "checkpoints" / "best.ckpt"
    aligner = FaceAligner.from_config()
    predictor = GenderPredictor.load(source)
    crops, labels = [], []
    for label, (gender, portrait) in enumerate(sorted(portraits.items())):  # female 0, male 1
        assert gender == ("female", "male")[label]
        for x in (0, 40, 80):
            faces = aligner.find(frame_with(portrait, x))
            crops += [face.crop for face in faces[:1]]
            labels += [float(label)] * len(faces[:1])
    assert len(crops) == 6
    model = load_classifier(source).eval()
    layer = model.net.fc
    features = []
    hook = layer.register_forward_pre_hook(lambda _, inputs: features.append(inputs[0]))
    with torch.no_grad():
        model(predictor.tensors(crops))
    hook.remove()
    inputs, targets = features[0].detach(), torch.tensor(labels)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        p_male = model.head.male_probability(inputs @ weight.T + bias).clamp(1e-6, 1 - 1e-6)
        torch.nn.functional.binary_cross_entropy(p_male, targets).backward()
        optimizer.step()
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["net.fc.weight"] = weight.detach()
    checkpoint["state_dict"]["net.fc.bias"] = bias.detach()
    target = tmp_path_factory.mktemp("known") / "known.ckpt"
    torch.save(checkpoint, target)
    fitted = GenderPredictor.load(target).predict(crops)
    assert (fitted[:3] < 0.2).all() and (fitted[3:] > 0.8).all(), fitted
    return target


@pytest.fixture(scope="module")
def video_folder(portraits, tmp_path_factory) -> Path:
    """The scene as MP4 (H.264), the man alone as MKV (MPEG-4), a photo, and bad videos."""
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "scene.mp4", scene_frames(portraits))
    write_video(folder / "man.mkv", (frame_with(portraits["male"], 40) for _ in range(10)), "mpeg4")
    portraits["female"].save(folder / "astronaut.jpg", quality=92)
    data = (folder / "scene.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])  # no index (moov) left
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.webm").write_text("not a video\n")
    with av.open(str(folder / "no_frames.avi"), "w") as container:  # a stream, no frame
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height = SIZE
        container.start_encoding()
    return folder


def test_a_video_gets_one_row_per_track_with_its_times_and_label(
    known_checkpoint, video_folder, portraits, run_env, tmp_path
):
    output = tmp_path / "out"
    result = run_script(
        "predict.py",
        f"ckpt_path={known_checkpoint}",
        f"input={video_folder}",
        "video.annotate_video=true",
        f"hydra.run.dir={output}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    tracks = pd.read_csv(output / "tracks.csv")
    tracks["name"] = tracks["video"].map(lambda p: Path(p).name)
    scene = tracks[tracks["name"] == "scene.mp4"].sort_values("track")
    # The woman, the man, the woman again: three tracks (no re-identification), and the
    # detector's one-frame miss at 1.0 s does not split the first.
    assert list(scene["status"]) == ["ok"] * 3
    assert list(scene["track"]) == [1, 2, 3]
    assert list(scene["label"]) == ["female", "male", "female"]
    np.testing.assert_allclose(scene["first_s"], [0.0, 3.0, 6.0], atol=0.05)
    np.testing.assert_allclose(scene["last_s"], [1.8, 4.8, 7.8], atol=0.05)
    assert list(scene["frames"]) == [9, 10, 10]  # sampled at 5 fps; one frame without a face
    assert (scene["p_male_std"] < 0.1).all() and (scene["p_male_std"] >= 0).all()
    assert scene["p_male_mean"].iloc[1] > 0.8 > 0.2 > scene["p_male_mean"].iloc[[0, 2]].max()
    # Another container and codec: one track, the man's.
    man = tracks[tracks["name"] == "man.mkv"]
    assert list(man[["status", "frames", "label"]].itertuples(index=False)) == [("ok", 5, "male")]
    # Each bad video has one row that says why; the run went on.
    status = tracks.groupby("name")["status"].agg(list).to_dict()
    errors = tracks.set_index("name")["error"]
    for name in ("truncated.mp4", "empty.mp4", "notes.webm", "no_frames.avi"):
        assert status[name] == ["error"], name
        assert name in errors[name]
    assert "not a readable video" in errors["truncated.mp4"]
    assert "no frame" in errors["no_frames.avi"]
    # The photo in the same folder: predictions.csv, as always; videos are not in it.
    photos = pd.read_csv(output / "predictions.csv")
    assert list(photos["photo"].map(lambda p: Path(p).name)) == ["astronaut.jpg"]
    assert list(photos["label"]) == ["female"]
    records = json.loads((output / "tracks.json").read_text())
    assert len(records) == len(tracks)
    scene_records = [r for r in records if r["video"].endswith("scene.mp4")]
    assert [(r["track"], r["label"]) for r in scene_records] == list(
        zip(scene["track"], scene["label"], strict=True)
    )
    # The annotated scene: the 40 sampled frames, boxes drawn on them.
    annotated = output / scene["annotated"].iloc[0]
    assert annotated.name == "scene_mp4.mp4"
    with av.open(str(annotated)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    assert len(frames) == 40 and frames[0].size == SIZE
    first = np.asarray(frames[0], float)
    plain = np.asarray(frame_with(portraits["female"], 0), float)
    assert np.abs(first - plain).max() > 100  # a box and a label drawn
    assert np.abs(first - plain).mean() < 20  # on that frame


def _every_frame_config(checkpoint: Path, video: Path, output: Path):
    """predict's config for one video: every frame, 4 at a time, the whole frame as the face
    (detect=false: fast, one face per frame)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "predict",
            overrides=[
                f"ckpt_path={checkpoint}",
                f"input={video}",
                f"paths.output_dir={output}",
                "batch_size=4",
                "detect=false",
                "video.sample_fps=null",
            ],
        )


def test_frames_are_streamed_not_kept(known_checkpoint, portraits, tmp_path, monkeypatch):
    """A 20 s video sampled at every frame: at most one batch of frames is held at once."""
    path = tmp_path / "long.mp4"
    write_video(path, (frame_with(portraits["male"], 40) for _ in range(20 * FPS)))
    decoded: list[weakref.ref] = []
    peak = 0
    real_frame_image = video_module.frame_image

    def frame_image_counted(frame) -> Image.Image:
        nonlocal peak
        picture = real_frame_image(frame)
        decoded.append(weakref.ref(picture))
        peak = max(peak, sum(ref() is not None for ref in decoded))
        return picture

    monkeypatch.setattr(video_module, "frame_image", frame_image_counted)
    output = tmp_path / "out"
    cfg = _every_frame_config(known_checkpoint, path, output)
    predict_run.predict(cfg)
    assert len(decoded) == 20 * FPS
    assert peak <= 4 + 1
    tracks = pd.read_csv(output / "tracks.csv")
    assert list(tracks[["track", "frames"]].itertuples(index=False)) == [(1, 20 * FPS)]
    assert tracks["last_s"].iloc[0] == pytest.approx(19.9, abs=0.01)


def test_sample_fps_picks_frames_on_its_grid(portraits, tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, (frame_with(None, 0) for _ in range(3 * FPS)))
    times = [t for t, _, _ in video_module.sampled_frames(path, 2.5)]
    np.testing.assert_allclose(times, [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8], atol=1e-6)
    assert len(list(video_module.sampled_frames(path, None))) == 3 * FPS
    assert len(list(video_module.sampled_frames(path, 100))) == 3 * FPS  # never more


def test_tracker_links_by_overlap_and_ends_tracks_after_the_gap():
    tracker = FaceTracker(min_iou=0.3, max_gap_s=1.0)
    left, right = (0, 0, 50, 50), (200, 0, 250, 50)
    assert tracker.update(0.0, [left, right], [0.1, 0.9]) == [1, 2]
    # Listed in the other order, moved a little: each face keeps its track.
    assert tracker.update(0.2, [(205, 0, 255, 50), (5, 0, 55, 50)], [0.7, 0.3]) == [2, 1]
    assert tracker.update(1.1, [(205, 0, 255, 50)], [0.8]) == [2]  # 0.9 s unseen: kept
    assert tracker.update(1.3, [(5, 0, 55, 50)], [0.2]) == [3]  # 1.1 s unseen: a new track
    assert tracker.update(1.4, [(150, 100, 190, 140)], [0.5]) == [4]  # no overlap: new
    first, second, *_ = tracker.tracks()
    assert (first.first_s, first.last_s, first.frames) == (0.0, 0.2, 2)
    assert first.mean == pytest.approx(0.2) and first.std == pytest.approx(np.std([0.1, 0.3]))
    assert second.frames == 3 and second.std == pytest.approx(np.std([0.9, 0.7, 0.8]))
    assert box_iou(np.array([left]), np.array([left, right])).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sample_fps", 0, "video.sample_fps=0: it must be a number > 0"),
        ("min_iou", 1.5, "video.min_iou=1.5: it must be a number > 0 and <= 1"),
        ("max_gap_s", -1, "video.max_gap_s=-1: it must be a number >= 0"),
        ("annotate_video", "yes", "video.annotate_video='yes': it must be true or false"),
        ("min_similarity", 2, "video.min_similarity=2: it must be a number >= -1 and <= 1"),
        ("cut_threshold", 0, "video.cut_threshold=0: it must be a number > 0 and <= 1"),
    ],
)
def test_bad_video_settings_are_refused_by_name(key, value, message):
    settings = {"sample_fps": 5, "max_gap_s": 1.0, "min_iou": 0.3, "annotate_video": False}
    settings |= {"min_similarity": 0.7, "cut_threshold": 0.2}
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        VideoSettings.from_config(settings | {key: value})


def test_video_settings_left_out_take_their_defaults():
    assert VideoSettings.from_config({"min_iou": 0.5}) == VideoSettings(min_iou=0.5)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_phone_videos_display_rotation_is_applied(portraits, tmp_path, rotation):
    """A phone stores its video sideways with a display rotation: the frames are looked at as
    a player shows them, upright, not as stored (MTCNN would see sideways faces)."""
    upright = frame_with(portraits["female"], 40)
    stored = upright.rotate(-rotation, expand=True)  # what the display rotation undoes
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = stored.size
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(rotation)
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_image(stored)))
        container.mux(stream.encode(None))
    frames = [frame for _, frame, _ in video_module.sampled_frames(path, None)]
    assert len(frames) == 3 and frames[0].size == upright.size
    difference = np.abs(np.asarray(frames[0], float) - np.asarray(upright, float))
    assert difference.mean() < 5


def test_a_stop_midway_keeps_the_videos_tracks_so_far(
    known_checkpoint, portraits, tmp_path, ctrl_c_reaches_this_process
):
    """Ctrl-C (a real SIGINT) while a video is being read: tracks.csv/.json get its tracks up
    to there, and a row saying where it stopped."""
    path = tmp_path / "long.mp4"
    write_video(path, (frame_with(portraits["male"], 40) for _ in range(6 * FPS)))
    real_frame_image = video_module.frame_image
    decoded = 0

    def frame_image_then_stop(frame) -> Image.Image:
        nonlocal decoded
        decoded += 1
        if decoded == 3 * FPS:  # 3 s in
            os.kill(os.getpid(), signal.SIGINT)
        return real_frame_image(frame)

    output = tmp_path / "out"
    cfg = _every_frame_config(known_checkpoint, path, output)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(video_module, "frame_image", frame_image_then_stop)
        with pytest.raises(predict_run.PredictionInterrupted):
            predict_run.predict(cfg)
    tracks = pd.read_csv(output / "tracks.csv")
    assert list(tracks["status"]) == ["ok", "error"]
    assert 2 * FPS <= tracks["frames"].iloc[0] < 3 * FPS
    assert tracks["track"].iloc[0] == 1 and tracks["label"].iloc[0] in ("female", "male")
    assert "stopped" in tracks["error"].iloc[1]
    assert len(json.loads((output / "tracks.json").read_text())) == 2


def test_two_faces_that_cross_keep_their_tracks():
    """Two people walking past each other, listed left to right as a detector does: each keeps
    its track (by its speed), instead of taking the other's once they have crossed."""
    tracker = FaceTracker(min_iou=0.3, max_gap_s=1.0)
    for step in range(11):
        woman, man = 20 * step, 200 - 20 * step  # they meet at step 5
        faces = sorted([((woman, 50, woman + 60, 110), 0.1), ((man, 50, man + 60, 110), 0.9)])
        numbers = tracker.update(step * 0.2, [box for box, _ in faces], [p for _, p in faces])
        assert {p: n for (_, p), n in zip(faces, numbers, strict=True)} == {0.1: 1, 0.9: 2}
    assert [(t.frames, t.mean) for t in tracker.tracks()] == [(11, 0.1), (11, 0.9)]


def _held_out_portraits(subset_root: Path, count: int) -> list[Image.Image]:
    """``count`` aligned CelebA test-part portraits of different celebrities, women and men in
    turn, scaled to the test videos' height."""
    partition = dict(
        line.split() for line in (subset_root / "Eval" / "list_eval_partition.txt").open()
    )
    identity = dict(line.split() for line in (subset_root / "Anno" / "identity_CelebA.txt").open())
    lines = (subset_root / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    male_column = lines[1].split().index("Male") + 1
    male = {row.split()[0]: row.split()[male_column] == "1" for row in lines[2:]}
    chosen: dict[bool, list[str]] = {False: [], True: []}
    seen = set()
    for path in sorted((subset_root / "img_align_celeba").glob("*.jpg")):
        name = path.name
        if partition.get(name) == "2" and identity[name] not in seen and "(" not in name:
            seen.add(identity[name])
            chosen[male[name]].append(name)
    names = [n for pair in zip(chosen[False], chosen[True], strict=False) for n in pair][:count]
    assert len(names) == count
    folder = subset_root / "img_align_celeba"
    return [Image.open(folder / n).convert("RGB").resize((196, 240), Image.LANCZOS) for n in names]


def test_people_shown_in_turn_at_the_same_place_get_one_track_each(
    known_checkpoint, subset_root, run_env, tmp_path
):
    """Ten held-out celebrities, one after another in the same place for 1 s each (a news or
    interview cut between people framed alike): ten tracks, not one per stretch of overlap."""
    people = _held_out_portraits(subset_root, 10)
    video = tmp_path / "videos" / "ten_people.mp4"
    video.parent.mkdir()
    write_video(video, (frame_with(person, 60) for person in people for _ in range(FPS)))
    output = tmp_path / "out"
    result = run_script(
        "predict.py",
        f"ckpt_path={known_checkpoint}",
        f"input={video}",
        f"hydra.run.dir={output}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tracks = pd.read_csv(output / "tracks.csv").sort_values("track")
    assert list(tracks["track"]) == list(range(1, 11))
    np.testing.assert_allclose(tracks["first_s"], np.arange(10.0), atol=0.05)
    np.testing.assert_allclose(tracks["last_s"], np.arange(10.0) + 0.8, atol=0.05)
    assert list(tracks["frames"]) == [5] * 10  # 5 fps: every sampled frame of each person


def test_a_scene_cut_ends_every_track_and_a_changed_face_is_not_linked():
    tracker = FaceTracker()  # predict's settings (conf/predict.yaml's video: block)
    assert (tracker.min_iou, tracker.min_similarity) == (0.3, 0.7)
    rng = np.random.default_rng(0)
    face, other = rng.normal(size=16), rng.normal(size=16)
    face, other = face / np.linalg.norm(face), other / np.linalg.norm(other)
    box = (10, 10, 60, 60)
    assert tracker.update(0.0, [box], [0.2], [face]) == [1]
    assert tracker.update(0.2, [box], [0.2], [face]) == [1]  # the same face: linked
    assert tracker.update(0.4, [box], [0.8], [other]) == [2]  # same place, another face
    assert tracker.update(0.6, [box], [0.8], [other], cut=True) == [3]  # a cut ends track 2
    assert [t.frames for t in tracker.tracks()] == [2, 1, 1]
    signature = frame_signature(Image.new("RGB", (64, 64), "black"))
    assert is_cut(signature, frame_signature(Image.new("RGB", (64, 64), "white")), 0.2)
    assert not is_cut(None, signature, 0.2) and not is_cut(signature, signature, 0.2)
