"""Heat maps (Grad-CAM, celeba_gender/inference/explain.py) of all ten backbones, both heads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE, run_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from celeba_gender.config import CONFIG_DIR
from celeba_gender.data.transforms import per_sample_transform
from celeba_gender.inference import GenderPredictor
from celeba_gender.inference import run as predict_run
from celeba_gender.inference.explain import (
    CropExplainer,
    ExplainUnavailable,
    class_activation_maps,
    face_caption,
    on_crop,
    overlay,
    picture_layout,
    target_layer_of,
)
from celeba_gender.models import GenderClassifier
from celeba_gender.models.backbones import model_names

pytest.importorskip("captum", reason="heat maps need captum (the explain extra)")
PORTRAITS = sorted((SAMPLE / "img_align_celeba").glob("*.jpg"))[:4]
# Input sides at which each network's strided layers sample the image symmetrically (odd
# sides for stride-2 convolutions, even for 2x2 pooling): there a flip-symmetric network is
# exactly mirror-equivariant. Small, so that VGG and ResNet-101 run in a second on a CPU.
SIDES = {"resnet": 97, "vgg": 96, "googlenet": 141, "inception_v3": 139}


def _side(name: str) -> int:
    return next(side for prefix, side in SIDES.items() if name.startswith(prefix))


def _model_config(name: str):
    return OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")


def flip_symmetric_model(name: str, loss: str, images: torch.Tensor) -> GenderClassifier:
    """A random-weight classifier whose kernels equal their mirror images, so that it sees an
    image and its mirror alike: the map of a mirror image must then be the mirrored map, which
    any slip in Grad-CAM's layer, reduction or resizing would break (VGG's first linear layer,
    which reads its feature grid cell by cell, is made symmetric too). Its batch norms are fitted
    to real faces (and their mirrors), as training would, so that activations carry the image
    rather than blowing up through 100 random layers."""
    torch.manual_seed(0)
    config = _model_config(name)
    model = GenderClassifier(
        name,
        loss,
        pretrained=False,
        scratch_kwargs=dict(config.get("scratch_kwargs") or {}),
        cam_target_layer=config.cam_target_layer,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # the plain mean over the fitting batch
        if name.startswith("vgg"):  # its first linear layer reads the 7x7 grid position by position
            grid = model.net.classifier[0].weight.view(-1, 512, 7, 7)
            grid.copy_((grid + grid.flip(-1)) / 2)
        model.train()
        model._logits(torch.cat([images, images.flip(-1)]))
    return model.eval()


def _portraits(side: int) -> torch.Tensor:
    transform = per_sample_transform(side, None, None, [0.5] * 3, [0.5] * 3, train=False)
    return torch.stack([transform(Image.open(path).convert("RGB")) for path in PORTRAITS])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# Every backbone with the BCE head; the CE head (same target layer, another logit) on one
# backbone of each kind of last layer, to keep the suite's time.
BACKBONES_AND_HEADS = [(name, "bce") for name in model_names()] + [
    ("resnet18", "ce"),
    ("vgg11", "ce"),
    ("googlenet", "ce"),
]


@pytest.mark.parametrize(("name", "loss"), BACKBONES_AND_HEADS)
def test_maps_follow_the_face_for_every_backbone(name, loss):
    images = _portraits(_side(name))
    model = flip_symmetric_model(name, loss, images)
    maps = class_activation_maps(model, torch.cat([images, images.flip(-1)]))
    count = len(images)
    assert maps.shape == (2 * count, *images.shape[-2:]) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    spread = maps.std(axis=(1, 2))
    shown = [i for i in range(count) if spread[i] > 0.05]
    assert len(shown) >= count - 1, f"{name}/{loss}: near-constant maps {spread.round(3)}"
    for i in shown:  # the mirror image's map is this map mirrored
        mirrored = maps[count + i][:, ::-1]
        assert _correlation(maps[i], mirrored) > 0.99, (name, loss, i)
        assert np.abs(maps[i] - mirrored).max() < 0.02, (name, loss, i)
    # ... and another face's map is another map (aligned faces: alike, never the same).
    for i in shown:
        for j in shown:
            if i < j:
                assert np.abs(maps[i] - maps[j]).max() > 0.1, f"{name}/{loss}: {i}, {j} alike"


def test_male_and_predicted_maps_differ_for_a_face_called_female():
    """toward='predicted' explains 'female' for a face called female: not the 'male' map."""
    images = _portraits(97)
    model = flip_symmetric_model("resnet18", "bce", images)
    with torch.no_grad():
        female = (model(images) <= 0.5).numpy()
    assert female.any(), "no face called female by this random model: pick other portraits"
    male_maps = class_activation_maps(model, images, toward="male")
    predicted_maps = class_activation_maps(model, images, toward="predicted")
    i = int(np.flatnonzero(female)[0])
    assert not np.allclose(male_maps[i], predicted_maps[i], atol=1e-3)
    j = np.flatnonzero(~female)
    if len(j):  # faces called male: the same map either way
        np.testing.assert_allclose(male_maps[j], predicted_maps[j], atol=1e-5)


def test_a_layer_that_does_not_exist_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"model.cam_target_layer='layer9' is not a layer of"):
        GenderClassifier("resnet18", "bce", pretrained=False, cam_target_layer="layer9")
    model = GenderClassifier("resnet18", "bce", pretrained=False)
    with pytest.raises(ExplainUnavailable, match=r"cam_target_layer='layer9'.*resnet18"):
        target_layer_of(model, "layer9")


def test_a_model_without_a_recorded_layer_uses_its_backbones_config():
    model = GenderClassifier("vgg11", "ce", pretrained=False)  # as a checkpoint before the key
    assert target_layer_of(model) == "features.19" == _model_config("vgg11").cam_target_layer


def test_overlay_puts_the_map_back_on_the_face_box():
    crop = Image.open(PORTRAITS[0]).convert("RGB")  # 178 x 218
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:, 32:] = 1.0  # the right half of the model's input
    face_crop = {"top": 40, "left": 20, "height": 140, "width": 138}
    placed = on_crop(heat, crop.size, face_crop)
    assert placed.shape == (218, 178)
    assert placed[:40].max() == 0 and placed[:, :20].max() == 0  # outside the box: nothing
    assert placed[100, 150] == 1.0 and placed[100, 30] == 0.0
    picture = np.asarray(overlay(crop, placed), dtype=float)
    original = np.asarray(crop, dtype=float)
    assert np.abs(picture - original)[:, 100:158].mean() > 20  # coloured where the map is
    np.testing.assert_allclose(picture[:, :80], original[:, :80], atol=1)  # untouched elsewhere


def test_predict_explain_writes_each_faces_heat_map(smoke_run, run_env, tmp_path):
    """predict.py explain=true on real photos: an uncropped portrait (scikit-image's
    astronaut, found and aligned by MTCNN) and an aligned CelebA crop."""
    pytest.importorskip("facenet_pytorch", reason="predict's face detector (predict extra)")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photo")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(photos / "astronaut.jpg", quality=92)
    Image.open(PORTRAITS[0]).save(photos / "crop.png")
    output = tmp_path / "out"
    result = run_script(
        "predict.py",
        f"ckpt_path={smoke_run / 'checkpoints' / 'best.ckpt'}",
        f"input={photos}",
        "explain=true",
        f"hydra.run.dir={output}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(output / "predictions.csv")
    assert (table["status"] == "ok").all(), table.to_string()
    assert set(table["explained"]) == {
        "explained/astronaut_jpg.face0.png",
        "explained/crop_png.face0.png",
    }
    # Each picture: its caption (the photo, the row's label and rounded P(male), what the map
    # argues for) drawn above the crop, the crop under its map, and the map's colour bar.
    layout = picture_layout((178, 218), 3)  # the aligned crop's frame; three caption lines
    (left, top), (map_left, _) = layout["crop"], layout["overlay"]
    bar_left, bar_top, bar_width, bar_height = layout["bar"]
    for row in table.itertuples():
        file = Image.open(output / row.explained)
        photo = row.explained.removeprefix("explained/").split("_")[0]
        suffix = {"astronaut": "jpg", "crop": "png"}[photo]
        assert file.text["Description"] == f"{photo}.{suffix}\n" + face_caption(
            0, row.label, row.p_male
        )
        assert f"P(male) {row.p_male}" in file.text["Description"]
        assert len(str(row.p_male).split(".")[1]) <= 4  # conf/predict.yaml's decimals
        picture = np.asarray(file.convert("RGB"), dtype=float)
        assert picture.shape == (*reversed(layout["size"]), 3)
        assert (picture[: top - 4].min(axis=2) < 100).sum() > 200  # the caption's dark text
        crop = picture[top : top + 218, left : left + 178]
        explained = picture[top : top + 218, map_left : map_left + 178]
        assert 3 < np.abs(explained - crop).mean() < 80  # coloured, but the same face
        # The colour bar: jet from dark blue (0, at the bottom) to dark red (1, at the top).
        bar = picture[bar_top + 2 : bar_top + bar_height - 2, bar_left + bar_width // 2]
        assert bar[0, 0] > 100 > bar[0, 2] and bar[-1, 2] > 100 > bar[-1, 0], bar[[0, -1]]


def test_explain_refuses_a_model_without_gradients(smoke_run):
    """An ONNX model's predictor holds no torch model: one clear message."""
    predictor = GenderPredictor.from_checkpoint(smoke_run / "checkpoints" / "best.ckpt")
    onnx_like = GenderPredictor(predictor.eval_transform, lambda x: None, "resnet18")
    with pytest.raises(ExplainUnavailable, match="ONNX model gives no gradients"):
        CropExplainer.from_predictor(onnx_like)
    assert CropExplainer.from_predictor(predictor).target_layer == "layer4"


