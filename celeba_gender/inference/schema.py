"""What predict (conf/predict.yaml) and the demo (conf/demo.yaml) allow: their schemas, checked
by config_schema.validate before anything loads, as a training run's config is.

A value the schema refuses ends the command with one line naming the key, the value and what
is allowed (``ConfigError``). What depends on the machine rather than on the value (a file that
must exist, a port another program holds, a folder that must be writable) is checked where it
is used. The ``video`` and ``decimals`` sections are read, and checked, by their owners
(``VideoSettings.from_config``, ``Decimals.from_config``): predict calls them first, the demo
when it builds its page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from celeba_gender.config_schema import setting
from celeba_gender.inference.explain import TOWARD


def _is_colormap(name: Any) -> bool:
    from matplotlib import colormaps

    return isinstance(name, str) and name in colormaps


@dataclass
class AlignmentSchema:
    min_face_size: int = setting(ge=1)
    min_score: float = setting(ge=0, le=1)


@dataclass
class PredictSchema:
    """conf/predict.yaml: labelling photos and videos."""

    ckpt_path: str = setting()
    input: Any = setting()
    detect: bool = setting()
    threshold: float = setting(ge=0, le=1)
    device: str = setting()
    batch_size: int = setting(ge=1)
    max_pixels: int = setting(ge=1)
    annotate: bool = setting()
    explain: bool = setting()
    explain_toward: str = setting(choices=TOWARD)
    explain_target_layer: Optional[str] = setting()  # noqa: UP045 - OmegaConf reads typing
    explain_alpha: float = setting(ge=0, le=1)
    explain_colormap: str = setting(
        check=_is_colormap, allowed="a matplotlib colormap name (e.g. jet, viridis, inferno)"
    )
    gallery: bool = setting()
    gallery_columns: int = setting(ge=1)
    gallery_max_photos: int = setting(ge=0)
    alignment: AlignmentSchema = field(default_factory=AlignmentSchema)


@dataclass
class DemoFilesSchema:
    folder: Optional[str] = setting()  # noqa: UP045
    max_age_minutes: float = setting(gt=0)


@dataclass
class DemoSchema(PredictSchema):
    """conf/demo.yaml: predict's settings, and the page's own."""

    input: Any = setting()  # not used: photos come from the page
    host: str = setting()
    port: int = setting(ge=1, le=65535)
    max_upload_mb: float = setting(gt=0)
    files: DemoFilesSchema = field(default_factory=DemoFilesSchema)
    models_in_memory: int = setting(ge=1)
