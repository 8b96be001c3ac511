"""OmegaConf resolvers the configs use, registered on import (before Hydra composes)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    # ${project_root:} anchors outputs/ and the sample data to the checkout, not the cwd.
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("package_dir", lambda: str(PACKAGE_DIR), replace=True)


register_resolvers()
