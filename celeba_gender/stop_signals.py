"""The signals that may stop a job (``stop_signals`` in conf/config.yaml), listed once, and
their one handler: the schema allows these, training's handler (a ``StopSignalHandler``) takes
the configured ones, predict's and the demo's take theirs, and every DataLoader worker ignores
all of them, so that whichever one stops the job its workers live until the main process has
saved its checkpoint."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Any

# A cluster's preemption warning (SIGUSR1/2, SIGTERM), Ctrl-C, a closed terminal or Ctrl-\.
STOP_SIGNAL_NAMES = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT")


def signal_number(name: str) -> int:
    """The number of a stop signal by name (any case); ValueError naming the ones allowed."""
    upper = str(name).upper()
    if upper not in STOP_SIGNAL_NAMES:
        raise ValueError(
            f"Unknown signal {name!r} in stop_signals: one of {', '.join(STOP_SIGNAL_NAMES)}."
        )
    return int(getattr(signal, upper))


STOP_SIGNALS = tuple(signal_number(name) for name in STOP_SIGNAL_NAMES)


def ignore_stop_signals() -> None:
    """In a helper process (a DataLoader worker): ignore every stop signal; the main process
    handles the one that comes, saves, and ends its workers itself."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopSignalHandler:
    """The stop signals' handler for a block of work (a training job, a prediction run, the
    demo's serving), as a context manager: installed on entry (a signal ignored on purpose, by
    nohup or a background job, stays ignored; off the main thread, whoever runs the block
    handles signals), the handlers before it restored on exit.

    A signal is recorded in ``requested``. Unless ``held`` (work that must not be cut: a row
    being written, results being saved), it raises ``interruption()``, once: from then on the
    block is ending, and a second signal (a double Ctrl-C, SIGTERM after SIGUSR2) is only
    recorded, so the block's clean-up and its record of the stop are not cut short either. A
    held signal is acted on where the block can stop (``raise_if_requested``)."""

    def __init__(
        self,
        names: Sequence[str] = STOP_SIGNAL_NAMES,
        raises: Callable[[int], BaseException] | None = None,
    ) -> None:
        self.signals = [signal_number(name) for name in names]
        self.raises = raises  # the exception a signal raises, from its number
        self.previous: dict[int, Any] = {}
        self.requested: int | None = None
        self.held = False

    def __enter__(self) -> StopSignalHandler:
        for signum in self.signals:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # ignored on purpose: it stays so
            try:
                self.previous[signum] = signal.signal(signum, self.handle)
            except ValueError:  # not the main thread: whoever runs the block handles signals
                break
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self.previous.items():
            # None: a handler not set from Python; the default is the closest we can restore.
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def install(self) -> None:
        """Take the signals back (from a library that installed its own meanwhile)."""
        for signum in self.previous:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        self.requested = signum
        if not self.held:
            raise self.stop_now()

    def stop_now(self, *args: Any, **kwargs: Any) -> BaseException:
        """The interruption (``interruption(*args, **kwargs)``), to raise: the block holds from
        now on, whoever stops it (the handler, or the block at a point it chose)."""
        self.held = True
        return self.interruption(*args, **kwargs)

    def raise_if_requested(self) -> None:
        """Where a held block can stop: raise the interruption of a signal that came."""
        if self.requested is not None:
            raise self.stop_now()

    def interruption(self) -> BaseException:
        """The exception that stops the block (``raises`` of the signal's number)."""
        assert self.raises is not None, "a StopSignalHandler needs raises= or its own interruption"
        return self.raises(self.requested)
