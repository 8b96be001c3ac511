"""The private names of Lightning, Hydra and submitit the project relies on, in one place:
no public API does these jobs. Each is looked up when first used; a library version without
it fails with one message naming it (tests/test_library_internals.py checks them all against
the installed versions). training/ddp.py's launcher is the other door: it subclasses
Lightning's private DDP launcher, whose names it overrides are listed in ``LIGHTNING_NAMES``
too.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

# (module, dotted attribute) of every private name used, for the check.
HYDRA_NAMES = [("hydra._internal.core_plugins.basic_sweeper", "BasicSweeper.split_arguments")]
LIGHTNING_NAMES = [
    ("lightning.pytorch.loops.fit_loop", "_FitLoop._should_accumulate"),
    (
        "lightning.pytorch.strategies.launchers.subprocess_script",
        "_SubprocessScriptLauncher._call_children_scripts",
    ),
    (
        "lightning.pytorch.strategies.launchers.subprocess_script",
        "_SubprocessScriptLauncher._check_can_spawn_children",
    ),
    ("lightning.pytorch.strategies.ddp", "DDPStrategy._configure_launcher"),
    (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "_CheckpointConnector.dump_checkpoint",
    ),
]
DUMP_CHECKPOINT = LIGHTNING_NAMES[-1]
SUBMITIT_NAMES = [("submitit.core.core", "Job._results_timeout_s")]


class LibraryChanged(RuntimeError):
    """An installed Lightning or Hydra lacks a private name the project uses."""


def private(module: str, attribute: str) -> Any:
    """``module.attribute`` (dotted), or LibraryChanged saying which and what to install."""
    try:
        value: Any = importlib.import_module(module)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError):
        library = module.split(".")[0]
        raise LibraryChanged(
            f"{module}.{attribute} is gone from the installed {library}: celeba-gender needs "
            f"the {library} version pyproject.toml pins (pip install -e '.[dev]')"
        ) from None
    return value


def expand_sweep(overrides: Sequence[str], config_loader: Any) -> list[list[str]]:
    """The jobs of a ``-m`` command's overrides, as Hydra's basic sweeper expands them (comma
    lists crossed, in its order): its ``split_arguments`` is not public."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    split = private(*HYDRA_NAMES[0])
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides))
    return [list(job) for batch in split(parsed, None) for job in batch]


def should_accumulate(trainer: Any) -> bool:
    """Whether the trainer's current batch is inside a gradient-accumulation window (its
    gradients not yet applied): Lightning's fit loop knows, privately."""
    private(*LIGHTNING_NAMES[0])
    return bool(trainer.fit_loop._should_accumulate())


def dump_checkpoint(trainer: Any, weights_only: bool) -> dict[str, Any]:
    """What ``trainer.save_checkpoint`` would write now, taken without writing it (to write it
    later with ``trainer.strategy.save_checkpoint``): Lightning's connector does it, privately."""
    private(*DUMP_CHECKPOINT)
    return trainer._checkpoint_connector.dump_checkpoint(weights_only)


def wait_for_results_at_most(job: Any, seconds: float) -> None:
    """How long submitit waits for a finished job's result file before calling it dead (15 s,
    for a shared disk's delay): an attribute of its jobs, not a parameter."""
    private(*SUBMITIT_NAMES[0])
    job._results_timeout_s = seconds
