"""The warm-fork helper (tests/forked_python.py) against a real subprocess: the same command
gives the same exit status, streams and process settings either way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import forked_python
import pytest
from conftest import REPO

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
