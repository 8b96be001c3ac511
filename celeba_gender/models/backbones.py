"""One factory for torchvision backbones, with the classifier head sized for the loss. Which
backbones the study has, and their settings, is conf/model/*.yaml (``model_names``).

Pretrained weights come from torchvision's weights API and its cache
(``$TORCH_HOME/hub/checkpoints``). Without the cached file and without network, the error says
which file to put where, before any training starts; a sweep checks every pretrained job's file
before it launches any (``check_pretrained_weights``, from training.sweep_check.ValidateSweep).
"""

from __future__ import annotations

import inspect
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from celeba_gender.config import CONFIG_DIR

# The class count of torchvision's ImageNet heads: the layers create_backbone resizes.
IMAGENET_CLASSES = 1000


def model_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """The study's backbones: one config file each in conf/model/."""
    return sorted(path.stem for path in (config_dir / "model").glob("*.yaml"))


class PretrainedWeightsUnavailable(RuntimeError):
    """The ImageNet weights are neither cached nor downloadable."""

    @classmethod
    def naming(cls, missing: Mapping[WeightsFile, str]) -> PretrainedWeightsUnavailable:
        """The one message for missing weights files (file: why it cannot be had), a single
        run's and a whole sweep's before it launches alike."""
        files = [f"{file.name} ({why}; from {file.url})" for file, why in missing.items()]
        folder = next(iter(missing)).folder
        fix = (
            "Fill the cache once where there is a network, then copy the files there (README: "
            "ImageNet weights), or point TORCH_HOME at a folder whose hub/checkpoints/ holds them."
        )
        head = f"Pretrained weights missing from the torch hub cache {folder}:"
        if len(files) == 1:
            return cls(f"{head} {files[0]}. {fix}")
        return cls("\n  ".join([head, *files]) + f"\n{fix}")


@dataclass(frozen=True)
class WeightsFile:
    name: str
    folder: Path
    url: str

    @property
    def path(self) -> Path:
        return self.folder / self.name


def pretrained_weights_file(name: str) -> WeightsFile:
    """Where torchvision looks for the default ImageNet weights of ``name``."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return WeightsFile(name=Path(weights.url).name, folder=folder, url=weights.url)


DOWNLOADS_OFF = "downloads are off: model.allow_download=false"
# How long the check before a sweep waits for the weights' server to answer: an offline
# machine fails at once (no name resolution); a firewall that drops packets takes this long.
DOWNLOAD_CHECK_TIMEOUT_S = 15


def _download_failed(error: BaseException) -> str:
    return f"downloading it failed: {error}"


def check_pretrained_weights(backbones: Iterable[tuple[str, bool]]) -> None:
    """Before a sweep launches: raise PretrainedWeightsUnavailable naming every weights file
    that pretrained ``backbones`` ((name, allow_download) each) lack, neither in the torch hub
    cache nor (where downloads are allowed) answered for by its server."""
    missing: dict[WeightsFile, str] = {}
    for name, allow_download in dict.fromkeys(backbones):
        file = pretrained_weights_file(name)
        if file.path.is_file() or file in missing:
            continue
        if not allow_download:
            missing[file] = DOWNLOADS_OFF
            continue
        try:  # a HEAD request: the first job downloads the file, not this check
            request = urllib.request.Request(file.url, method="HEAD")
            urllib.request.urlopen(request, timeout=DOWNLOAD_CHECK_TIMEOUT_S).close()
        except (urllib.error.URLError, OSError, ValueError) as error:
            missing[file] = _download_failed(error)
    if missing:
        raise PretrainedWeightsUnavailable.naming(missing)


def _load_pretrained(name: str, allow_download: bool, **kwargs) -> nn.Module:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    expected = pretrained_weights_file(name)
    if not expected.path.is_file() and not allow_download:
        raise PretrainedWeightsUnavailable.naming({expected: DOWNLOADS_OFF})
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except (urllib.error.URLError, OSError) as error:
        raise PretrainedWeightsUnavailable.naming({expected: _download_failed(error)}) from None


def classifier_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s ImageNet classifiers (linear layers with 1000 outputs), in
    registration order: torchvision registers the main classifier last (``fc``,
    ``classifier.6``, ``heads.head``), auxiliary ones before it (GoogLeNet's ``aux1.fc2``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES
    ]


def aux_head_modules(model: nn.Module) -> list[str]:
    """Names of the top-level modules that hold the training-only auxiliary classifiers
    (GoogLeNet's aux1 and aux2, Inception-v3's AuxLogits): what inference never runs."""
    return _holding_modules(getattr(model, "aux_classifiers", []))


def _holding_modules(layers: list[str]) -> list[str]:
    """The top-level modules that hold ``layers`` (dotted names)."""
    return sorted({name.split(".", 1)[0] for name in layers})


def _drop_aux_heads(model: nn.Module) -> None:
    """Remove the auxiliary classifiers (GoogLeNet's aux1, aux2, Inception-v3's AuxLogits),
    as the networks' own ``aux_logits=False`` leaves them: None, and not returned."""
    for name in _holding_modules(classifier_layers(model)[:-1]):
        setattr(model, name, None)
    model.aux_logits = False


