"""Class-activation maps: where a backbone looks when it says "male" or "female".

Grad-CAM (Selvaraju et al. 2017) with captum's ``LayerGradCam``: captum is PyTorch's own
interpretability library, a single pure-Python package whose dependencies (torch, numpy,
matplotlib) the project already has, so installing it changes nothing else; it works on any
``nn.Module`` layer by module, which is all we need (pytorch-grad-cam would bring OpenCV's GUI
build, scikit-learn and ttach). It lives in ``inference/`` beside the predictor because it
explains the crops predict classifies, with the same transform.

Public API (predict's ``explain=true``, the analysis' mean maps and the demo call these):

- ``target_layer_of(model, override=None)`` -> the layer's dotted name on ``model.net``: the
  checkpoint's ``cam_target_layer`` (conf/model/*.yaml's ``cam_target_layer``), for a
  checkpoint without one the backbone's conf/model file.
- ``class_activation_maps(model, images, target_layer=None, toward="predicted")`` -> float32
  ``(N, H, W)`` in [0, 1], one map per normalised input image ``(N, 3, H, W)``.
- ``CropExplainer.from_predictor(predictor)``: ``explain(crops)`` -> one map per aligned crop,
  on the crop's own pixels (zero outside the face box the model sees).
- ``overlay(crop, heat_map, alpha=0.45, colormap="jet")`` -> the crop with the map over it.
- ``explained_picture(crop, heat_map, caption, ...)`` -> what predict's explained/*.png and the
  demo's gallery show: the crop, the crop with its map, the map's colour bar and a caption.

What a map explains: the log-odds of P(male). That is the BCE head's logit, and the CE head's
male logit minus its female logit (log P(male)/P(female)), so maps of both heads mean the same
thing; the male logit alone would also show evidence that raises both classes' logits.
``toward="predicted"`` explains the predicted class (the negative log-odds for a face labelled
female), ``toward="male"`` always the evidence for male. A model with ``flip_tta`` is explained
on the image as given (its mirror pass is not). predict passes each face's own label (its
threshold, its flip_tta average), so a map never argues for the class the row does not say.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from PIL import Image

from celeba_gender.config import CONFIG_DIR
from celeba_gender.data import DataError
from celeba_gender.data.transforms import crop_box
from celeba_gender.models import GenderClassifier

log = logging.getLogger(__name__)
TARGET_LAYER_KEY = "cam_target_layer"
Toward = Literal["predicted", "male"]
TOWARD = ("predicted", "male")
# explained_picture's layout, in pixels: a margin round it, a gap between the two pictures,
# room for the caption's lines above them and for the colour bar (its ticks and label) beside.
PICTURE_MARGIN = 8
PICTURE_GAP = 4
CAPTION_LINE_PX = 16
COLOUR_BAR_PX = (12, 62)  # the bar, then its ticks and label
PICTURE_DPI = 100
CAPTION_POINTS = 9


class ExplainUnavailable(DataError):
    """Maps cannot be made here: captum missing, an ONNX model, an unknown layer."""


def _layer_gradcam() -> Any:
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        raise ExplainUnavailable(
            "Heat maps need captum: pip install -e '.[explain]' (the dev extra has it)."
        ) from None
    return LayerGradCam


def explain_available() -> bool:
    """Whether captum is installed (the analysis skips its heat-map figure without it)."""
    try:
        _layer_gradcam()
    except ExplainUnavailable:
        return False
    return True


def configured_target_layer(backbone: str) -> str | None:
    """``cam_target_layer`` of conf/model/<backbone>.yaml, or None (no such file, or unset)."""
    path = CONFIG_DIR / "model" / f"{backbone}.yaml"
    if not path.is_file():
        return None
    return OmegaConf.load(path).get(TARGET_LAYER_KEY)


def check_target_layer(net: torch.nn.Module, name: str, backbone: str) -> str:
    """``name`` if it names a module of ``net``; else one message naming the setting."""
    try:
        net.get_submodule(str(name))
    except AttributeError:
        tops = ", ".join(child for child, _ in net.named_children())
        raise ExplainUnavailable(
            f"model.{TARGET_LAYER_KEY}={name!r} is not a layer of {backbone} (its top-level "
            f"layers: {tops}); set it in conf/model/{backbone}.yaml to a dotted module name "
            "such as layer4 or features.29"
        ) from None
    return str(name)


def target_layer_of(model: GenderClassifier, override: str | None = None) -> str:
    """The layer to explain: ``override``, else the checkpoint's ``cam_target_layer``, else
    (a checkpoint trained before the setting existed) the backbone's conf/model file: the layer
    is a property of the architecture, not of the training, so today's file is the answer."""
    backbone = model.hparams.backbone
    name = override or model.hparams.get(TARGET_LAYER_KEY)
    if not name:
        name = configured_target_layer(backbone)
        if not name:
            raise ExplainUnavailable(
                f"the checkpoint ({backbone}) records no model.{TARGET_LAYER_KEY} and "
                f"conf/model/{backbone}.yaml gives none: pass explain_target_layer=NAME (a "
                "dotted module name of the torchvision network, e.g. layer4)"
            )
        log.info(
            "the checkpoint records no %s: using %r from conf/model/%s.yaml",
            TARGET_LAYER_KEY,
            name,
            backbone,
        )
    return check_target_layer(model.net, name, backbone)


