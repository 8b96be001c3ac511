"""The one checkpoint loader of eval, predict and export: a trained classifier from a ``.ckpt``,
or an ONNX export's session, and for any bad file one ``CheckpointError`` naming it.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only, so
a file whose pickle would build other objects (and could run code while doing it) is refused,
never executed. Missing, empty, truncated and foreign files, and Lightning checkpoints of other
models, each get a message a person can act on; the entry points print it as one line.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from inspect import signature
from pathlib import Path
from typing import Any

import torch

from celeba_gender.data.datamodule import DIGEST_BYTES, CelebADataModule
from celeba_gender.data.errors import DataError
from celeba_gender.models.backbones import takes_argument
from celeba_gender.models.module import GenderClassifier

ONNX_SUFFIX = ".onnx"
# The evaluation transform a checkpoint (or ONNX export) records: these keys and plain values
# only. It reaches eval's data config (which Hydra instantiates) and predict's transform, so a
# hand-made file must not bring other keys (a ``_target_``), other types or absurd sizes.
EVAL_TRANSFORM_KEYS = frozenset({"image_size", "face_crop", "mean", "std", "cache_size"})
FACE_CROP_KEYS = frozenset({"top", "left", "height", "width"})
MAX_IMAGE_SIZE = 4096
# What every GenderClassifier checkpoint records: a checkpoint without them is another model's.
REQUIRED_HPARAMS = ("backbone", "loss", "pretrained")


class CheckpointError(DataError):
    """A model file that cannot be used; the message names it and says why, on one line."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path} is not a readable celeba-gender checkpoint: {reason}")
        self.path = str(path)
        self.reason = reason


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint's pickle holds objects other than weights: refused, not unpickled."""


def _brief(error: BaseException, limit: int = 160) -> str:
    """An exception as a short single line (library messages run over many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_model_file(path: str | Path) -> Path:
    """``path`` as a Path, if it is a non-empty file; else CheckpointError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            path, "the file does not exist; pass ckpt_path=PATH/TO/best.ckpt (or an .onnx export)"
        )
    if path.is_dir():
        raise CheckpointError(path, "it is a folder, not a file")
    if not path.is_file():
        raise CheckpointError(path, "not a regular file (a FIFO, socket or device?)")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as error:  # no permission to read it, gone meanwhile
        raise CheckpointError(path, f"it cannot be read ({error.strerror or error})") from None
    if size == 0:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    return path


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The checkpoint dictionary (``state_dict`` and ``hyper_parameters`` present), read safely."""
    path = check_model_file(path)
    if is_onnx(path):
        raise CheckpointError(
            path, "it is an ONNX export; this needs the Lightning checkpoint (.ckpt) it came from"
        )
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError as error:
        raise CheckpointError(path, f"it cannot be read ({error.strerror or error})") from None
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # a zip (torch.save) or a pickle
        kind = "a text file" if _is_text(head) else "an unknown file format"
        raise CheckpointError(path, f"{kind}, not a PyTorch checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise UnsafeCheckpointError(
                path,
                "refused: it holds pickled objects other than weights and plain values "
                "(loading them could run code)",
            ) from None
        raise CheckpointError(path, f"not a PyTorch checkpoint ({_brief(error)})") from None
    except RuntimeError as error:
        if "zip archive" in str(error) or "central directory" in str(error):
            reason = "truncated or corrupt (its zip archive cannot be read)"
        else:
            reason = f"not a PyTorch checkpoint ({_brief(error)})"
        raise CheckpointError(path, reason) from None
    except Exception as error:  # noqa: BLE001 - text files, foreign formats: one clear message
        raise CheckpointError(path, f"not a PyTorch checkpoint ({_brief(error)})") from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            path, f"it holds a {type(checkpoint).__name__}, not a Lightning checkpoint"
        )
    missing = [key for key in ("state_dict", "hyper_parameters") if key not in checkpoint]
    if missing:
        keys = ", ".join(sorted(map(str, checkpoint))[:8]) or "none"
        raise CheckpointError(
            path,
            f"no {' or '.join(missing)} in it (keys: {keys}): not a Lightning checkpoint of a "
            "celeba-gender model",
        )
    if not isinstance(checkpoint["state_dict"], Mapping) or not isinstance(
        checkpoint["hyper_parameters"], Mapping
    ):
        raise CheckpointError(path, "its state_dict or hyper_parameters is not a dictionary")
    return dict(checkpoint)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        (_is_int(value) or isinstance(value, float))
        and value == value
        and abs(value) != float("inf")
    )


def _eval_transform_problem(settings: Any) -> str | None:
    """What is wrong with an eval_transform record, or None when it is usable."""
    if not isinstance(settings, Mapping):
        return f"a {type(settings).__name__}, not a dictionary"
    unknown = sorted(map(str, set(settings) - EVAL_TRANSFORM_KEYS))
    if unknown:
        return f"unknown keys {', '.join(unknown)[:80]}"
    missing = sorted({"image_size", "mean", "std"} - set(settings))
    if missing:
        return f"no {', '.join(missing)}"
    size = settings["image_size"]
    if not _is_int(size) or not 1 <= size <= MAX_IMAGE_SIZE:
        return f"image_size {size!r:.40} is not a whole number from 1 to {MAX_IMAGE_SIZE}"
    for key in ("mean", "std"):
        values = settings[key]
        if not isinstance(values, list | tuple) or len(values) != 3:
            return f"{key} is not three numbers"
        if not all(_is_number(v) for v in values) or (key == "std" and min(values) <= 0):
            return f"{key} {list(values)!r:.60} is not three numbers (std above 0)"
    crop = settings.get("face_crop")
    if crop is not None:
        if not isinstance(crop, Mapping) or set(crop) != FACE_CROP_KEYS:
            return "face_crop is not a dictionary of top, left, height and width"
        if not all(_is_int(v) and 0 <= v <= 10 * MAX_IMAGE_SIZE for v in crop.values()):
            return "face_crop's top, left, height and width are not whole numbers of pixels"
        if crop["height"] <= 0 or crop["width"] <= 0:
            return "face_crop has no area"
    cache = settings.get("cache_size")
    if cache is not None and (
        not isinstance(cache, list | tuple)
        or len(cache) != 2
        or not all(_is_int(v) and 1 <= v <= 10 * MAX_IMAGE_SIZE for v in cache)
    ):
        return "cache_size is not two whole numbers of pixels (height, width)"
    return None


def check_eval_transform(path: str | Path, settings: Any) -> dict[str, Any]:
    """A recorded evaluation transform as a plain dict, or CheckpointError saying what is wrong
    with it (a file can hold anything: eval hands it to Hydra, predict to its transform)."""
    problem = _eval_transform_problem(settings)
    if problem is not None:
        raise CheckpointError(path, f"its eval_transform is unusable: {problem}")
    return {
        key: (dict(value) if isinstance(value, Mapping) else value)
        for key, value in settings.items()
    }


def _current_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of a checkpoint written before the model came from conf's ``module``
    node (2026-11-29) in today's form: no scheduler settings (training only), and the
    auxiliary heads GoogLeNet and Inception-v3 were then built with (only when trained)."""
    hparams.pop("scheduler_interval", None)
    if "backbone_kwargs" not in hparams and hparams.get("backbone") in (
        "googlenet",
        "inception_v3",
    ):
        hparams["backbone_kwargs"] = {"aux_logits": hparams.get("aux_loss_weight", 0) > 0}
        hparams["scratch_kwargs"] = {"init_weights": True}
    return hparams


