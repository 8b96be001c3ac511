"""The warm-fork helper (tests/forked_python.py) against a real subprocess: the same command
gives the same exit status, streams and process settings either way."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import forked_python
import pytest
from conftest import REPO, as_at_a_terminal, can_drop_read_override, without_read_override

CASES = {
    "exit code": "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)",
    "exit message": "import sys; sys.exit('bye')",
    "uncaught error": "def f():\n    raise ValueError('boom')\nf()",
    "uncaught ctrl-c": "raise KeyboardInterrupt",
    "umask": "import os; m = os.umask(0); print(oct(m))",
    "ignored SIGTERM": "import signal; print(signal.getsignal(signal.SIGTERM))",
    "tempdir": "import tempfile; print(tempfile.gettempdir())",
    "unbuffered order": "import sys; print('o1'); print('e1', file=sys.stderr); print('o2')",
}


def _both(code: str, tmp_path, **kwargs):
    args = [sys.executable, "-c", code]
    return [
        run(args, capture_output=True, text=True, timeout=120, **kwargs)
        for run in (subprocess.run, forked_python.run)
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_forked_command_behaves_as_a_fresh_interpreter(case, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    previous_mask = os.umask(0o027)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if case == "unbuffered order":
            args = [sys.executable, "-c", CASES[case]]
            real, forked = (
                run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                for run in (subprocess.run, forked_python.run)
            )
        else:
            real, forked = _both(CASES[case], tmp_path, env=env, cwd=REPO)
    finally:
        os.umask(previous_mask)
        signal.signal(signal.SIGTERM, previous_term)
    assert forked.returncode == real.returncode
    assert forked.stdout == real.stdout
    assert forked.stderr == real.stderr


def test_a_missing_script_and_undecodable_output_are_what_subprocess_gives(tmp_path):
    missing = [sys.executable, str(tmp_path / "no_such_script.py")]
    real, forked = (
        run(missing, capture_output=True, text=True) for run in (subprocess.run, forked_python.run)
    )
    assert (forked.returncode, forked.stderr) == (real.returncode, real.stderr) == (2, real.stderr)
    garbage = [sys.executable, "-c", "import sys; sys.stderr.buffer.write(b'Traceback \\xff')"]
    for run in (subprocess.run, forked_python.run):
        with pytest.raises(UnicodeDecodeError):
            run(garbage, capture_output=True, text=True)
    assert (
        forked_python.run(garbage, capture_output=True, errors="replace").stderr
        == "Traceback \ufffd"
    )


def test_signalling_a_finished_forked_process_is_harmless():
    process = forked_python.Popen([sys.executable, "-c", "pass"])
    assert process.wait(60) == 0
    process.terminate()  # subprocess: no error once the process has ended
    process.kill()


SETTINGS = """
import os, signal
print(oct(os.umask(0)), os.getsid(0) == os.getpid())
print([str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                                           signal.SIGTERM)])
try:
    open({secret!r}).close()
    print("read")
except PermissionError as error:
    print("refused", error.errno)
"""


@pytest.mark.parametrize(
    "options",
    [
        {"umask": 0o077},
        {"start_new_session": True},
        {"preexec_fn": as_at_a_terminal},
        {"preexec_fn": without_read_override},
    ],
    ids=["umask", "new session", "as at a terminal", "held to permissions"],
)
def test_popens_own_process_settings_are_what_subprocess_gives(options, tmp_path):
    """umask=, start_new_session= and the setups of tests/child_setup.py, in a caller that
    ignores the stop signals (a nohup shell's): served by the fork, set as subprocess sets them."""
    if options.get("preexec_fn") is without_read_override and can_drop_read_override():
        pytest.skip(can_drop_read_override())
    secret = tmp_path / "secret"
    secret.write_text("root's")
    secret.chmod(0)
    args = [sys.executable, "-c", SETTINGS.format(secret=str(secret))]
    ignored = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM)
    previous = [signal.signal(number, signal.SIG_IGN) for number in ignored]
    try:
        served = forked_python.Popen(args, stdout=subprocess.PIPE, text=True, **options)
        assert isinstance(served, forked_python.Popen)  # not handed to a real subprocess
        forked = served.communicate(timeout=120)[0]
        real = subprocess.run(args, capture_output=True, text=True, timeout=120, **options)
    finally:
        for number, handler in zip(ignored, previous, strict=True):
            signal.signal(number, handler)
    assert real.returncode == served.returncode == 0, real.stderr
    assert forked == real.stdout
    expected = "refused" if options.get("preexec_fn") is without_read_override else "read"
    assert real.stdout.splitlines()[-1].split()[0] == expected


