"""Ctrl-C at any moment of a command ends it in one line, not a KeyboardInterrupt traceback.

Every entry point (train.py, eval.py, predict.py, the demo, the analysis) does its imports
(torch, Hydra, Lightning: seconds) inside ``quiet_imports(__name__)``, and so do the slow ones a
command makes later (gradio, papermill, optuna): a Ctrl-C then ends the command on the spot.
Otherwise it is a KeyboardInterrupt, for the run's own handlers (which save and record the
stop), and one that reaches the top ends the command in one line. Python still ends the
process as killed by SIGINT (exit status 130), which shells and schedulers read as an
interruption. A library user or a notebook that imports a command's module keeps Python's own
handling (``runs_a_command``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

MESSAGE = "Stopped (Ctrl-C)."
EXIT_STATUS = 130  # 128 + SIGINT, as shells report a process stopped by Ctrl-C


def _hook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        print(str(value) or MESSAGE, file=sys.stderr, flush=True)
        # The status of a process stopped by SIGINT, wherever the interrupt was caught and
        # re-raised (Python sets it only for one that leaves the main module untouched).
        logging.shutdown()
        sys.stdout.flush()
        os._exit(EXIT_STATUS)
    _previous(kind, value, traceback)


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A Ctrl-C that arrived while Python ran a callback it cannot raise from (a weakref's, as
    the import machinery's module locks have, or a ``__del__``): Python would print it as
    ignored and go on as if no Ctrl-C came. It still ends the command."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _hook(unraisable.exc_type, unraisable.exc_value or KeyboardInterrupt(), None)
    _previous_unraisable(unraisable)


def _stop_at_once(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C while the command imports (``quiet_imports``): it ends here. Raised as a
    KeyboardInterrupt in the middle of an import, some library's module code can swallow it
    and go on half-imported (numpy's, torch's: the command then fails with an unrelated
    traceback)."""
    print(MESSAGE, file=sys.stderr, flush=True)
    os._exit(EXIT_STATUS)


# The package's console scripts (pyproject's [project.scripts]): a program of that name is a
# command, whatever module it imports first.
CONSOLE_SCRIPT_PREFIX = "celeba-gender-"
_in_a_command = False  # set by the first quiet_imports of a command's process


def runs_a_command(module_name: str) -> bool:
    """Whether this process is a command: ``module_name`` (the importing module's
    ``__name__``) runs as the program (a repository script, ``python -m celeba_gender.train``),
    or the program is one of the package's console scripts. Not a library user's script, a
    notebook, or a launcher's job that imports a command's module."""
    program = os.path.basename((getattr(sys, "argv", None) or [""])[0])
    return module_name == "__main__" or program.startswith(CONSOLE_SCRIPT_PREFIX)


@contextlib.contextmanager
def quiet_imports(module_name: str) -> Iterator[None]:
    """Imports of a command (``module_name``: the importing module's ``__name__``): a Ctrl-C
    meanwhile ends it at once (nothing to save yet), and Python's handling is back after them.
    Only in a command's process (``runs_a_command``; the same after it started, for imports it
    makes late), and not where Ctrl-C is ignored (a background job's) or handled by another
    handler, nor inside another ``quiet_imports``. A library user or a notebook that imports a
    command's module keeps Python's handling throughout."""
    global _in_a_command
    _in_a_command = _in_a_command or runs_a_command(module_name)
    if (
        not _in_a_command
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    install()  # a Ctrl-C between these imports and the command's start: one line too
    signal.signal(signal.SIGINT, _stop_at_once)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _stop_at_once:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def install() -> None:
    """The command has started (``startup.start_command``): a KeyboardInterrupt that reaches
    the top, or one Python cannot raise, ends it in one line with Ctrl-C's status."""
    global _previous, _previous_unraisable
    if sys.excepthook is not _hook:
        _previous, sys.excepthook = sys.excepthook, _hook
    if sys.unraisablehook is not _unraisable:
        _previous_unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable


_previous = sys.excepthook
_previous_unraisable = sys.unraisablehook
