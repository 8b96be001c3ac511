"""What a user may set, checked before a run starts: one schema of types, ranges and choices.

The schema is a set of structured-config dataclasses (OmegaConf's typed configs). A composed
config is checked against it in two passes: OmegaConf merges the values the config holds into the
typed schema (``data.batch_size=abc`` cannot become an ``int``), then each field's
``setting(...)`` metadata gives its range or its choices. The composed config itself is
left as it is (its keys, interpolations and the ``_target_`` nodes that build the objects):
the schema only reads the values a run would use.

A value the schema rejects ends the command with one line that names the key, the value and
what is allowed (``ConfigError``); ``train.py`` checks every job of a ``-m`` sweep before it
launches any (``ValidateSweep``, a Hydra callback), and that its pretrained jobs' weights are
there. A key the schema leaves out is not checked here (the code that uses it still is). A key
a config group does not have (one optimizer's ``momentum``) is skipped.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, Union, get_args, get_origin

from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from celeba_gender.config import is_integer
from celeba_gender.data.balance import BALANCE_METHODS
from celeba_gender.data.datamodule import LOADERS
from celeba_gender.data.errors import DataError
from celeba_gender.data.sources import SOURCES, check_class_names, check_csv_columns
from celeba_gender.data.splits import SPLIT_METHODS, check_fractions
from celeba_gender.metrics import LOGGED_METRICS
from celeba_gender.models.heads import HEADS
from celeba_gender.stop_signals import STOP_SIGNAL_NAMES

# Lightning's precision names (lightning.fabric.connector._PRECISION_INPUT).
PRECISIONS = (
    "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
    "transformer-engine", "transformer-engine-float16", "64", "32", "16", "bf16",
)  # fmt: skip
# Test-only fault injection (training/faults.py KillAtStep): how the process dies.
FAULTS = ("sigkill", "exit", "sigterm", "sigusr1", "sigusr2", "sigint")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
MONITORS = tuple(f"val/{name}" for name in LOGGED_METRICS)


class ConfigError(ValueError):
    """A config value the schema does not allow: one line naming the key, value and rule."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={_show(value)} is not allowed: expected {allowed}.")


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """What a field allows beyond its type: bounds, choices, or a check of its own."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: Sequence[Any] | None = None
    check: Callable[[Any], bool] | None = None  # True when the value is allowed
    allowed: str | None = None  # how to say what is allowed (default: from the type and rule)


def setting(**rule: Any) -> Any:
    """A schema field: ``ge``/``gt``/``le`` bounds, ``choices``, or ``check`` + ``allowed``.
    Its default is MISSING: the values are the configs' business (conf/)."""
    return field(default=MISSING, metadata={"rule": Rule(**rule)})


def _limit_batches(value: Any) -> bool:
    """Lightning's limit_*_batches / overfit_batches: a count of batches or a fraction."""
    if is_integer(value):
        return value >= 0
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _devices(value: Any) -> bool:
    if is_integer(value):
        return value == -1 or value >= 1
    if isinstance(value, str):
        # 'auto', '-1', a count ('2'), or device indices ('0,1', '0,'); '0' is no device.
        text = value.strip()
        if text in ("auto", "-1") or (text.isdigit() and int(text) >= 1):
            return True
        indices = [part.strip() for part in text.split(",")]
        if indices and indices[-1] == "":
            indices.pop()  # '0,': device 0 (Lightning's way to name one index)
        return "," in text and bool(indices) and all(part.isdigit() for part in indices)
    if isinstance(value, (list, ListConfig)):
        return len(value) > 0 and all(is_integer(v) and v >= 0 for v in value)
    return False


