"""One process at a time in a run folder: training, resuming or evaluating into it.

Two copies of one command (a double submit, a job requeued while the first still runs) would
otherwise mix their TensorBoard curves, delete each other's checkpoint temporaries and leave
metrics.json to whoever writes last. The lock is ``flock`` on ``<run>/.run.lock``: the kernel
releases it when its process dies, however it dies, so a lock left by a dead process is simply
free. The file names its holder (pid, host, start, command) for the refusal message.

Where the file system has no ``flock`` (some NFS, Lustre and FUSE mounts), the holder recorded
in the file is the lock: a holder on this host whose pid no longer runs is taken over; one on
another host cannot be checked from here, so the refusal says to delete the file if that job
is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from celeba_gender.training.resume import ResumeRefused

log = logging.getLogger(__name__)
LOCK_FILE = ".run.lock"


class RunFolderInUse(ResumeRefused):
    """Another process holds the run folder."""


def _holder(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{since}{command}"


def _alive_here(holder: dict) -> bool | None:
    """Whether the holder still runs: None when that cannot be told from this host."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True  # another user's process, or no pid: not ours to take
    return True


@contextlib.contextmanager
def hold_run_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this process; raise RunFolderInUse, naming the holder, when another
    process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderInUse(
                f"{folder} is in use by {_describe(_holder(handle))}: one process at a time "
                "trains, resumes or evaluates into a run folder. Wait for it to end (or stop "
                "it), then run the command again."
            ) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            _claim_without_flock(handle, path)
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.time(),
                    "command": " ".join(sys.argv)[:500],
                }
            )
        )
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # free: a later process finds no holder (with or without flock)
    finally:
        handle.close()  # releases the flock


def _claim_without_flock(handle, path: Path) -> None:
    holder = _holder(handle)
    mine = holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
    if not holder or mine:  # the same pid on another node is another process
        return
    alive = _alive_here(holder)
    if alive is False:
        log.warning(
            "%s: taking over the lock left by %s (no longer running).", path, _describe(holder)
        )
        return
    where = "" if alive else f" If that job is gone, delete {path}."
    raise RunFolderInUse(
        f"{path.parent} is in use by {_describe(holder)} (this file system has no file locks: "
        f"{path} says so).{where}"
    )
