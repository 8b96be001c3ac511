"""Where the configs, the notebook and the run outputs are; the OmegaConf resolvers the configs
use, registered by each command when it starts (``register_resolvers``, before Hydra composes)
and by the library functions that compose or resolve a config themselves.

Two layouts: a clone of the repository (or an editable install of it), where conf/ and
notebooks/ sit beside the package, and an installed wheel (``pip install .``), which ships
them inside the package as celeba_gender/conf and celeba_gender/notebooks (pyproject.toml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
# The repository the package runs from, or None for an installed wheel (it carries its conf/).
PROJECT_ROOT: Path | None = None if (PACKAGE_DIR / "conf").is_dir() else PACKAGE_DIR.parent
_SHIPPED_DIR = PACKAGE_DIR if PROJECT_ROOT is None else PROJECT_ROOT
CONFIG_DIR = _SHIPPED_DIR / "conf"
NOTEBOOK_DIR = _SHIPPED_DIR / "notebooks"
# Where outputs/ goes when set; else the clone, or the current directory for an installed wheel
# (never site-packages).
ROOT_ENV = "CELEBA_GENDER_ROOT"


def is_integer(value: Any) -> bool:
    """A config value that is a whole number: an int, not a bool (YAML's true is an int to
    Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def output_root() -> Path:
    """The folder that holds outputs/ (``${project_root:}`` in the configs)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    return PROJECT_ROOT if PROJECT_ROOT is not None else Path.cwd()


def register_resolvers() -> None:
    """``${project_root:}``, ``${package_dir:}``, ``${notebook_dir:}`` (idempotent)."""
    OmegaConf.register_new_resolver("project_root", lambda: str(output_root()), replace=True)
    OmegaConf.register_new_resolver("package_dir", lambda: str(PACKAGE_DIR), replace=True)
    OmegaConf.register_new_resolver("notebook_dir", lambda: str(NOTEBOOK_DIR), replace=True)


def compose_config(name: str = "config", overrides: list[str] | None = None) -> DictConfig:
    """A config of conf/ composed as its command composes it (resolvers registered), outside
    a running Hydra app: the analysis, exports, benchmarks and tests."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides or []))
