"""Hydra finds launchers only in the ``hydra_plugins`` namespace: these names point Hydra at
the launchers of celeba_gender/training/launchers.py (configs: conf/hydra/launcher/)."""

from celeba_gender.training import launchers


class LocalJobLauncher(launchers.LocalJobLauncher):
    __doc__ = launchers.LocalJobLauncher.__doc__


class SlurmJobLauncher(launchers.SlurmJobLauncher):
    __doc__ = launchers.SlurmJobLauncher.__doc__