def takes_argument(name: str, argument: str) -> bool:
    """Whether torchvision's ``name`` network class takes ``argument`` (its builder passes its
    keyword arguments on to the class it is annotated to return)."""
    built = inspect.signature(torchvision.models.get_model_builder(name)).return_annotation
    return inspect.isclass(built) and argument in inspect.signature(built.__init__).parameters


def create_backbone(
    name: str,
    num_outputs: int,
    pretrained: bool,
    aux_heads: bool = True,
    allow_download: bool = True,
    aux_outputs: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    scratch_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The torchvision network ``name`` (any of ``torchvision.models.list_models()``) whose
    classifier gives ``num_outputs`` and whose auxiliary classifiers give ``aux_outputs``
    (default: ``num_outputs``).

    ``kwargs`` go to ``torchvision.models.get_model``, and ``scratch_kwargs`` too when not
    ``pretrained`` (conf/model/*.yaml). An ``aux_logits`` argument (GoogLeNet, Inception-v3)
    builds auxiliary classifiers only when ``aux_heads``: in training mode the network then
    returns (logits, aux...) and the LightningModule adds their loss; in eval mode the main
    logits only.
    """
    if name not in torchvision.models.list_models(torchvision.models):
        raise ValueError(
            f"Unknown backbone {name!r}: not a torchvision classification model "
            "(torchvision.models.list_models())."
        )
    options = {**(kwargs or {}), **({} if pretrained else dict(scratch_kwargs or {}))}
    with_aux = takes_argument(name, "aux_logits") and bool(options.get("aux_logits", True))
    if pretrained:
        if takes_argument(name, "aux_logits"):
            options["aux_logits"] = True  # torchvision's weights come with their heads
        model = _load_pretrained(name, allow_download, **options)
    else:
        if takes_argument(name, "aux_logits"):  # GoogLeNet, Inception-v3
            options["aux_logits"] = with_aux and aux_heads
        model = torchvision.models.get_model(name, weights=None, **options)
    if with_aux and not aux_heads:
        _drop_aux_heads(model)  # pretrained: built with them; no loss will train them

    found = classifier_layers(model)
    if not found:
        raise ValueError(
            f"{name}: no {IMAGENET_CLASSES}-way nn.Linear classifier to resize for the loss. "
            "Backbones whose classifier is not a linear layer (SqueezeNet's is a convolution "
            "followed by ReLU) are not supported; and leave num_classes out of model.kwargs."
        )
    *aux_names, main_name = found
    aux_outputs = num_outputs if aux_outputs is None else aux_outputs
    for layer, outputs in [(main_name, num_outputs), *((a, aux_outputs) for a in aux_names)]:
        parent, _, attribute = layer.rpartition(".")
        old = model.get_submodule(layer)
        setattr(model.get_submodule(parent), attribute, nn.Linear(old.in_features, outputs))
    model.aux_classifiers = aux_names
    return model


def split_outputs(outputs: torch.Tensor | tuple) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits of any backbone's forward (a tensor or a namedtuple)."""
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    main, *aux = outputs
    return main, [a for a in aux if a is not None]
