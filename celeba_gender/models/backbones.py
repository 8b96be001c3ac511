"""One factory for the ten torchvision backbones, with the classifier head sized for the loss.

Pretrained weights come from torchvision's weights API and its cache
(``$TORCH_HOME/hub/checkpoints``). Without the cached file and without network, the error says
which file to put where, before any training starts.
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

BACKBONES = (
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "googlenet",
    "inception_v3",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
)
FAMILIES = {
    "vgg11": "VGG",
    "vgg13": "VGG",
    "vgg16": "VGG",
    "vgg19": "VGG",
    "googlenet": "GoogLeNet/Inception",
    "inception_v3": "GoogLeNet/Inception",
    "resnet18": "ResNet",
    "resnet34": "ResNet",
    "resnet50": "ResNet",
    "resnet101": "ResNet",
}
WITH_AUX_HEADS = ("googlenet", "inception_v3")


class PretrainedWeightsUnavailable(RuntimeError):
    """The ImageNet weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class WeightsFile:
    name: str
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / self.name


def pretrained_weights_file(name: str) -> WeightsFile:
    """Where torchvision looks for the default ImageNet weights of ``name``."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return WeightsFile(name=Path(weights.url).name, folder=folder)


def _load_pretrained(name: str, allow_download: bool, **kwargs) -> nn.Module:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    expected = pretrained_weights_file(name)
    if not expected.path.is_file() and not allow_download:
        raise PretrainedWeightsUnavailable(
            f"Pretrained {name} needs {expected.name} in {expected.folder} (downloads are off: "
            f"model.allow_download=false). Copy it there from {weights.url}, or set TORCH_HOME "
            "to a folder whose hub/checkpoints/ holds it."
        )
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except (urllib.error.URLError, OSError) as error:
        raise PretrainedWeightsUnavailable(
            f"Pretrained {name} needs {expected.name} in {expected.folder}; it is not there and "
            f"downloading {weights.url} failed ({error}). Copy the file there, or set TORCH_HOME "
            "to a folder whose hub/checkpoints/ holds it."
        ) from None


def _replace_linear(module: nn.Module, attribute: str, outputs: int) -> None:
    old = getattr(module, attribute)
    setattr(module, attribute, nn.Linear(old.in_features, outputs))


def create_backbone(
    name: str,
    num_outputs: int,
    pretrained: bool,
    aux_heads: bool = True,
    allow_download: bool = True,
    aux_outputs: int | None = None,
) -> nn.Module:
    """A torchvision ``name`` network whose classifier gives ``num_outputs`` and whose auxiliary
    heads give ``aux_outputs`` (default: ``num_outputs``).

    GoogLeNet and Inception-v3 keep their auxiliary classifiers when ``aux_heads``: in training
    mode they return (logits, aux...) and the LightningModule adds the auxiliary loss; in eval
    mode they return the main logits only.
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")
    kwargs = {"aux_logits": aux_heads} if name in WITH_AUX_HEADS else {}
    if name in WITH_AUX_HEADS and not pretrained:
        kwargs["init_weights"] = True  # torchvision's truncated-normal init, and no warning
    if pretrained:
        model = _load_pretrained(name, allow_download, **kwargs)
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)

    aux_outputs = num_outputs if aux_outputs is None else aux_outputs
    if name.startswith("vgg"):
        _replace_linear(model.classifier, "6", num_outputs)
    elif name.startswith("resnet"):
        _replace_linear(model, "fc", num_outputs)
    elif name == "googlenet":
        _replace_linear(model, "fc", num_outputs)
        if aux_heads:
            _replace_linear(model.aux1, "fc2", aux_outputs)
            _replace_linear(model.aux2, "fc2", aux_outputs)
    elif name == "inception_v3":
        _replace_linear(model, "fc", num_outputs)
        if aux_heads:
            _replace_linear(model.AuxLogits, "fc", aux_outputs)
    return model


def aux_head_modules(model: nn.Module) -> list[str]:
    """Names of the training-only auxiliary classifiers of ``model`` that it holds (GoogLeNet's
    aux1 and aux2, Inception-v3's AuxLogits): what inference never runs."""
    names = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}
    return [n for names_ in names.values() for n in names_ if getattr(model, n, None) is not None]


def split_outputs(outputs: torch.Tensor | tuple) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits of any backbone's forward (a tensor or a namedtuple)."""
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    main, *aux = outputs
    return main, [a for a in aux if a is not None]