def _explained_pictures(checkpoint, photos, output, *overrides: str) -> dict[str, np.ndarray]:
    """predict explain=true on aligned crops, in this process: {explained name: picture}."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                f"ckpt_path={checkpoint}",
                f"input={photos}",
                f"paths.output_dir={output}",
                "detect=false",
                "gallery=false",
                "explain=true",
                *overrides,
            ],
        )
    predict_run.predict(cfg)
    table = pd.read_csv(output / "predictions.csv")
    # The crop under its map (the caption above it says the row's label, which differs).
    (left, top), width, height = picture_layout((178, 218), 3)["overlay"], 178, 218
    return {
        name: np.asarray(Image.open(output / name), dtype=float)[
            top : top + height, left : left + width
        ]
        for name in table["explained"]
    }


def test_explained_pictures_keep_the_extension_and_explain_the_rows_label(smoke_run, tmp_path):
    """a.jpg and a.png are two photos with two pictures; a map argues for the row's label,
    whatever the threshold (a face labelled male by threshold=0 is explained as male)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(PORTRAITS[0]).save(photos / "a.jpg", quality=95)
    Image.open(PORTRAITS[1]).save(photos / "a.png")
    checkpoint = smoke_run / "checkpoints" / "best.ckpt"
    male = _explained_pictures(checkpoint, photos, tmp_path / "male", "explain_toward=male")
    all_male = _explained_pictures(checkpoint, photos, tmp_path / "t0", "threshold=0.0")
    all_female = _explained_pictures(checkpoint, photos, tmp_path / "t1", "threshold=1.0")
    names = {"explained/a_jpg.face0.png", "explained/a_png.face0.png"}
    assert set(male) == set(all_male) == set(all_female) == names
    for name in names:
        np.testing.assert_array_equal(all_male[name], male[name])
        assert np.abs(all_female[name] - male[name]).mean() > 1, name
