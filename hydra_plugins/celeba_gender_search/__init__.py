"""Hydra finds sweepers only in the ``hydra_plugins`` namespace: this name points Hydra at the
hyperparameter search of celeba_gender/training/search.py (configs: conf/hydra/sweeper/optuna.yaml,
conf/hparams_search/). Optuna itself is imported only when a search runs."""

from celeba_gender.training import search


class OptunaSearchSweeper(search.OptunaSearchSweeper):
    __doc__ = search.OptunaSearchSweeper.__doc__