def _finite(values: Any) -> bool:
    return all(_is_number(v) and math.isfinite(v) for v in values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@functools.cache
def _torchvision_models() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


# --------------------------------------------------------------------------- the schema
# One dataclass per config node a user sets; each field: its type, and its rule.
def _passes(check: Callable[[Any], Any]) -> Callable[[Any], bool]:
    """A rule the data layer states (``check`` raises DataError), asked, not restated."""

    def allowed(value: Any) -> bool:
        try:
            check(value)
        except DataError:
            return False
        return True

    return allowed


@dataclass
class DataSchema:
    source: str = setting(choices=SOURCES)
    class_names: list[str] = setting(
        check=_passes(check_class_names),
        allowed="2 names (label 0: female, label 1: male) that differ whatever their case, not 0 "
        "or 1",
    )
    csv_columns: dict[str, Optional[str]] = setting(  # noqa: UP045
        check=_passes(check_csv_columns),
        allowed="{path: <column>, label: <column>, identity: <column> or null}; path and label "
        "required",
    )
    split: str = setting(choices=SPLIT_METHODS)
    split_seed: int = setting(ge=0)
    split_fractions: list[float] = setting(
        check=_passes(check_fractions),
        allowed="3 fractions (train, val, test) in [0, 1] summing to 1",
    )
    final_fit: bool = setting()
    seed_protocol_train_per_class: int = setting(ge=1)
    balance: str = setting(choices=BALANCE_METHODS)
    balance_seed: int = setting(ge=0)
    shuffle_seed: int = setting(ge=0)
    augmentation_seed: int = setting(ge=0)
    image_size: int = setting(ge=8)
    face_crop: Optional[dict[str, int]] = setting()  # noqa: UP045 - OmegaConf reads typing
    augmentations: list[Any] = setting(
        check=lambda v: all(isinstance(a, (dict, DictConfig)) and "name" in a for a in v),
        allowed="a list of {name: ..., option: value} (celeba_gender/data/transforms.py)",
    )
    mean: list[float] = setting(
        check=lambda v: len(v) == 3 and _finite(v), allowed="3 numbers (R, G, B)"
    )
    std: list[float] = setting(
        check=lambda v: len(v) == 3 and _finite(v) and all(s > 0 for s in v),
        allowed="3 numbers > 0 (R, G, B)",
    )
    loader: str = setting(choices=LOADERS)
    cache_size: list[int] = setting(
        check=lambda v: len(v) == 2 and all(s >= 8 for s in v),
        allowed="2 integers >= 8 (height, width)",
    )
    batch_size: int = setting(ge=1)
    eval_batch_size: Optional[int] = setting(ge=1)  # noqa: UP045
    num_workers: int = setting(ge=0)
    pin_memory: bool = setting()
    scan_workers: Optional[int] = setting(ge=1)  # noqa: UP045
    # Training configs: by _check_progressive_resizing (transforms.progressive_settings' rule).
    progressive_resizing: Optional[dict[str, Any]] = setting()  # noqa: UP045


@dataclass
class ModelSchema:
    name: str = setting(
        check=lambda name: name in _torchvision_models(),
        allowed="a torchvision classification model (torchvision.models.list_models())",
    )
    image_size: int = setting(ge=8)
    min_image_size: int = setting(ge=1)
    aux_loss_weight: float = setting(ge=0)
    allow_download: bool = setting()
    channels_last: bool = setting()
    flip_tta: bool = setting()
    cam_target_layer: Optional[str] = setting()  # noqa: UP045


@dataclass
class TreatmentSchema:
    name: str = setting()
    pretrained: bool = setting()
    loss: str = setting(choices=tuple(HEADS))


@dataclass
class OptimizerSchema:
    lr: float = setting(gt=0)
    weight_decay: float = setting(ge=0)
    momentum: float = setting(ge=0, le=1)
    nesterov: bool = setting()
    fused: bool = setting()


@dataclass
class SchedulerSchema:
    interval: str = setting(choices=("epoch", "step"))
    frequency: int = setting(ge=1)


@dataclass
class TrainerSchema:
    accelerator: str = setting(choices=ACCELERATORS)
    devices: Any = setting(
        check=_devices, allowed="an integer >= 1, -1 (all), 'auto', indices ('0,1') or a list"
    )
    num_nodes: int = setting(ge=1)
    precision: Any = setting(
        check=lambda v: str(v) in PRECISIONS, allowed="one of " + ", ".join(PRECISIONS)
    )
    # -1 or null: no epoch limit of its own (Lightning: max_steps, max_time, or 1000 epochs).
    max_epochs: Optional[int] = setting(  # noqa: UP045
        check=lambda v: v == -1 or v >= 1, allowed="an integer >= 1, -1 (no limit) or null"
    )
    min_epochs: Optional[int] = setting(ge=0)  # noqa: UP045
    max_steps: int = setting(check=lambda v: v == -1 or v >= 1, allowed="-1 (off) or >= 1")
    limit_train_batches: Any = setting(check=_limit_batches, allowed="a count >= 0 or 0.0-1.0")
    limit_val_batches: Any = setting(check=_limit_batches, allowed="a count >= 0 or 0.0-1.0")
    limit_test_batches: Any = setting(check=_limit_batches, allowed="a count >= 0 or 0.0-1.0")
    limit_predict_batches: Any = setting(check=_limit_batches, allowed="a count >= 0 or 0.0-1.0")
    overfit_batches: Any = setting(check=_limit_batches, allowed="a count >= 0 or 0.0-1.0")
    log_every_n_steps: int = setting(ge=1)
    accumulate_grad_batches: int = setting(ge=1)
    gradient_clip_val: Optional[float] = setting(ge=0)  # noqa: UP045
    check_val_every_n_epoch: Optional[int] = setting(ge=1)  # noqa: UP045
    num_sanity_val_steps: int = setting(ge=-1)
    deterministic: Any = setting(
        check=lambda v: v is None or isinstance(v, bool) or v == "warn",
        allowed="true, false or 'warn'",
    )
    benchmark: Optional[bool] = setting()  # noqa: UP045
    enable_progress_bar: bool = setting()
    enable_model_summary: bool = setting()
    sync_batchnorm: bool = setting()


@dataclass
class FaultSchema:
    kill_at_step: Optional[int] = setting(ge=1)  # noqa: UP045
    how: str = setting(choices=FAULTS)


@dataclass
class ModelCheckpointSchema:
    save_last: Optional[bool] = setting()  # noqa: UP045
    save_weights_only: bool = setting()
    mode: str = setting(choices=("min", "max"))


@dataclass
class CallbacksSchema:
    model_checkpoint: ModelCheckpointSchema = field(default_factory=ModelCheckpointSchema)


@dataclass
class TrainSchema:
    """conf/config.yaml: a training run or a sweep's job."""

    data: DataSchema = field(default_factory=DataSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    treatment: TreatmentSchema = field(default_factory=TreatmentSchema)
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    callbacks: CallbacksSchema = field(default_factory=CallbacksSchema)
    fault: FaultSchema = field(default_factory=FaultSchema)
    seed: int = setting(ge=0, le=2**32 - 1)  # Lightning's seed_everything: numpy's range
    monitor: str = setting(choices=MONITORS)
    monitor_mode: str = setting(choices=("min", "max"))
    mixup_alpha: float = setting(ge=0)
    label_smoothing: float = setting(
        check=lambda v: 0 <= v < 1, allowed="a number in [0, 1) (0: off)"
    )
    attribute_targets: list[str] = setting()
    attribute_loss_weight: float = setting(ge=0)
    resume: bool = setting()
    checkpoint_every_n_steps: Optional[int] = setting(ge=1)  # noqa: UP045
    stop_signals: list[str] = setting(
        check=lambda v: all(str(s).upper() in STOP_SIGNAL_NAMES for s in v),
        allowed="a list of " + ", ".join(STOP_SIGNAL_NAMES),
    )
    resume_ignore: list[str] = setting()


@dataclass
class EvalSchema:
    """conf/eval.yaml: testing a checkpoint."""

    data: DataSchema = field(default_factory=DataSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    ckpt_path: str = setting()
    use_checkpoint_transform: bool = setting()
    flip_tta: Optional[bool] = setting()  # noqa: UP045


# --------------------------------------------------------------------------- checking
def validate(cfg: DictConfig, schema: type = TrainSchema) -> None:
    """Check ``cfg``'s values against ``schema``; raise ``ConfigError`` on the first that it
    does not allow (in the schema's order)."""
    present = _present_values(cfg, schema)
    typed = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(typed, present)
    except OmegaConfBaseException as error:
        key = str(error.full_key or error.key or "?")
        value = getattr(error, "value", None)
        top = key.split("[")[0]
        described = dict(_fields(schema)).get(top)
        allowed = _describe(*described) if described else "a value of the right type"
        raise ConfigError(_source(cfg, key) if key == top else key, value, allowed) from None
    for key, (kind, rule) in _fields(schema):
        value = OmegaConf.select(merged, key, default=None)
        if OmegaConf.is_missing(merged, key) or value is None:
            continue
        # The run uses the config's own value, not the schema's conversion of it: 'no' for a
        # bool would be true, '8' for a count would reach the DataLoader as text.
        given = _lookup(present, key)
        if not _of_type(given, kind):
            raise ConfigError(_source(cfg, key), given, _describe(kind, rule))
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if not _allowed(value, rule):
            raise ConfigError(_source(cfg, key), given, _describe(kind, rule))
    _check_transform(cfg, present)
    _check_devices(cfg, present)
    _check_added_keys(cfg)
    if schema is TrainSchema:
        _check_together(cfg, present)


def _task_overrides(cfg: DictConfig) -> list[str]:
    """The command line's overrides: from a sweep job's composed config, else the run's."""
    overrides = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return [str(item) for item in overrides]


def _check_added_keys(cfg: DictConfig) -> None:
    """Refuse ``+key=value`` where nothing reads ``key`` (``+sed=1`` for ``seed=1``): allowed
    are keys under a node built from its ``_target_`` (its constructor checks the argument),
    under ``hydra``, and under the config's ``extensible`` nodes."""
    extensible = [str(k) for k in (cfg.get("extensible") or [])]
    for override in _task_overrides(cfg):
        if not override.startswith("+") or "=" not in override:
            continue
        key = override.lstrip("+").split("=", 1)[0].strip()
        if key.startswith("hydra.") or "@" in key or _is_config_group(key):
            continue  # Hydra's own settings; a config group added (+experiment=x, +x@y=z)
        parts = key.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        if any(p in extensible for p in prefixes):
            continue
        targets = [
            i
            for i, p in enumerate(prefixes)
            if isinstance(node := OmegaConf.select(cfg, p, default=None), DictConfig)
            and "_target_" in node
        ]
        if targets and _target_takes(cfg, prefixes[targets[-1]], parts[targets[-1] + 1 :]):
            continue
        others = [k for k in _all_keys(cfg) if k != key and not k.startswith(f"{key}.")]
        close = difflib.get_close_matches(key, others, n=1)
        hint = f"; {close[0]}, perhaps" if close else ""
        value = OmegaConf.select(cfg, key, default=override.split("=", 1)[1])
        raise ConfigError(
            f"+{key}",
            OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value,
            "a key something reads (one in conf/, an argument of a _target_ node"
            + (f", or one under {', '.join(extensible)}" if extensible else "")
            + f"){hint}",
        )


# What Hydra's instantiate reads itself under a _target_ node.
HYDRA_INSTANTIATE_KEYS = ("_recursive_", "_convert_", "_partial_", "_args_")


def _target_takes(cfg: DictConfig, node: str, rest: list[str]) -> bool:
    """Whether the ``_target_`` node at ``node`` takes the added key ``node.<rest>``: the node
    itself (added whole), or an argument its class or function accepts (a named parameter, or
    any with ``**kwargs``); a target that cannot be imported here is left to instantiate."""
    if not rest or rest[0] in HYDRA_INSTANTIATE_KEYS:
        return True
    try:
        target = _locate(str(OmegaConf.select(cfg, f"{node}._target_")))
        parameters = inspect.signature(target).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return True
    return any(p.kind is p.VAR_KEYWORD for p in parameters) or rest[0] in {
        p.name for p in parameters
    }


def _locate(path: str) -> Any:
    from hydra.utils import get_object

    return get_object(path)


def _is_config_group(name: str) -> bool:
    if not GlobalHydra.instance().is_initialized():
        return False
    loader = GlobalHydra.instance().config_loader()
    return bool(loader.get_group_options(name.replace(".", "/")))


def _all_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of ``cfg`` (without Hydra's node), for suggestions."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                keys.append(f"{prefix}{name}")
                walk(value, f"{prefix}{name}.")

    walk(container, "")
    return keys


def _check_devices(cfg: DictConfig, present: dict) -> None:
    """On the CPU Lightning takes a number of processes only (trainer=ddp's -1, a list of
    indices: a TypeError once the data is loaded)."""
    devices = _lookup(present, "trainer.devices")
    if _lookup(present, "trainer.accelerator") != "cpu" or devices is None:
        return
    if devices == "auto" or (is_integer(devices) and devices >= 1):
        return
    if isinstance(devices, str) and devices.strip().isdigit() and int(devices) >= 1:
        return
    raise ConfigError(
        _source(cfg, "trainer.devices"),
        devices,
        "a number of processes >= 1 or 'auto' with trainer.accelerator=cpu",
    )


def _check_transform(cfg: DictConfig, present: dict) -> None:
    """The face crop and the augmentations, built as the data module builds them: an unknown
    augmentation, a misspelt option or a crop outside the frame ends here in one line, not in
    a traceback after the run folder is written."""
    from celeba_gender.data.transforms import (
        ALIGNED_HEIGHT,
        ALIGNED_WIDTH,
        BatchTransform,
        crop_box,
    )

    data = present.get("data") or {}
    if "face_crop" in data:
        face_crop = data["face_crop"]
        allowed = (
            f"null or {{top, left, height, width}}: a box inside the aligned "
            f"{ALIGNED_WIDTH}x{ALIGNED_HEIGHT} frame, in its pixels"
        )
        if face_crop is not None and set(face_crop) != {"top", "left", "height", "width"}:
            raise ConfigError(_source(cfg, "data.face_crop"), face_crop, allowed)
        try:
            crop_box(face_crop, ALIGNED_HEIGHT, ALIGNED_WIDTH)
        except ValueError:
            raise ConfigError(_source(cfg, "data.face_crop"), face_crop, allowed) from None
    needed = ("image_size", "face_crop", "augmentations", "mean", "std")
    if all(key in data for key in needed):
        try:
            BatchTransform(*(data[key] for key in needed))
        except (ValueError, TypeError, KeyError) as error:
            reason = (str(error).strip().splitlines() or [repr(error)])[0].rstrip(".")
            raise ConfigError(
                _source(cfg, "data.augmentations"),
                data["augmentations"],
                f"augmentations celeba_gender/data/transforms.py knows ({reason})",
            ) from None


def _check_progressive_resizing(cfg: DictConfig, present: dict) -> None:
    """data.progressive_resizing by the data module's own reading of it (transforms.py), and
    the number of epochs its ramp is a fraction of: the data module trusts both."""
    from celeba_gender.data.transforms import PROGRESSIVE_EXAMPLE, progressive_settings

    progressive = OmegaConf.select(cfg, "data.progressive_resizing", default=None)
    if not progressive:
        return
    settings = (
        OmegaConf.to_container(progressive) if OmegaConf.is_config(progressive) else progressive
    )
    key = _source(cfg, "data.progressive_resizing")
    if not isinstance(settings, dict):
        raise ConfigError(key, settings, PROGRESSIVE_EXAMPLE)
    image_size, loader = _lookup(present, "data.image_size"), _lookup(present, "data.loader")
    if isinstance(image_size, int) and loader is not None:
        try:
            progressive_settings(settings, image_size, loader)
        except ValueError as problem:
            raise ConfigError(key, settings, f"{PROGRESSIVE_EXAMPLE}: {problem}") from None
    # No number of epochs: -1, or none with max_steps or max_time (Lightning then sets -1).
    epochs = _lookup(present, "trainer.max_epochs")
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    time_limit = OmegaConf.select(cfg, "trainer.max_time", default=None)
    if epochs == -1 or (epochs is None and (steps not in (None, -1) or time_limit is not None)):
        raise ConfigError(
            key,
            settings,
            f"null with trainer.max_epochs={_show(epochs)} (the ramp is a fraction of the "
            "epochs: set trainer.max_epochs)",
        )


def _check_together(cfg: DictConfig, present: dict) -> None:
    """Rules between keys of a training config (each key on its own already passed)."""
    image_size = _lookup(present, "data.image_size")
    smallest = _lookup(present, "model.min_image_size")
    if image_size is not None and smallest is not None and image_size < smallest:
        name = _lookup(present, "model.name")
        raise ConfigError(
            _source(cfg, "data.image_size"),
            image_size,
            f"an integer >= model.min_image_size ({smallest} for {name}, the smallest input it "
            "runs at; a model that runs smaller: set model.min_image_size too)",
        )
    # max_epochs=-1 is Lightning's "no limit": with no max_steps or max_time it trains forever.
    if _lookup(present, "trainer.max_epochs") == -1:
        steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
        if steps in (None, -1) and OmegaConf.select(cfg, "trainer.max_time", default=None) is None:
            raise ConfigError(
                _source(cfg, "trainer.max_epochs"),
                -1,
                "an integer >= 1, or -1 with trainer.max_steps or trainer.max_time set (-1 "
                "alone trains forever)",
            )
    _check_progressive_resizing(cfg, present)
    # The EMA's weights reach best.ckpt through the callbacks' checkpoint hook, which a
    # weights-only checkpoint skips: the test would see the raw weights.
    if OmegaConf.select(cfg, "callbacks.ema", default=None) and OmegaConf.select(
        cfg, "callbacks.model_checkpoint.save_weights_only", default=False
    ):
        raise ConfigError(
            _source(cfg, "callbacks.model_checkpoint.save_weights_only"),
            True,
            "false with callbacks.ema set (a weights-only checkpoint would hold the raw "
            "weights, not their average)",
        )
    monitor, mode = _lookup(present, "monitor"), _lookup(present, "monitor_mode")
    if monitor is not None and mode is not None:
        best = "min" if monitor == "val/loss" else "max"
        if mode != best:
            raise ConfigError(
                _source(cfg, "monitor_mode"),
                mode,
                f"{best} for monitor={monitor} (higher is "
                f"{'worse' if best == 'min' else 'better'})",
            )
    # A scheduler's length in epochs (cosine: T_max: ${trainer.max_epochs}) must be one.
    length = OmegaConf.select(cfg, "scheduler.scheduler", default=None)
    if isinstance(length, DictConfig) and "T_max" in length:
        try:
            t_max = OmegaConf.select(cfg, "scheduler.scheduler.T_max")
        except OmegaConfBaseException:
            t_max = "${...}"
        if not (is_integer(t_max) and t_max >= 1):
            raise ConfigError(
                _source(cfg, "scheduler.scheduler.T_max"),
                t_max,
                "an integer >= 1 (the scheduler's length, scheduler.scheduler.T_max)",
            )


def _lookup(values: dict, key: str) -> Any:
    """The value at dotted ``key`` of nested ``values`` (None where there is none)."""
    for part in key.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


def _of_type(value: Any, kind: Any) -> bool:
    """Whether a plain value is of the schema type as it is, without conversion."""
    if value is None or kind is Any:
        return True
    if get_origin(kind) is Union:
        return any(_of_type(value, arg) for arg in get_args(kind) if arg is not type(None))
    origin = get_origin(kind)
    if origin in (list, Sequence):
        (item,) = get_args(kind) or (Any,)
        return isinstance(value, list) and all(_of_type(v, item) for v in value)
    if origin is dict:
        item = (get_args(kind) or (Any, Any))[1]
        return isinstance(value, dict) and all(_of_type(v, item) for v in value.values())
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_integer(value)
    if kind is float:
        return _is_number(value)
    if kind is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return True


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _source(cfg: DictConfig, key: str) -> str:
    """The key a value was set at: ``data.balance_seed`` is ``${seed}``, so ``seed=abc`` is
    named ``seed``, the key the user wrote."""
    seen: set[str] = set()
    while key not in seen:
        seen.add(key)
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            break
        try:
            raw = OmegaConf.to_container(node, resolve=False)[leaf]  # the unresolved text
        except Exception:  # noqa: BLE001 - an odd node: keep the schema's key
            break
        match = _INTERPOLATION.fullmatch(raw) if isinstance(raw, str) else None
        absent = object()
        if match is None or OmegaConf.select(cfg, match.group(1), default=absent) is absent:
            break
        key = match.group(1)
    return key


def validate_or_exit(cfg: DictConfig, schema: type = TrainSchema, stream: Any = None) -> None:
    """``validate``, ending the process with the one-line message (exit code 2)."""
    try:
        validate(cfg, schema)
    except ConfigError as error:
        print(f"error: {error}", file=stream or sys.stderr, flush=True)
        raise SystemExit(2) from None


@functools.cache
def _fields(schema: type) -> tuple[tuple[str, tuple[Any, Rule]], ...]:
    """(dotted key, (type, rule)) of every leaf field of ``schema``."""
    return tuple(_leaves(schema, ""))


def _leaves(schema: type, prefix: str) -> Iterator[tuple[str, tuple[Any, Rule]]]:
    types = typing.get_type_hints(schema)
    for item in fields(schema):
        kind = types[item.name]
        if is_dataclass(kind):
            yield from _leaves(kind, f"{prefix}{item.name}.")
        else:
            yield f"{prefix}{item.name}", (kind, item.metadata.get("rule", Rule()))


def _present_values(cfg: DictConfig, schema: type) -> dict:
    """The nested values of ``cfg`` at the schema's keys, resolved; keys it lacks are left out."""
    values: dict = {}
    for key, (kind, rule) in _fields(schema):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in list(node):  # keys, unresolved
            continue  # a key this config does not have (another optimizer's momentum)
        if OmegaConf.is_missing(node, leaf):  # ??? in the config: the user must give it
            raise ConfigError(key, "???", f"{_describe(kind, rule)} (required: {key}=...)")
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(key, "${...}", f"a value that resolves ({reason})") from None
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def _allowed(value: Any, rule: Rule) -> bool:
    if rule.choices is not None and value not in rule.choices:
        return False
    if rule.check is not None and not rule.check(value):
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return False  # nan, or inf (an infinite learning rate, loss weight, ...)
        if rule.ge is not None and value < rule.ge:
            return False
        if rule.gt is not None and value <= rule.gt:
            return False
        if rule.le is not None and value > rule.le:
            return False
    return True


_TYPE_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def _describe(kind: Any, rule: Rule) -> str:
    """What a field allows, in words: 'an integer >= 1', 'one of a, b', ..."""
    if rule.allowed:
        return rule.allowed
    if rule.choices is not None:
        return "one of " + ", ".join(str(c) for c in rule.choices)
    optional = False
    if get_origin(kind) is Union:
        args = [a for a in get_args(kind) if a is not type(None)]
        optional, kind = len(args) < len(get_args(kind)), args[0]
    origin = get_origin(kind)
    if origin in (list, Sequence):
        words = "a list of " + _TYPE_NAMES.get(get_args(kind)[0], "values").split(" ", 1)[-1] + "s"
    elif origin is dict:
        words = "a mapping"
    else:
        words = _TYPE_NAMES.get(kind, "a value")
    bounds = [
        f"{sign} {_show(bound)}"
        for sign, bound in ((">=", rule.ge), (">", rule.gt), ("<=", rule.le))
        if bound is not None
    ]
    if bounds:
        words += " " + " and ".join(bounds)
    return words + (" or null" if optional else "")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and (_reads_as_other(value) or not value.isprintable()):
        return repr(value)  # text that looks like a number or a bool, or a line break: quoted
    return str(value)


def _reads_as_other(text: str) -> bool:
    if text.strip().lower() in ("true", "false", "null", "yes", "no", "on", "off", ""):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
