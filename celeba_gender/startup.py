"""What every command does first, once its imports are done (never at import: a library user's
process is theirs to set up)."""

from __future__ import annotations

import gc

from celeba_gender import quiet_interrupt
from celeba_gender.config import register_resolvers


def start_command() -> None:
    """The configs' resolvers registered, and the objects made by the imports (torch,
    Lightning, Hydra: about 500,000, alive until the process ends) set aside from the garbage
    collector: each of its full passes walked them all, a fifth of a smoke run's time. Objects
    made after this are collected as before (a sweep frees each job's model between jobs).
    For a command's process: code that calls a command's ``main`` inside its own session
    freezes what it holds too (kept until it ends, not collected). A Ctrl-C that reaches the
    top from here on ends the command in one line (``quiet_interrupt``)."""
    register_resolvers()
    gc.freeze()
    quiet_interrupt.install()
