"""Ctrl-C at any moment of a command ends it in one line, not a KeyboardInterrupt traceback.

Every entry point (train.py, eval.py, predict.py, the demo, the analysis) imports this module
first, before torch, Hydra or Lightning, which take seconds to import: a Ctrl-C then is as
quiet as one during training (where the run's own handlers save and record the stop). Python
still ends the process as killed by SIGINT (exit status 130), which shells and schedulers read
as an interruption. Only the command line's entry points import this: a library user or a
notebook keeps Python's own handling.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
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
    """Ctrl-C while the command imports: nothing to save yet, so it ends here. Raised as a
    KeyboardInterrupt in the middle of an import, some library's module code can swallow it
    and go on half-imported (numpy's, torch's: the command then fails with an unrelated
    traceback)."""
    print(MESSAGE, file=sys.stderr, flush=True)
    os._exit(EXIT_STATUS)


def imports_done() -> None:
    """The command's imports are over (``startup.start_command``): a Ctrl-C raises
    KeyboardInterrupt again, for the run's own handlers and the quiet hook above."""
    if signal.getsignal(signal.SIGINT) is _stop_at_once:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_previous = sys.excepthook
sys.excepthook = _hook
_previous_unraisable = sys.unraisablehook
sys.unraisablehook = _unraisable
# Not where Ctrl-C is ignored (a background job's) or handled by whoever embeds the command.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _stop_at_once)
