"""predict.py on a folder of mixed real photos, alignment, EXIF, ONNX parity, framing."""

from __future__ import annotations

import json
import re
import shutil
import sys
import weakref
from pathlib import Path

import forked_python
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SAMPLE, run_script
from hydra import compose, initialize_config_dir
from PIL import Image

from celeba_gender.config import CONFIG_DIR
from celeba_gender.inference import (
    FaceAligner,
    GenderPredictor,
    PhotoError,
    drawing,
    labelling,
    load_photo,
)
from celeba_gender.inference import run as predict_run
from celeba_gender.inference.framing import Framing, reframe, smooth_background

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships photos")
SAMPLE_IMAGES = sorted((SAMPLE / "img_align_celeba").glob("*.jpg"))


@pytest.fixture(scope="module")
def checkpoint(smoke_run) -> Path:
    return smoke_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Aligned crops, a re-framed face, real uncropped portraits (scikit-image's astronaut and
    cameraman), a photo with no face, and broken files."""
    folder = tmp_path_factory.mktemp("photos")
    for source in SAMPLE_IMAGES[:2]:
        shutil.copy(source, folder / source.name)
    rng = np.random.default_rng(0)
    reframe(Image.open(SAMPLE_IMAGES[2]), Framing(), rng).save(folder / "reframed.png")
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.jpg", quality=92)
    Image.fromarray(skimage_data.camera()).save(folder / "cameraman.png")
    smooth_background((400, 300), rng).save(folder / "no_face.webp")
    (folder / "truncated.jpg").write_bytes(SAMPLE_IMAGES[3].read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    # 9 megapixels of one colour: a few kilobytes on disk, over the limit the run is given.
    Image.new("L", (3000, 3000)).save(folder / "bomb.png")
    (folder / "notes.txt").write_text("not a photo: ignored by the folder listing")
    return folder


@pytest.fixture(scope="module")
def predicted(checkpoint, mixed_folder, run_env, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("predict")
    result = run_script(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input={mixed_folder}",
        "annotate=true",
        "max_pixels=4000000",
        f"hydra.run.dir={output}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_predict_labels_a_mixed_folder_without_stopping(predicted, mixed_folder):
    table = pd.read_csv(predicted / "predictions.csv")
    status = table.groupby(table["photo"].map(lambda p: Path(p).name))["status"].agg(set)
    expected_ok = [SAMPLE_IMAGES[0].name, SAMPLE_IMAGES[1].name, "reframed.png", "astronaut.jpg",
                   "cameraman.png"]  # fmt: skip
    for name in expected_ok:
        assert status[name] == {"ok"}, name
    assert status["no_face.webp"] == {"no_face"}
    for broken in ("truncated.jpg", "empty.png", "bomb.png"):
        assert status[broken] == {"error"}, broken
    assert "notes.txt" not in status
    errors = table.set_index(table["photo"].map(lambda p: Path(p).name))["error"]
    assert "bomb.png" in errors["bomb.png"] and "max_pixels" in errors["bomb.png"]
    assert "not a readable" in errors["truncated.jpg"]
    ok = table[table["status"] == "ok"]
    assert ok["p_male"].between(0, 1).all()
    assert (ok["label"] == np.where(ok["p_male"] > 0.5, "male", "female")).all()
    for row in ok.itertuples():
        width, height = Image.open(row.photo).size
        assert -5 <= row.x1 < row.x2 <= width + 5 and -5 <= row.y1 < row.y2 <= height + 5
    # The portraits' one face each, where it is: the astronaut's face is in the upper middle.
    astronaut = ok[ok["photo"].str.endswith("astronaut.jpg")].iloc[0]
    assert 150 < (astronaut.x1 + astronaut.x2) / 2 < 300 and (astronaut.y1 + astronaut.y2) / 2 < 200
    records = json.loads((predicted / "predictions.json").read_text())
    assert len(records) == len(table)
    assert (predicted / "gallery.png").stat().st_size > 10_000
    annotated = {p.name for p in (predicted / "annotated").iterdir()}
    assert annotated == {*expected_ok, "no_face.webp"}


def test_predict_rounds_probabilities_and_boxes_as_configured(predicted):
    """predictions.csv and .json give P(male) and the detector's score to 4 decimals and box
    corners to 1 (conf/predict.yaml's decimals), not 16-digit floats."""
    text = (predicted / "predictions.csv").read_text().splitlines()
    table = pd.read_csv(predicted / "predictions.csv", dtype=str)
    ok = table[table["status"] == "ok"]
    assert len(ok) >= 5
    for columns, places in ((["p_male", "detector_score"], 4), (["x1", "y1", "x2", "y2"], 1)):
        for column in columns:
            decimals = ok[column].str.partition(".")[2].str.len()
            assert (decimals <= places).all(), (column, ok[column].tolist())
    assert not any(re.search(r"\d\.\d{5,}", line) for line in text)  # no 17-digit numbers
    for record in json.loads((predicted / "predictions.json").read_text()):
        if record["status"] == "ok":
            assert record["p_male"] == round(record["p_male"], 4)
            assert record["x1"] == round(record["x1"], 1)


@pytest.mark.parametrize(
    ("p_male", "threshold", "places", "shown"),
    [(0.50004, 0.5, 4, 0.5001), (0.49996, 0.5, 4, 0.5), (0.30004, 0.3, 4, 0.3001),
     (0.3333334, 1 / 3, 4, 0.3334), (0.87654321, 0.5, 4, 0.8765), (0.5000001, 0.5, 0, 1),
     (0.4, 0.5, 0, 0), (0.50004, 0.5, None, 0.50004), (0.476, 0.478, 2, 0.47),
     (0.7, 0.8, 0, 0)],
)  # fmt: skip
def test_a_rounded_p_male_never_reads_as_the_other_label(p_male, threshold, places, shown):
    """Labels are decided on the unrounded P(male); the number shown beside a label stays on
    its side of the threshold (0.50004 male is 0.5001, not 0.5, which reads female)."""
    row = {"p_male": p_male, "label": labelling.label_of(p_male, threshold)}
    labelling.Decimals(probability=places).rounded(row, threshold)
    assert row["p_male"] == shown
    assert labelling.label_of(row["p_male"], threshold) == row["label"]


def _label_height(size: int) -> int:
    """The height in pixels of the label drawn above a 60-pixel face box on a grey photo of
    ``size`` x ``size`` pixels: the rows above the box that the label changed."""
    photo = Image.new("RGB", (size, size), (128, 128, 128))
    box = {"x1": size / 2, "y1": size / 2, "x2": size / 2 + 60, "y2": size / 2 + 60}
    row = {"status": "ok", "label": "male", "p_male": 0.87654321, **box}
    drawn = np.asarray(drawing.annotate(photo, [row]), dtype=int)
    above = np.abs(drawn - 128).sum(axis=2)[: int(box["y1"]) - 3] > 0
    return int(above.any(axis=1).sum())


def test_box_labels_grow_with_the_photo():
    """A face of the same size gets a label readable on a 512-pixel photo and one in
    proportion on a 4000-pixel photo (where a fixed size would be a speck)."""
    small, large = _label_height(512), _label_height(4000)
    assert small >= 16, small
    assert large >= 6 * small, (small, large)
    assert drawing.label_font_size((4000, 3000)) > 7 * drawing.label_font_size((512, 384))


def _difference(picture: Path, source: Path) -> float:
    """Mean absolute pixel difference of two photos, on the source's size."""
    original = Image.open(source).convert("RGB")
    other = Image.open(picture).convert("RGB").resize(original.size)
    return float(np.abs(np.asarray(other, float) - np.asarray(original, float)).mean())


def test_photos_with_one_name_get_distinct_annotated_copies(checkpoint, run_env, tmp_path):
    """a.jpg and a.png, and b.jpg in two folders: four copies, each row naming its own."""
    folder = tmp_path / "photos"
    sources = {
        folder / "a.jpg": SAMPLE_IMAGES[0],
        folder / "a.png": SAMPLE_IMAGES[1],
        folder / "one" / "b.jpg": SAMPLE_IMAGES[2],
        folder / "two" / "b.jpg": SAMPLE_IMAGES[3],
    }
    for photo, source in sources.items():
        photo.parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).save(photo)
    output = tmp_path / "out"
    result = run_script(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input=[{folder},{folder / 'one'},{folder / 'two'}]",
        "detect=false",
        "annotate=true",
        f"hydra.run.dir={output}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    copies = {p.name for p in (output / "annotated").iterdir()}
    assert len(copies) == len(sources)  # none overwritten
    table = pd.read_csv(output / "predictions.csv")
    assert sorted(map(Path, table["photo"])) == sorted(sources)
    assert table["annotated"].is_unique
    assert {Path(name).name for name in table["annotated"]} == copies
    for row in table.itertuples():
        # The row's copy is its own photo (boxes and labels drawn on it), not another one.
        differences = {
            source: _difference(output / row.annotated, source) for source in sources.values()
        }
        assert min(differences, key=differences.get) == sources[Path(row.photo)], row.photo
    records = json.loads((output / "predictions.json").read_text())
    assert [r["annotated"] for r in records] == list(table["annotated"])


def test_output_names_stay_distinct_when_flattened_names_clash(tmp_path):
    paths = [
        tmp_path / "x" / "a.jpg",
        tmp_path / "x__a.jpg",
        tmp_path / "A.JPG",
        tmp_path / "a.jpg",
    ]
    names = predict_run.output_names(paths)
    assert len({name.casefold() for name in names.values()}) == len(paths)
    assert names[paths[0]] == "x__a.jpg" and names[paths[2]] == "A.JPG"  # readable when free
    assert all(Path(name).suffix.lower() == ".jpg" for name in names.values())


def test_predict_streams_photos_and_caps_the_gallery(checkpoint, tmp_path, monkeypatch):
    """Photos are let go batch by batch and rows written as they come: however many photos,
    at most one batch (and the one being written) is held; the gallery keeps a few."""
    count, batch_size, shown = 40, 4, 3
    folder = tmp_path / "many"
    folder.mkdir()
    for source in SAMPLE_IMAGES[:count]:
        shutil.copy(source, folder / source.name)
    output = tmp_path / "out"
    decoded: list[weakref.ref] = []  # every photo read; alive until predict lets it go
    peak, written = 0, []
    real_load_photo = labelling.load_photo

    def load_photo_counted(path: Path, max_pixels: int) -> Image.Image:
        nonlocal peak
        csv_path = output / "predictions.csv"
        written.append(pd.read_csv(csv_path)["photo"].nunique() if csv_path.exists() else 0)
        photo = real_load_photo(path, max_pixels)
        decoded.append(weakref.ref(photo))
        peak = max(peak, sum(ref() is not None for ref in decoded))
        return photo

    monkeypatch.setattr(labelling, "load_photo", load_photo_counted)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                f"ckpt_path={checkpoint}",
                f"input={folder}",
                f"paths.output_dir={output}",
                f"batch_size={batch_size}",
                f"gallery_max_photos={shown}",
                "annotate=true",
            ],
        )
    predict_run.predict(cfg)
    table = pd.read_csv(output / "predictions.csv")
    assert table["photo"].nunique() == count
    assert len(list((output / "annotated").iterdir())) == count
    assert peak <= batch_size + 1
    assert written[-1] >= count - batch_size  # rows of earlier batches already on disk
    assert len(json.loads((output / "predictions.json").read_text())) == len(table)
    # The gallery: one row of ``shown`` cells, not ``count`` photos.
    width, height = Image.open(output / "gallery.png").size
    cell_width, cell_height = (inches * drawing.GALLERY_DPI for inches in drawing.GALLERY_CELL)
    assert (width, height) == (round(shown * cell_width), round(cell_height))