def load_classifier(checkpoint_path: str | Path, map_location: str = "cpu") -> GenderClassifier:
    """Rebuild a GenderClassifier from a checkpoint without unpickling arbitrary objects."""
    path = Path(checkpoint_path).expanduser()
    checkpoint = read_checkpoint(path, map_location)
    hparams = _current_hparams(dict(checkpoint["hyper_parameters"]))
    if hparams.get("eval_transform") is not None:
        hparams["eval_transform"] = check_eval_transform(path, hparams["eval_transform"])
    accepted = set(signature(GenderClassifier.__init__).parameters) - {"self"}
    if any(key not in hparams for key in REQUIRED_HPARAMS) or not set(hparams) <= accepted:
        names = ", ".join(sorted(map(str, hparams))[:8]) or "none"
        raise CheckpointError(
            path,
            f"a checkpoint of another model (hyperparameters: {names}), not of celeba-gender's "
            "GenderClassifier",
        )
    try:
        if hparams.get("pretrained") and takes_argument(hparams["backbone"], "transform_input"):
            # torchvision builds pretrained GoogLeNet/Inception-v3 with transform_input=True
            # (its weights expect it); rebuilt without weights they must do the same.
            hparams["backbone_kwargs"] = {
                **(hparams.get("backbone_kwargs") or {}),
                "transform_input": True,
            }
        hparams.update(pretrained=False, allow_download=False)  # the checkpoint holds them
        model = GenderClassifier(**hparams)
    except Exception as error:  # noqa: BLE001 - unknown backbone, bad settings
        raise CheckpointError(
            path, f"its hyperparameters do not build a classifier ({_brief(error)})"
        ) from None
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # noqa: BLE001 - missing, unexpected or mis-shaped weights
        raise CheckpointError(
            path, f"its weights do not fit a {hparams['backbone']} classifier ({_brief(error)})"
        ) from None
    model.trained_on = trained_on(checkpoint)
    return model


def trained_on(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the checkpoint's model trained on (``CelebADataModule.state_dict``): its images'
    content digests, whether it was a final fit, the split; None for a checkpoint without
    it (made before it was saved, or by another data module)."""
    state = checkpoint.get(CelebADataModule.__qualname__)
    facts = state.get("trained_on") if isinstance(state, Mapping) else None
    if not isinstance(facts, Mapping):
        return None
    digests = facts.get("content_sha1")
    if not isinstance(digests, bytes) or len(digests) % DIGEST_BYTES:
        return None
    # A malformed flag ("false") must not read as a final fit.
    return {**facts, "final_fit": facts.get("final_fit") is True}


def open_onnx(path: str | Path) -> tuple[Any, dict[str, str]]:
    """An onnxruntime session of an exported model and its metadata, or CheckpointError."""
    path = check_model_file(path)
    try:
        import onnxruntime
    except ImportError:
        raise DataError("ONNX models need onnxruntime: pip install -e '.[predict]'") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        metadata = dict(session.get_modelmeta().custom_metadata_map)
    except Exception as error:  # noqa: BLE001 - corrupt, truncated or foreign files
        raise CheckpointError(path, f"not a readable ONNX model ({_brief(error)})") from None
    return session, metadata


__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "check_eval_transform",
    "check_model_file",
    "is_onnx",
    "load_classifier",
    "open_onnx",
    "read_checkpoint",
    "trained_on",
]
