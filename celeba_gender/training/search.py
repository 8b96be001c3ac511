"""Hyperparameter search: a Hydra sweeper on Optuna's ask-and-tell interface.

``python train.py -m hparams_search=lr_wd model=resnet18,vgg11 experiment=cpu_quick``
(conf/hparams_search/, conf/hydra/sweeper/optuna.yaml). Why the project's own sweeper:
hydra-optuna-sweeper 1.3 pins optuna<3, which current packages no longer install beside; its
structure is kept (search space from ``hydra.sweeper.params`` in Hydra's sweep syntax, trials
asked in batches and handed to the launcher), on Optuna 4's ask-and-tell. Ask-and-tell lets each
trial be an ordinary job of whichever launcher runs the sweep (basic, local, slurm): a normal
run folder that the status view, ``resume=true`` and the analysis read like a grid job's.

- **One study per backbone.** The command's comma lists (``model=resnet18,vgg11``,
  ``treatment=a,b``) expand as the basic sweeper expands them, and each combination is its own
  study of ``n_trials`` trials over the same search space: every backbone gets its own tuned
  values and the same budget. One study with the model as a searched choice would let the
  sampler spend trials unevenly and compare backbones at unequal tuning.
- **Storage:** every study in one Optuna journal file in the sweep folder
  (``JournalFileBackend``). Appended, fsynced lines: a kill loses at most the line being
  written, no database schema or migration, and it works on the network file systems of
  clusters, where SQLite's locking does not.
- **Resume** (``resume=true``, the project's flag): finished trials are kept; a trial that was
  running when the search was killed is launched again with its own values in its own folder,
  where the run continues from its ``last.ckpt`` (or is skipped if it had finished); then the
  search asks for trials until each study has ``n_trials``. The sampler is seeded by (seed,
  trials so far), so it does not repeat the values it drew before the kill.
- **Objective:** each trial's ``best_val`` (the best validation ``monitor``) from its
  metrics.json; a trial whose run failed, or that has none, is told FAIL and the search goes on.
- **Best values:** printed at the end and written to ``<sweep>/optuna_best.yaml``.

Optuna is imported only when a search runs: Hydra imports every plugin at start-up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from celeba_gender.library_internals import expand_sweep
from celeba_gender.quiet_interrupt import quiet_imports
from celeba_gender.training.resume import flatten_config, read_record, say

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

BEST_FILE = "optuna_best.yaml"
JOB_NUMBER = "job_num"  # a trial's user attribute: the number of its run folder
TRIAL_OVERRIDES = "overrides"  # a trial's user attribute: the overrides it was asked with
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}


class SearchError(Exception):
    """A search that cannot run as asked; nothing was launched."""


# --------------------------------------------------------------------------- search space
def distribution(override: Override) -> Any:
    """The Optuna distribution of one ``hydra.sweeper.params`` entry in Hydra's sweep syntax
    (``interval(a, b)``, ``tag(log, interval(a, b))``, ``range(a, b[, step])``,
    ``choice(a, b)`` or ``a,b``), or None for a plain value (fixed in every trial)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if override.is_range_sweep() and not value.shuffle:
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            step = float(value.step)
            return FloatDistribution(float(value.start), float(value.stop), step=step)
        # Hydra's range stops before `stop`, Optuna's includes `high`.
        return IntDistribution(int(value.start), int(value.stop) - value.step, step=value.step)
    return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))


def search_space(params: DictConfig | dict | None) -> tuple[dict[str, Any], list[str]]:
    """``hydra.sweeper.params`` as (searched key: distribution, fixed overrides). Keys may be
    dotted (``optimizer.lr: ...``) or nested."""
    flat = flatten_config(OmegaConf.to_container(OmegaConf.create(params or {})))
    lines = [f"{key}={value}" for key, value in flat.items() if key]
    space, fixed = {}, []
    for override in OverridesParser.create().parse_overrides(lines):
        found = distribution(override)
        if found is None:
            fixed.append(override.input_line)
        else:
            space[override.get_key_element()] = found
    if "data.final_fit" in space:
        raise SearchError(
            "data.final_fit cannot be searched: it trains on the validation images each trial is "
            "judged on. Search with data.final_fit=false, then make the final fit with the best "
            "values (optuna_best.yaml)."
        )
    return space, fixed


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's values as overrides (floats in their shortest exact form)."""
    return [f"{key}={value}" for key, value in params.items()]


def _sample_values(space: dict[str, Any]) -> dict[str, Any]:
    """One value of each distribution (its low end, its first choice): to compose a study's
    config before anything is launched."""
    return {key: d.choices[0] if hasattr(d, "choices") else d.low for key, d in space.items()}