def male_log_odds(model: GenderClassifier, images: torch.Tensor) -> torch.Tensor:
    """log P(male)/P(female) of each image: the BCE logit, or CE's male minus female logit."""
    logits = model._logits(images)[0]
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def class_activation_maps(
    model: GenderClassifier,
    images: torch.Tensor,
    target_layer: str | None = None,
    toward: Toward = "predicted",
    male: Sequence[bool] | None = None,
) -> np.ndarray:
    """Grad-CAM of each normalised image ``(N, 3, H, W)``: float32 ``(N, H, W)`` in [0, 1],
    each map divided by its own maximum (all zero where no part of the layer speaks for the
    class). ``toward``: "predicted" or "male" (see the module's docstring). ``male``: with
    "predicted", whether each image is labelled male (default: this pass's P(male) > 0.5)."""
    if toward not in TOWARD:
        raise DataError(f"explain toward={toward!r}: choose one of {', '.join(TOWARD)}")
    layer_name = target_layer_of(model, target_layer)
    layer = model.net.get_submodule(layer_name)

    def evidence(batch: torch.Tensor) -> torch.Tensor:
        log_odds = male_log_odds(model, batch)
        if toward == "male":
            return log_odds
        labelled_male = log_odds.detach() > 0 if male is None else torch.tensor(list(male))
        return log_odds * torch.where(labelled_male.to(log_odds.device), 1.0, -1.0)

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.enable_grad():
            maps = _layer_gradcam()(evidence, layer).attribute(
                images.to(device), relu_attributions=True
            )
    finally:
        model.train(was_training)
    maps = torch.nn.functional.interpolate(
        maps.detach().float().sum(dim=1, keepdim=True),
        size=images.shape[-2:],
        mode="bilinear",
        align_corners=False,
    )[:, 0].clamp_min(0)
    peaks = maps.amax(dim=(1, 2), keepdim=True)
    maps = torch.where(peaks > 0, maps / peaks.clamp_min(1e-12), torch.zeros_like(maps))
    return maps.cpu().numpy().astype(np.float32)


def on_crop(heat_map: np.ndarray, crop_size: tuple[int, int], face_crop: Any) -> np.ndarray:
    """A map of the model's input placed on the aligned crop's pixels (width, height): the
    input is the crop's ``face_crop`` box resized, so the map goes back into that box."""
    width, height = crop_size
    top, left, box_height, box_width = crop_box(face_crop, height, width)
    placed = np.zeros((height, width), dtype=np.float32)
    resized = Image.fromarray(heat_map.astype(np.float32), mode="F").resize(
        (box_width, box_height), Image.Resampling.BILINEAR
    )
    placed[top : top + box_height, left : left + box_width] = np.asarray(resized)
    return placed.clip(0, 1)


def overlay(
    crop: Image.Image, heat_map: np.ndarray, alpha: float = 0.45, colormap: str = "jet"
) -> Image.Image:
    """``crop`` with ``heat_map`` (its size, or resized to it; values in [0, 1]) drawn over it
    in ``colormap`` (a matplotlib name), ``alpha`` at the map's strongest."""
    crop = crop.convert("RGB")
    if heat_map.shape != (crop.height, crop.width):
        heat_map = np.asarray(
            Image.fromarray(heat_map.astype(np.float32), mode="F").resize(
                crop.size, Image.Resampling.BILINEAR
            )
        )
    heat_map = np.clip(heat_map, 0, 1)
    try:
        colours = colormaps[colormap](heat_map)[..., :3]
    except KeyError:
        raise DataError(f"colormap={colormap!r} is not a matplotlib colormap (e.g. jet)") from None
    weight = alpha * heat_map[..., None]
    blended = (1 - weight) * np.asarray(crop, dtype=np.float32) / 255 + weight * colours
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def face_caption(face: int, label: str, p_male: float, toward: Toward = "predicted") -> str:
    """An explained face's caption: its number, label and P(male) (as its row has it), and
    which class its map argues for."""
    evidence = label if toward == "predicted" else toward
    return f"face {face}: {label}, P(male) {p_male}\nheat map: evidence for {evidence}"


