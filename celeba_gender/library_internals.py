"""The private names of Lightning, Hydra, submitit and TensorBoard the project relies on, in one
place: no public API does these jobs. Each is looked up when first used; a library version
without it fails with one message naming it (tests/test_library_internals.py checks them all
against the installed versions, and tests/test_architecture.py that no other module reaches for
a library's private name). training/ddp.py's launcher is the other door: it subclasses
Lightning's private DDP launcher, whose names it overrides are listed in ``LIGHTNING_NAMES``
too.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

# (module, dotted attribute) of every private name used, for the check.
SPLIT_ARGUMENTS = ("hydra._internal.core_plugins.basic_sweeper", "BasicSweeper.split_arguments")
HYDRA_NAMES = [SPLIT_ARGUMENTS]
SHOULD_ACCUMULATE = ("lightning.pytorch.loops.fit_loop", "_FitLoop._should_accumulate")
DUMP_CHECKPOINT = (
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
    "_CheckpointConnector.dump_checkpoint",
)
SANITIZE_PARAMS = ("lightning.pytorch.loggers.tensorboard", "TensorBoardLogger._sanitize_params")
# The fit loop's training-epoch loop, whose batch counter batches_ready reads.
TRAINING_EPOCH_LOOP = ("lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop")
LIGHTNING_NAMES = [
    SHOULD_ACCUMULATE,
    (
        "lightning.pytorch.strategies.launchers.subprocess_script",
        "_SubprocessScriptLauncher._call_children_scripts",
    ),
    (
        "lightning.pytorch.strategies.launchers.subprocess_script",
        "_SubprocessScriptLauncher._check_can_spawn_children",
    ),
    ("lightning.pytorch.strategies.ddp", "DDPStrategy._configure_launcher"),
    DUMP_CHECKPOINT,
    SANITIZE_PARAMS,
    TRAINING_EPOCH_LOOP,
]
# Attributes set on each instance (in __init__), not on the class: checked on a new instance.
STRATEGY_LAUNCHER = ("lightning.pytorch.strategies.ddp", "DDPStrategy._launcher")
WANDB_EXPERIMENT = ("lightning.pytorch.loggers.wandb", "WandbLogger._experiment")
LIGHTNING_INSTANCE_NAMES = [STRATEGY_LAUNCHER, WANDB_EXPERIMENT]
RESULTS_TIMEOUT = ("submitit.core.core", "Job._results_timeout_s")
# hydra-submitit-launcher's name of the submitit cluster a launcher class submits to.
EXECUTOR = (
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    "BaseSubmititLauncher._EXECUTOR",
)
SUBMITIT_NAMES = [RESULTS_TIMEOUT, EXECUTOR]
# The SummaryWriter Lightning's TensorBoardLogger writes with (torch's, tensorboard installed).
FILE_WRITER = ("torch.utils.tensorboard.writer", "SummaryWriter._get_file_writer")
TENSORBOARD_NAMES = [FILE_WRITER]
# A module's top package -> the distribution to install (where the two names differ).
_DISTRIBUTIONS = {"hydra_plugins": "hydra-submitit-launcher"}


class LibraryChanged(RuntimeError):
    """An installed library lacks a private name the project uses."""


def _gone(module: str, attribute: str) -> LibraryChanged:
    top = module.split(".")[0]
    library = _DISTRIBUTIONS.get(top, top)
    return LibraryChanged(
        f"{module}.{attribute} is gone from the installed {library}: celeba-gender needs "
        f"the {library} version pyproject.toml pins (pip install -e '.[dev]')"
    )


def private(module: str, attribute: str) -> Any:
    """``module.attribute`` (dotted), or LibraryChanged saying which and what to install."""
    try:
        value: Any = importlib.import_module(module)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError):
        raise _gone(module, attribute) from None
    return value


def require_attribute(instance: Any, name: tuple[str, str]) -> None:
    """LibraryChanged unless ``instance`` has the attribute ``name`` (an entry of
    ``LIGHTNING_INSTANCE_NAMES``: set in ``__init__``, so not on the class to look up)."""
    module, attribute = name
    if not hasattr(instance, attribute.rsplit(".", 1)[-1]):
        raise _gone(module, attribute)


def expand_sweep(overrides: Sequence[str], config_loader: Any) -> list[list[str]]:
    """The jobs of a ``-m`` command's overrides, as Hydra's basic sweeper expands them (comma
    lists crossed, in its order): its ``split_arguments`` is not public."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    split = private(*SPLIT_ARGUMENTS)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides))
    return [list(job) for batch in split(parsed, None) for job in batch]


def should_accumulate(trainer: Any) -> bool:
    """Whether the trainer's current batch is inside a gradient-accumulation window (its
    gradients not yet applied): Lightning's fit loop knows, privately."""
    private(*SHOULD_ACCUMULATE)
    return bool(trainer.fit_loop._should_accumulate())


def batches_ready(trainer: Any) -> int:
    """How many of this epoch's training batches the fit loop took before the current one (0 in
    the current batch's hooks; restored on resume): a counter of its training-epoch loop, a
    private class."""
    private(*TRAINING_EPOCH_LOOP)
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


def dump_checkpoint(trainer: Any, weights_only: bool) -> dict[str, Any]:
    """What ``trainer.save_checkpoint`` would write now, taken without writing it (to write it
    later with ``trainer.strategy.save_checkpoint``): Lightning's connector does it, privately."""
    private(*DUMP_CHECKPOINT)
    return trainer._checkpoint_connector.dump_checkpoint(weights_only)


def set_launcher(strategy: Any, launcher: Any) -> None:
    """Make ``launcher`` the one that starts the strategy's other ranks: Lightning's strategies
    read it from an attribute their ``_configure_launcher`` sets (``strategy.launcher`` only
    reads it)."""
    require_attribute(strategy, STRATEGY_LAUNCHER)
    strategy._launcher = launcher


def sanitize_hparams(logger: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as Lightning's TensorBoard logger writes hyperparameters (a value TensorBoard
    cannot show, e.g. an array, as its text), done by a private static method of the logger."""
    private(*SANITIZE_PARAMS)
    return logger._sanitize_params(params)


def file_writer(writer: Any) -> Any:
    """The SummaryWriter's event-file writer, reopened if the writer was closed: it takes the
    raw summaries (``add_summary``) that the HParams table is made of, which no public method
    writes to the run's own folder."""
    private(*FILE_WRITER)
    return writer._get_file_writer()


def wandb_run_started(logger: Any) -> bool:
    """Whether Lightning's W&B logger has opened (or joined) its run: ``logger.experiment``
    would open one (and on another rank than 0 answers with a stand-in)."""
    require_attribute(logger, WANDB_EXPERIMENT)
    return logger._experiment is not None


def submitit_cluster(launcher: Any) -> str:
    """The submitit cluster (``local``, ``slurm``) a hydra-submitit-launcher launcher class
    submits to: a class attribute its executor is built from."""
    private(*EXECUTOR)
    return launcher._EXECUTOR


def wait_for_results_at_most(job: Any, seconds: float) -> None:
    """How long submitit waits for a finished job's result file before calling it dead (15 s,
    for a shared disk's delay): an attribute of its jobs, not a parameter."""
    private(*RESULTS_TIMEOUT)
    job._results_timeout_s = seconds
