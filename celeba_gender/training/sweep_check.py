"""A ``-m`` sweep checked before it launches (``ValidateSweep``, a Hydra callback in
conf/config.yaml): every job's config against the schema, and its pretrained jobs' weights
present; one message naming each bad job, and nothing launched."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from celeba_gender.config_schema import ConfigError, EvalSchema, TrainSchema, validate
from celeba_gender.library_internals import expand_sweep
from celeba_gender.models.backbones import PretrainedWeightsUnavailable, check_pretrained_weights


class ValidateSweep(Callback):
    """Hydra callback (conf/config.yaml ``hydra.callbacks``): before a ``-m`` sweep launches
    anything, compose every job's config as the basic sweeper will and check it, and check that
    its pretrained jobs' ImageNet weights are cached or downloadable (``check_weights``); a job
    the schema rejects, or a missing weights file, stops the sweep with one line each. Other
    sweepers (which choose values as they go) are left alone: each job is still checked when it
    starts, and a pretrained one without its weights fails with the same message."""

    def __init__(self, schema: str = "train", check_weights: bool = True) -> None:
        self.schema = {"train": TrainSchema, "eval": EvalSchema}[schema]
        self.check_weights = check_weights

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
        if not sweeper.endswith("BasicSweeper") or not GlobalHydra.instance().is_initialized():
            return
        errors, jobs = [], []
        for number, overrides, job in sweep_jobs(config, self.schema):
            if isinstance(job, DictConfig):
                jobs.append(job)
            else:
                errors.append(f"error: job {number} ({' '.join(overrides)}): {job}")
        if self.check_weights:
            try:
                check_pretrained_weights(pretrained_backbones(jobs))
            except PretrainedWeightsUnavailable as error:
                errors.append(f"error: {error}")
        if errors:
            print("\n".join([*errors, "Nothing was launched."]), file=sys.stderr, flush=True)
            raise SystemExit(2)


def pretrained_backbones(jobs: Sequence[DictConfig]) -> list[tuple[str, bool]]:
    """(backbone, allow_download) of each job that starts from pretrained weights: what its
    ``module`` node builds."""
    return [
        (str(job.module.backbone), bool(job.module.allow_download))
        for job in jobs
        if OmegaConf.select(job, "module.pretrained", default=False)
    ]


def sweep_jobs(
    config: DictConfig, schema: type = TrainSchema
) -> Iterator[tuple[int, list[str], DictConfig | str | ConfigError]]:
    """(job number, its overrides, its config) of each job of the basic sweeper's sweep; in
    place of the config, the ConfigError or why it does not compose of a job that cannot run."""
    loader = GlobalHydra.instance().config_loader()
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(config.hydra.overrides.task)
    jobs = expand_sweep(arguments, loader)
    for number, overrides in enumerate(jobs):
        try:
            job_config = loader.load_sweep_config(config, list(overrides))
        except (HydraException, OmegaConfBaseException) as error:
            # A job that does not compose (model=nonexist): its first line, as for a bad value
            # (Hydra would only warn of a callback's exception, then fail at that job).
            yield number, overrides, str(error).strip().splitlines()[0]
            continue
        try:
            validate(job_config, schema)
        except ConfigError as error:
            yield number, overrides, error
        else:
            yield number, overrides, job_config