NESTED = """
import os, signal, subprocess, sys
log = open(sys.argv[1], "w")
started = subprocess.Popen(
    [sys.executable, "-u", "-c",
     "import os, signal, sys; print('child', os.getpgid(0) == int(sys.argv[1]),"
     " signal.getsignal(signal.SIGTERM), file=sys.stderr); sys.exit(7)", str(os.getpgid(0))],
    stdout=log, stderr=subprocess.STDOUT,
)
print(type(started).__module__ != "subprocess", isinstance(started, subprocess.Popen))
print(started.wait(60), subprocess.run([sys.executable, "-c", "print(6 * 7)"],
                                       capture_output=True, text=True).stdout.strip())
"""


def test_the_python_commands_a_forked_command_starts_are_forked_too(tmp_path):
    """A benchmark's runs, a launcher's jobs, DDP's second rank: a forked command's own
    ``subprocess`` calls of this Python are served by the same server (no fresh import), with
    what a real child would get: its streams, exit status, process group, signal dispositions."""
    args = [sys.executable, "-c", NESTED]
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        real = subprocess.run([*args, tmp_path / "real.log"], capture_output=True, text=True)
        forked = forked_python.run([*args, tmp_path / "forked.log"], capture_output=True, text=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert real.returncode == forked.returncode == 0, real.stderr + forked.stderr
    assert real.stdout == "False True\n7 42\n"
    assert forked.stdout == "True True\n7 42\n"  # served, and still a subprocess.Popen
    assert (tmp_path / "forked.log").read_text() == (tmp_path / "real.log").read_text()
    assert (tmp_path / "real.log").read_text() == "child True 1\n"  # SIGTERM left ignored


FORWARDS_SIGTERM = """
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
signal.signal(signal.SIGTERM, lambda number, frame: child.send_signal(number))  # as submitit's
print("ready", flush=True)
print(child.wait(), flush=True)
"""


def test_a_signal_handler_that_signals_a_child_while_the_command_waits_on_it():
    """A SIGTERM handler forwarding the signal to a child the command is waiting on (submitit's
    controller does; so does Lightning's DDP launcher on a stop): the child ends, the wait
    returns, as with subprocess (once, the served command hung)."""
    outputs = []
    for popen in (subprocess.Popen, forked_python.Popen):
        process = popen(
            [sys.executable, "-c", FORWARDS_SIGTERM], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        try:
            outputs.append((process.wait(timeout=20), process.stdout.read()))
        finally:
            process.kill()
            process.stdout.close()
    assert outputs[0] == outputs[1] == (0, f"{-signal.SIGTERM}\n")


def test_polling_one_process_never_waits_for_another():
    slow = forked_python.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    quick = forked_python.Popen([sys.executable, "-c", "pass"])
    waiter = threading.Thread(target=slow.wait)
    waiter.start()
    started = time.monotonic()
    while quick.poll() is None:
        time.sleep(0.01)
    assert time.monotonic() - started < 2.5  # not after the slow one's end
    waiter.join()
    assert (slow.returncode, quick.returncode) == (0, 0)


def test_a_child_that_cannot_be_set_up_raises_in_the_caller_as_with_subprocess(tmp_path):
    missing = tmp_path / "no_such_folder"
    raised = []
    for popen in (subprocess.Popen, forked_python.Popen):
        with pytest.raises(OSError) as caught:
            popen([sys.executable, "-c", "pass"], cwd=missing)
        raised.append((type(caught.value), caught.value.errno, caught.value.filename))
    assert raised[0] == raised[1] == (FileNotFoundError, errno.ENOENT, missing)


FORKS_THEN_STARTS = """
import os, subprocess, sys
subprocess.run([sys.executable, "-c", "pass"])  # the command's own: its channel is in use
pid = os.fork()  # as multiprocessing's fork start method: a copy of the command
if pid == 0:
    done = subprocess.run([sys.executable, "-c", "print('from the copy')"], capture_output=True,
                          text=True)
    print(done.stdout.strip(), type(done).__name__, flush=True)
    os._exit(done.returncode)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_a_process_a_forked_command_forks_starts_its_own_commands_for_real():
    """A DataLoader worker or multiprocessing child of a forked command holds a copy of the
    command's channel to the server: its own Python commands are real subprocesses, whose
    replies cannot reach the wrong process."""
    args = [sys.executable, "-c", FORKS_THEN_STARTS]
    real = subprocess.run(args, capture_output=True, text=True, timeout=30)
    forked = forked_python.run(args, capture_output=True, text=True, timeout=30)
    assert real.returncode == forked.returncode == 0, real.stderr + forked.stderr
    assert forked.stdout == real.stdout == "from the copy CompletedProcess\n0\n"
