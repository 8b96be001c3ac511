"""The wheel's packages. pyproject.toml holds everything else but cannot add packages to the
ones it finds, so they are listed here: celeba_gender and the hydra_plugins namespace as found,
plus the repository's top-level conf/ and notebooks/ shipped as celeba_gender/conf and
celeba_gender/notebooks (their files: package-data in pyproject.toml). An installed package
thus runs without the clone; celeba_gender/config.py finds the configs in either place."""

from setuptools import find_namespace_packages, setup

SHIPPED = {"celeba_gender.conf": "conf", "celeba_gender.notebooks": "notebooks"}
# Config groups (conf/model, ...) are listed too, or setuptools warns about each folder.
GROUPS = [f"celeba_gender.conf.{name}" for name in find_namespace_packages(where="conf")]

setup(
    # hydra_plugins: the namespace where Hydra looks for launchers (hydra/launcher=local|slurm).
    packages=[*find_namespace_packages(include=["celeba_gender*", "hydra_plugins*"]), *SHIPPED]
    + GROUPS,
    package_dir=SHIPPED,
)