# --------------------------------------------------------------------------- studies
@dataclass(frozen=True)
class StudyPlan:
    """One study: its name and the overrides every one of its trials gets."""

    name: str
    overrides: list[str]


def study_plans(arguments: Sequence[str], config_loader: Any) -> list[StudyPlan]:
    """The command's overrides expanded as the basic sweeper expands them: one study per
    combination of its comma lists, named by the values that vary."""
    parser = OverridesParser.create(config_loader=config_loader)
    parsed = parser.parse_overrides(list(arguments))
    searched = [o.input_line for o in parsed if o.is_sweep_override() and not o.is_discrete_sweep()]
    if searched:
        raise SearchError(
            f"{', '.join(searched)}: a searched range goes in the search space, e.g. "
            "'hydra.sweeper.params.optimizer.lr=\"tag(log,interval(1e-5,1e-2))\"' "
            "(comma lists on the command line make one study per value)."
        )
    varying = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    jobs = expand_sweep(arguments, config_loader)
    plans = []
    for job in jobs:
        named = [o for o in job if o.split("=", 1)[0].lstrip("+~") in varying]
        plans.append(StudyPlan(name=" ".join(named) or "search", overrides=list(job)))
    return plans


class OptunaSearchSweeper(Sweeper):
    """Optuna's ask-and-tell as a Hydra sweeper: one study per combination of the command's
    comma lists, each trial a job of the configured launcher (see the module's docstring)."""

    def __init__(
        self,
        direction: str = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        storage: str = "optuna.journal",
        sampler: DictConfig | None = None,
        params: DictConfig | None = None,
    ) -> None:
        # Checked when the search starts (_check_settings), where a mistake can be one line.
        self.direction = DIRECTIONS.get(str(direction), str(direction))
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.storage = str(storage)
        self.sampler_config = sampler
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None
        self._next_job = 0  # the run folder number of the next trial asked

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # -- the search
    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        try:
            return self._sweep(arguments)
        except SearchError as error:
            say(f"error: {error}\nNothing was launched.")
            raise SystemExit(2) from None

    def _sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        with quiet_imports(__name__):  # seconds
            import optuna
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

        assert self.config is not None and self.hydra_context is not None
        self._check_settings()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        space, fixed = search_space(self.params)
        if not space:
            raise SearchError(
                "hydra.sweeper.params has nothing to search: use an hparams_search config "
                "(hparams_search=lr_wd) or give KEY: interval(a, b) entries."
            )
        plans = study_plans(arguments, self.hydra_context.config_loader)
        journal = sweep_dir / self.storage
        if journal.is_file() and not bool(self.config.get("resume", False)):
            raise SearchError(
                f"{journal} holds a search already. Pass resume=true to continue it, or "
                "choose another hydra.sweep.dir."
            )
        self._check_studies(plans, space, fixed)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        # Run folders are numbered in the order trials are asked, across all studies.
        self._next_job = 1 + max(
            (
                int(trial.user_attrs.get(JOB_NUMBER, -1))
                for name in optuna.get_all_study_names(storage)
                for trial in optuna.load_study(study_name=name, storage=storage).get_trials(
                    deepcopy=False
                )
            ),
            default=-1,
        )
        studies = []
        existing = set(optuna.get_all_study_names(storage))
        for plan in plans:  # every study checked before the first trial
            # An existing study loaded, not "created if new": a journal appends the creation
            # even when the study exists, and a refused command must leave the folder as it was.
            study = (
                optuna.load_study(study_name=plan.name, storage=storage)
                if plan.name in existing
                else optuna.create_study(
                    storage=storage, study_name=plan.name, direction=self.direction
                )
            )
            self._check_same_search(study, plan, space, fixed, journal)
            studies.append((plan, study))
        # As the basic sweeper does; after the checks, so a refused command leaves it as it was.
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[Sequence[JobReturn]] = []
        for plan, study in studies:
            returns += self._run_study(study, plan, space, fixed)
        self._report_best(studies, sweep_dir)
        return returns

    def _check_settings(self) -> None:
        if self.direction not in DIRECTIONS.values():
            raise SearchError(
                f"hydra.sweeper.direction={self.direction}: expected max or min (monitor_mode)."
            )
        given = f"hydra.sweeper.n_trials={self.n_trials}, n_jobs={self.n_jobs}"
        try:
            self.n_trials, self.n_jobs = int(self.n_trials), int(self.n_jobs)
        except (TypeError, ValueError):
            self.n_trials = self.n_jobs = 0
        if self.n_trials < 1 or self.n_jobs < 1:
            raise SearchError(f"{given}: each must be a whole number >= 1.")

    def _check_studies(self, plans: list[StudyPlan], space: dict, fixed: list[str]) -> None:
        """Compose each study's config with one value of each searched key and check it
        against the schema: a wrong key or value stops the search before any trial."""
        from celeba_gender.config_schema import ConfigError, TrainSchema, validate
        from celeba_gender.models.backbones import (
            PretrainedWeightsUnavailable,
            check_pretrained_weights,
        )
        from celeba_gender.training.sweep_check import pretrained_backbones

        errors, configs, refused = [], [], []
        for plan in plans:
            overrides = [*plan.overrides, *trial_overrides(_sample_values(space)), *fixed]
            try:
                configs.append(self._job_config(overrides, 0))
                validate(configs[-1], TrainSchema)
            except (HydraException, OmegaConfBaseException, ConfigError) as error:
                errors.append(f"study {plan.name}: {str(error).strip().splitlines()[0]}")
                continue
            if configs[-1].data.get("final_fit"):
                refused.append(
                    f"study {plan.name}: data.final_fit=true trains on the validation images, "
                    "and a search is judged on them (each trial's best validation score): "
                    "search with data.final_fit=false, then make the final fit with the best "
                    "values (optuna_best.yaml)."
                )
        try:  # as a sweep's check before launch (ValidateSweep): every trial would fail
            check_pretrained_weights(pretrained_backbones(configs))
        except PretrainedWeightsUnavailable as error:
            errors.append(str(error))
        errors += refused
        if errors:
            raise SearchError("\n".join(errors))

    def _check_same_search(
        self, study: optuna.Study, plan: StudyPlan, space: dict, fixed: list[str], journal: Path
    ) -> None:
        """A study continued with ``resume=true`` must search what it was started with (each
        trial's run checks the rest of its config when it resumes)."""
        assert self.config is not None
        from celeba_gender.training.resume import is_ignored

        # What may change on resume (resume_ignore: resume itself, loggers, paths...) may change
        # here too; any other override would mix trials of two searches in one study.
        ignore = [str(pattern) for pattern in self.config.get("resume_ignore") or ()]
        kept = [
            o
            for o in plan.overrides
            if not is_ignored(key := o.split("=", 1)[0].lstrip("+~"), ignore)
            and not is_ignored(f"{key}.", ignore)  # a group (logger=none) as its keys
        ]
        searched = {
            "direction": self.direction,
            "params": {key: repr(d) for key, d in space.items()},
            "fixed": fixed,
            "overrides": sorted(kept),
        }
        saved = study.user_attrs.get("search")
        if saved is None:
            study.set_user_attr("search", searched)
            return
        changed = [  # a study from before a key was recorded is checked on the others
            f"{k}: {saved[k]} -> {v}" for k, v in searched.items() if k in saved and saved[k] != v
        ]
        if changed:
            raise SearchError(
                f"study {plan.name} in {journal} was started with another search:\n  "
                + "\n  ".join(changed)
                + "\nRun the original command with resume=true, or choose another "
                "hydra.sweep.dir."
            )

    def _sampler(self, offset: int) -> Any:
        """The configured sampler; a seeded one moved on by ``offset`` (the study's trials so
        far), so that a resumed study does not draw the values it drew before."""
        if self.sampler_config is None:
            return None
        config = OmegaConf.to_container(self.sampler_config, resolve=True)
        if config.get("seed") is not None:
            config["seed"] = int(config["seed"]) + offset
        return instantiate(config)

    def _run_study(
        self, study: optuna.Study, plan: StudyPlan, space: dict, fixed: list[str]
    ) -> list[Sequence[JobReturn]]:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        study.sampler = self._sampler(offset=len(trials))
        # Trials that were running when the search was killed, continued in their folders.
        pending = []
        for trial in trials:
            if trial.state != TrialState.RUNNING:
                continue
            if JOB_NUMBER not in trial.user_attrs:  # killed between ask and its number
                study.tell(trial.number, state=TrialState.FAIL)
                continue
            pending.append((trial.number, trial.params, int(trial.user_attrs[JOB_NUMBER])))
        to_ask = max(0, self.n_trials - len(trials))
        if pending:
            log.info("Study %s: continuing %d unfinished trial(s).", plan.name, len(pending))
        log.info(
            "Study %s: %d trial(s) done, %d to run (n_trials=%d).",
            plan.name,
            len(trials) - len(pending),
            len(pending) + to_ask,
            self.n_trials,
        )
        returns = []
        while pending or to_ask:
            batch, pending = pending[: self.n_jobs], pending[self.n_jobs :]
            while len(batch) < self.n_jobs and to_ask:
                trial = study.ask(space)
                trial.set_user_attr(JOB_NUMBER, self._next_job)
                # What it ran with, as asked (the best-values file names these, not a later
                # command's).
                asked = [o for o in plan.overrides if o.split("=", 1)[0] != "resume"]
                trial.set_user_attr(TRIAL_OVERRIDES, [*asked, *trial_overrides(trial.params)])
                batch.append((trial.number, trial.params, self._next_job))
                self._next_job += 1
                to_ask -= 1
            returns.append(self._launch(study, plan, fixed, batch))
        return returns

    def _launch(
        self,
        study: optuna.Study,
        plan: StudyPlan,
        fixed: list[str],
        batch: list[tuple[int, dict, int]],
    ) -> list[JobReturn]:
        """Launch a batch of trials (consecutive job numbers together) and tell their values."""
        from optuna.trial import TrialState

        returns: list[JobReturn] = []
        launched: list[list[str]] = []
        start = 0
        while start < len(batch):
            end = start + 1
            while end < len(batch) and batch[end][2] == batch[end - 1][2] + 1:
                end += 1
            chunk = batch[start:end]
            overrides = [
                [*plan.overrides, *trial_overrides(params), *fixed] for _, params, _ in chunk
            ]
            returns += self.launcher.launch(overrides, initial_job_idx=chunk[0][2])
            launched += overrides
            start = end
        for (number, _, job), overrides, result in zip(batch, launched, returns, strict=True):
            folder = self._job_folder(overrides, job)
            value, error = objective(result, folder)
            if value is None:
                log.warning("Study %s, trial %d (%s) failed: %s", plan.name, number, folder, error)
                study.tell(number, state=TrialState.FAIL)
            else:
                study.tell(number, value)
                log.info("Study %s, trial %d: %.4f (%s)", plan.name, number, value, folder.name)
        return returns

    def _job_config(self, overrides: list[str], number: int) -> DictConfig:
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        return config

    def _job_folder(self, overrides: list[str], number: int) -> Path:
        assert self.config is not None
        subdir = str(self._job_config(overrides, number).hydra.sweep.subdir)
        return Path(str(self.config.hydra.sweep.dir)) / subdir

    # -- the result
    def _report_best(self, studies: list[tuple[StudyPlan, optuna.Study]], sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        assert self.config is not None
        monitor = str(self.config.get("monitor", "objective"))
        best: dict[str, Any] = {}
        lines = []
        for plan, study in studies:
            states = [t.state for t in study.get_trials(deepcopy=False)]
            counts = {
                "complete": states.count(TrialState.COMPLETE),
                "failed": states.count(TrialState.FAIL),
            }
            if not counts["complete"]:
                best[plan.name] = {"best_value": None, "trials": counts}
                lines.append(f"  {plan.name}: no trial completed ({counts['failed']} failed)")
                continue
            trial = study.best_trial
            job = int(trial.user_attrs[JOB_NUMBER])
            overrides = list(
                trial.user_attrs.get(
                    TRIAL_OVERRIDES, [*plan.overrides, *trial_overrides(trial.params)]
                )
            )
            folder = self._job_folder(overrides, job)
            best[plan.name] = {
                "best_value": trial.value,
                "best_params": dict(trial.params),
                "overrides": overrides,
                "run_dir": folder.name,
                "trial": trial.number,
                "trials": counts,
            }
            values = ", ".join(f"{k}={v:.4g}" for k, v in trial.params.items())
            lines.append(
                f"  {plan.name}: {monitor} {trial.value:.4f} with {values} "
                f"(trial {trial.number}, {folder.name}/; {counts['complete']} complete, "
                f"{counts['failed']} failed)"
            )
        record = {
            "objective": f"best {monitor} on validation (metrics.json best_val)",
            "direction": self.direction,
            "storage": self.storage,
            "studies": best,
        }
        OmegaConf.save(OmegaConf.create(record), sweep_dir / BEST_FILE)
        log.info(
            "Best values (%s, %s):\n%s\nWritten to %s",
            monitor,
            self.direction,
            "\n".join(lines),
            sweep_dir / BEST_FILE,
        )


def objective(result: JobReturn, folder: Path) -> tuple[float | None, str]:
    """A trial's value: ``best_val`` of its run folder's metrics.json; (None, why) when the
    run failed or has none."""
    try:
        result.return_value  # noqa: B018 - raises what the job raised
    except Exception as error:  # noqa: BLE001 - a failed trial, told FAIL
        return None, f"{type(error).__name__}: {error}"
    record = read_record(folder)
    if record.get("status") != "ok":
        why = record.get("error") or "the run left no result (see its output)"
        return None, f"status {record.get('status', 'missing')}: {why}"
    value = record.get("best_val")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"no finite best_val in its metrics.json ({value!r}): no validation part?"
    return float(value), ""
