"""What a test's child process is set up with before it runs (a ``preexec_fn``): as a terminal
starts it, or held to file permissions as a user without root's override is.

Kept free of heavy imports: tests/forked_python.py calls these by name in its forked children
too (a ``preexec_fn`` from this module is one it can serve), after the same steps ``subprocess``
takes before it (folder, umask, session), so the child is set up as a real one is."""

from __future__ import annotations

import ctypes
import os
import signal

# What a terminal delivers (Ctrl-C, Ctrl-\, a closed terminal) and what a user's `kill` sends:
# a shell that runs the tests in the background or under nohup ignores some of them, and its
# children keep them ignored (Python then never sees a Ctrl-C).
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM)

# linux/capability.h
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_SETPCAP = 1, 2, 8
_PR_CAPBSET_DROP = 24
_CAPABILITY_VERSION_3 = 0x20080522


def as_at_a_terminal() -> None:
    """Stop signals as a terminal delivers them: each at its default (Python then installs its
    own Ctrl-C handler)."""
    for number in TERMINAL_SIGNALS:
        signal.signal(number, signal.SIG_DFL)


def without_read_override() -> None:
    """Root without the capabilities that let it read and write any file (as `setpriv
    --inh-caps=-dac_override,-dac_read_search --bounding-set=-dac_override,-dac_read_search`):
    held to permission bits, as an unprivileged user is. Dropped from the bounding set (so an
    ``exec`` that follows does not get them back) and from this process's own sets."""
    libc = ctypes.CDLL(None, use_errno=True)
    dropped = (1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)  # 0: this process
    sets = (ctypes.c_uint32 * 6)()  # capabilities 0-31, then 32-63: effective, permitted, inherited
    if libc.capget(header, sets) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for index in (0, 1, 2):
        sets[index] &= ~dropped & 0xFFFFFFFF
    if libc.capset(header, sets) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def can_drop_read_override() -> str | None:
    """Why a child cannot be held to permission bits here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root, to run without root's right to read any file"
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            (effective,) = [int(ln.split()[1], 16) for ln in status if ln.startswith("CapEff:")]
    except (OSError, ValueError):
        return "needs Linux capabilities (/proc/self/status)"
    needed = (1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH) | (1 << _CAP_SETPCAP)
    if effective & needed != needed:
        return "needs root's CAP_SETPCAP, CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH"
    return None
