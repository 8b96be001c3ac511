"""The signals that may stop a job (``stop_signals`` in conf/config.yaml), listed once: the
schema allows these, training's handler takes the configured ones, and every DataLoader worker
ignores all of them, so that whichever one stops the job its workers live until the main process
has saved its checkpoint."""

from __future__ import annotations

import signal

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