def picture_layout(crop_size: tuple[int, int], caption_lines: int) -> dict[str, tuple[int, ...]]:
    """Where ``explained_picture`` puts things, in pixels from the top left: "size" (width,
    height) of the picture, "crop" and "overlay" (left, top) of the two pictures, "bar" (left,
    top, width, height) of the colour bar."""
    width, height = crop_size
    top = PICTURE_MARGIN + CAPTION_LINE_PX * caption_lines + PICTURE_GAP
    overlay_left = PICTURE_MARGIN + width + PICTURE_GAP
    bar_left = overlay_left + width + 2 * PICTURE_GAP
    return {
        "size": (bar_left + sum(COLOUR_BAR_PX), top + height + PICTURE_MARGIN),
        "crop": (PICTURE_MARGIN, top),
        "overlay": (overlay_left, top),
        "bar": (bar_left, top, COLOUR_BAR_PX[0], height),
    }


def explained_picture(
    crop: Image.Image,
    heat_map: np.ndarray,
    caption: str,
    alpha: float = 0.45,
    colormap: str = "jet",
) -> Image.Image:
    """The crop as the model saw it, the crop with its map (``overlay``) and the map's colour
    bar, ``caption`` (its lines: the face's label, P(male), what the map explains) above them:
    predict's explained/*.png and the demo's gallery. The two pictures keep their pixels
    (matplotlib's figimage: not resampled); the colour bar is the map's scale, as the
    analysis' heat-map grid has it."""
    crop = crop.convert("RGB")
    lines = caption.splitlines() or [""]
    layout = picture_layout(crop.size, len(lines))
    width, height = layout["size"]
    figure = Figure(figsize=(width / PICTURE_DPI, height / PICTURE_DPI), dpi=PICTURE_DPI)
    figure.patch.set_facecolor("white")
    for key, picture in (("crop", crop), ("overlay", overlay(crop, heat_map, alpha, colormap))):
        left, top = layout[key]
        # figimage's offsets count from the bottom left.
        figure.figimage(np.asarray(picture), left, height - top - crop.height, origin="upper")
    left, top, bar_width, bar_height = layout["bar"]
    bar_axes = figure.add_axes(
        (left / width, (height - top - bar_height) / height, bar_width / width, bar_height / height)
    )
    bar = figure.colorbar(ScalarMappable(Normalize(0, 1), cmap=colormap), cax=bar_axes)
    bar.set_label("Grad-CAM (1: the face's peak)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    for number, line in enumerate(lines):
        # Captions hold names: no mathtext ('$' is not a formula).
        figure.text(
            PICTURE_MARGIN / width,
            1 - (PICTURE_MARGIN + CAPTION_LINE_PX * number) / height,
            line,
            va="top",
            fontsize=CAPTION_POINTS,
            parse_math=False,
        )
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


class CropExplainer:
    """Heat maps of aligned crops, through a checkpoint's own evaluation transform."""

    def __init__(
        self,
        model: GenderClassifier,
        transform: Any,
        eval_transform: dict,
        target_layer: str | None = None,
        toward: Toward = "predicted",
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.transform = transform
        self.face_crop = eval_transform.get("face_crop")
        self.target_layer = target_layer_of(model, target_layer)
        self.toward = toward
        self.batch_size = batch_size

    @classmethod
    def from_predictor(
        cls, predictor: Any, target_layer: str | None = None, toward: Toward = "predicted"
    ) -> CropExplainer:
        """For a ``GenderPredictor`` of a .ckpt checkpoint (ONNX models give no gradients)."""
        _layer_gradcam()  # captum missing: say so before any photo is read
        model = getattr(predictor, "model", None)
        if model is None:
            raise ExplainUnavailable(
                "explain=true needs the .ckpt checkpoint: an ONNX model gives no gradients, "
                "so no heat maps (predict with ckpt_path=.../best.ckpt, or explain=false)"
            )
        return cls(
            model,
            predictor.tensors,
            predictor.eval_transform,
            target_layer,
            toward,
            predictor.batch_size,
        )

    def explain(
        self, crops: Sequence[Image.Image], male: Sequence[bool] | None = None
    ) -> list[np.ndarray]:
        """One map per crop, on the crop's pixels (height, width), values in [0, 1]. ``male``:
        each crop's label, explained when toward="predicted" (default: P(male) > 0.5)."""
        maps: list[np.ndarray] = []
        for start in range(0, len(crops), self.batch_size):
            batch = list(crops[start : start + self.batch_size])
            labels = None if male is None else male[start : start + self.batch_size]
            inputs = class_activation_maps(
                self.model, self.transform(batch), self.target_layer, self.toward, labels
            )
            maps += [
                on_crop(heat, crop.size, self.face_crop)
                for heat, crop in zip(inputs, batch, strict=True)
            ]
        return maps


__all__ = [
    "CropExplainer",
    "ExplainUnavailable",
    "class_activation_maps",
    "explain_available",
    "explained_picture",
    "face_caption",
    "male_log_odds",
    "on_crop",
    "overlay",
    "picture_layout",
    "target_layer_of",
]