def test_detect_false_gives_the_test_predictions_of_the_run(
    smoke_run, checkpoint, run_env, tmp_path
):
    tested = pd.read_csv(smoke_run / "test_predictions.csv")
    folder = tmp_path / "crops"
    folder.mkdir()
    for name in tested["file_name"]:
        shutil.copy(SAMPLE / "img_align_celeba" / name, folder / name)
    result = run_script(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input={folder}",
        "detect=false",
        "gallery=false",
        f"hydra.run.dir={tmp_path / 'out'}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = pd.read_csv(tmp_path / "out" / "predictions.csv")
    predicted["file_name"] = predicted["photo"].map(lambda p: Path(p).name)
    joined = tested.merge(predicted, on="file_name", suffixes=("_test", "_predict"))
    assert len(joined) == len(tested)
    # predict's P(male) is rounded to decimals.probability (4): equal within that rounding.
    np.testing.assert_allclose(joined["p_male_test"], joined["p_male_predict"], atol=5e-5 + 1e-5)


def test_alignment_puts_the_eyes_where_celeba_has_them():
    aligner = FaceAligner.from_config()
    rng = np.random.default_rng(1)
    errors = []
    for source in SAMPLE_IMAGES[:12]:
        photo = reframe(Image.open(source), Framing(), rng)
        faces = aligner.find(photo)
        if not faces:
            continue
        again = aligner.find(faces[0].crop)  # landmarks of the aligned crop itself
        errors.append(np.abs(again[0].landmarks[:2] - aligner.template[:2]).max())
    assert len(errors) >= 10  # faces found in re-framed, rotated photos
    assert np.median(errors) < 4.0  # pixels of the 178x218 frame


def test_exif_orientation_is_respected(tmp_path):
    original = Image.open(SAMPLE_IMAGES[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the stored pixels lie on their side
    sideways = original.transpose(Image.Transpose.ROTATE_90)
    sideways.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    upright = load_photo(tmp_path / "sideways.jpg", 10_000_000)
    assert upright.size == original.size
    difference = np.abs(np.asarray(upright, float) - np.asarray(original, float)).mean()
    assert difference < 4  # the same picture, up to JPEG re-compression


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable"), (b"\x89PNG\r\n\x1a\n broken", "not a readable")],
)
def test_unreadable_photos_raise_a_message_naming_the_file(tmp_path, content, message):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(PhotoError, match=message) as error:
        load_photo(path, 10_000_000)
    assert str(path) in str(error.value)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> tuple[Path, str]:
    """The checkpoint exported by the command: (the .onnx file, what it printed)."""
    pytest.importorskip("onnxruntime", reason="the predict extra installs onnxruntime")
    onnx_path = tmp_path_factory.mktemp("export") / "model.onnx"
    result = forked_python.run(
        [sys.executable, "-m", "celeba_gender.inference.export", str(checkpoint), str(onnx_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return onnx_path, result.stdout


def test_onnx_export_matches_pytorch_and_predict_runs_on_it(
    checkpoint, exported, run_env, tmp_path
):
    onnx_path, _ = exported
    crops = [Image.open(p).convert("RGB") for p in SAMPLE_IMAGES[:20]]
    torch_p = GenderPredictor.load(checkpoint).predict(crops)
    onnx_predictor = GenderPredictor.load(onnx_path, batch_size=7)  # uneven batches: dynamic axis
    onnx_p = onnx_predictor.predict(crops)
    assert onnx_p.shape == torch_p.shape == (20,)
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)
    # The settings predict's transform is built from; not training's cache_size.
    settings = GenderPredictor.load(checkpoint).eval_transform
    assert onnx_predictor.eval_transform == {k: v for k, v in settings.items() if k != "cache_size"}
    output = tmp_path / "out"
    result = run_script(
        "predict.py",
        f"ckpt_path={onnx_path}",
        f"input={SAMPLE_IMAGES[0]}",
        "detect=false",
        f"hydra.run.dir={output}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = pd.read_csv(output / "predictions.csv").iloc[0]
    assert row["p_male"] == pytest.approx(float(torch_p[0]), abs=1e-4)


def _apply_preprocessing(image: Image.Image, preprocessing: dict) -> np.ndarray:
    """An export's metadata preprocessing, done with plain PIL and numpy: (3, H, W) float32."""
    assert image.mode == preprocessing["input"]["mode"] == "RGB"
    assert image.size == (preprocessing["input"]["width"], preprocessing["input"]["height"])
    channels = [np.asarray(channel, dtype=np.float32) for channel in image.split()]
    for step in preprocessing["steps"]:
        if step["op"] == "crop":
            top, left, height, width = (step[k] for k in ("top", "left", "height", "width"))
            channels = [c[top : top + height, left : left + width] for c in channels]
        elif step["op"] == "to_float":
            assert step["dtype"] == "float32"
            channels = [c / np.float32(step["divide_by"]) for c in channels]
        elif step["op"] == "resize":
            assert step["antialias"]  # PIL's resize is antialiased
            size = (step["width"], step["height"])
            filter_ = Image.Resampling[step["interpolation"].upper()]
            channels = [
                np.asarray(Image.fromarray(c, mode="F").resize(size, filter_)) for c in channels
            ]
        elif step["op"] == "normalize":
            channels = [
                (c - m) / s for c, m, s in zip(channels, step["mean"], step["std"], strict=True)
            ]
        else:
            raise AssertionError(f"unknown step {step}")
    assert preprocessing["layout"].startswith("NCHW float32")
    return np.stack(channels).astype(np.float32)


def test_export_says_what_it_made_and_its_metadata_preprocessing_reproduces_predict(
    checkpoint, exported
):
    """The command prints the input and output (names, shapes, the batch axis), predict's
    preprocessing and a parity check on real faces; the file's metadata holds them (no
    cache_size: predict resizes once), and that preprocessing done with PIL and numpy, fed to
    onnxruntime, gives predict's P(male)."""
    import onnxruntime

    from celeba_gender.inference.export import INPUTS_KEY, OUTPUTS_KEY, PARITY_KEY
    from celeba_gender.inference.export import PREPROCESSING_KEY as PREPROCESSING

    onnx_path, printed = exported
    size = GenderPredictor.load(checkpoint).eval_transform["image_size"]
    lines = printed.splitlines()
    assert lines[0] == f"exported: {onnx_path}"
    assert f"input: images float32 [batch, 3, {size}, {size}] (batch: any from 1 to 4096)" in lines
    assert "output: p_male float32 [batch] (batch: any from 1 to 4096)" in lines
    (parity_line,) = [line for line in lines if line.startswith("parity:")]
    match = re.match(
        r"parity: max \|P\(male\) difference\| (\S+) on 8 images of (.+?) \(", parity_line
    )
    assert match, parity_line
    assert float(match[1]) < 1e-4 and Path(match[2]) == SAMPLE / "img_align_celeba"
    assert any(line.startswith("  resize to") and "bilinear" in line for line in lines)

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    assert not [key for key, value in metadata.items() if "cache_size" in key + value]
    inputs, outputs = json.loads(metadata[INPUTS_KEY]), json.loads(metadata[OUTPUTS_KEY])
    assert [(v["name"], v["shape"]) for v in inputs] == [("images", ["batch", 3, size, size])]
    assert [(v["name"], v["shape"]) for v in outputs] == [("p_male", ["batch"])]
    assert inputs[0]["batch_axis"] == {"name": "batch", "index": 0, "min": 1, "max": 4096}
    # ... as the graph itself says
    assert [(v.name, v.shape) for v in session.get_inputs()] == [
        (i["name"], i["shape"]) for i in inputs
    ]
    assert [(v.name, v.shape) for v in session.get_outputs()] == [("p_male", ["batch"])]
    parity = json.loads(metadata[PARITY_KEY])
    assert parity["images"] == 8 and parity["max_abs_diff_p_male"] == pytest.approx(
        float(match[1]), rel=0.01
    )
    assert parity["tolerance"] == 1e-3

    preprocessing = json.loads(metadata[PREPROCESSING])
    assert [step["op"] for step in preprocessing["steps"]] == [
        "crop",
        "to_float",
        "resize",
        "normalize",
    ]
    resize = preprocessing["steps"][2]
    assert (resize["height"], resize["width"], resize["interpolation"]) == (size, size, "bilinear")
    crops = [Image.open(path).convert("RGB") for path in SAMPLE_IMAGES[20:30]]
    batch = np.stack([_apply_preprocessing(crop, preprocessing) for crop in crops])
    (by_hand,) = session.run(["p_male"], {"images": batch})
    np.testing.assert_allclose(by_hand, GenderPredictor.load(checkpoint).predict(crops), atol=1e-4)


def test_an_export_that_differs_from_its_checkpoint_is_refused_and_not_written(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """A translation that changes the model (here: the exporter handed a model whose P(male)
    is halved) fails the parity check at the configured tolerance: one clear error, and no
    file (nor a temporary one) left."""
    pytest.importorskip("onnxruntime", reason="the predict extra installs onnxruntime")
    import torch

    from celeba_gender.inference.export import main

    translate = torch.onnx.export

    class Halved(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images) * 0.5

    def mistranslate(model, *args, **kwargs):
        return translate(Halved(model), *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", mistranslate)
    assert main([str(checkpoint), str(tmp_path / "model.onnx")]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1, printed.err
    assert re.search(r"differs from the checkpoint's by up to \S+ on 8 photos", printed.err)
    assert "export.parity_tolerance=0.001" in printed.err and "nothing written" in printed.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["input=/no/such/*.jpg"], "matches no photo"),
        (["ckpt_path=/no/such/best.ckpt", "input=."], "does not exist"),
    ],
)
def test_predict_mistakes_end_with_a_clear_message(
    checkpoint, run_env, tmp_path, overrides, message
):
    arguments = [f"ckpt_path={checkpoint}", *overrides, f"hydra.run.dir={tmp_path / 'out'}"]
    result = run_script("predict.py", *arguments, env=run_env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_file_that_is_not_a_checkpoint_is_refused_clearly(run_env, tmp_path):
    fake = tmp_path / "best.ckpt"
    fake.write_text("not a checkpoint")
    result = run_script(
        "predict.py", f"ckpt_path={fake}", f"input={SAMPLE_IMAGES[0]}",
        f"hydra.run.dir={tmp_path / 'out'}", env=run_env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a readable celeba-gender checkpoint" in result.stderr
