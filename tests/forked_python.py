"""``python script.py ...``, ``python -m module ...`` and ``python -c code ...`` for the tests,
in processes forked from a warm interpreter instead of started from scratch.

Every command imports torch, Lightning and Hydra first: ~6 CPU-seconds before it does anything,
most of a smoke run. A test worker starts one server process that has imported them (and the
package's modules, whose import does no work: tests/test_architecture.py checks it) and forks
it for each command. The child is still a process of its own, started as Python starts a
script: its own pid, arguments, environment, working folder, standard streams (the caller's
files or pipes, passed over a Unix socket), signal dispositions as ``exec`` leaves them, exit
status as Python sets it (``SystemExit``, an uncaught exception -> 1 with ``sys.excepthook``,
an uncaught Ctrl-C -> killed by SIGINT), atexit handlers run. ``run`` and ``Popen`` take
``subprocess``'s arguments and return what it returns; a call they cannot serve exactly (another
program, a ``preexec_fn`` not from tests/child_setup.py, ...) runs a real subprocess.

What a fork cannot give is a fresh import: tests about what importing does (or what a fresh
clone's interpreter loads) use ``subprocess`` itself. Also shared with the server: the hash
seed of str (a fresh interpreter draws its own; each test worker's server has its own) and the
parent pid. tests/test_forked_python.py holds the child to a real subprocess, case by case.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from celeba_gender.data.cache import current_umask

# Imported once by the server; each command imports the rest itself, as it would anyway.
PRELOAD = (
    "torch",
    "torchvision",
    "lightning",
    "hydra",
    "omegaconf",
    "pandas",
    "PIL.Image",
    "celeba_gender.training.run",
    "celeba_gender.inference",
)
# Imported by the server before it forks the first command whose arguments name the key, and
# kept for the commands after it: gradio takes ~3 s to import, in each demo a test starts.
# (Checked to change nothing at import: environment, warning filters, signals, threads.)
PRELOAD_FOR = {"celeba_gender.demo": ("gradio",), "readme_figures.py": ("gradio",)}
# Environment read when those modules load (thread pools, hash seed, import paths): a command
# whose environment differs in these is served by a server started with its values. (torch
# reads CUDA_* when CUDA starts, in the command: the server never starts it.)
_LOAD_TIME_PREFIXES = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "LD_", "KMP_", "MPLCONFIGDIR")
_SIGNALS = ("SIGINT", "SIGHUP", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGPIPE")
_MESSAGE_BYTES = 1 << 20
# subprocess.Popen itself: a command's own Popen calls come here too (see _child).
_RealPopen = subprocess.Popen
# Popen's arguments a forked child honours the same way.
_OWN_ARGUMENTS = ("stdin", "stdout", "stderr", "cwd", "env", "text", "umask", "start_new_session")


# --- the client: what the tests call ----------------------------------------------------------


def _load_time_env(env: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(_LOAD_TIME_PREFIXES)))


class _Server:
    """One warm interpreter and the socket to it. A reader thread files what arrives (the pid of
    each child started, exits in any order), so that waiting on one child never blocks starting
    or polling another, nor a signal handler that polls."""

    def __init__(self, env: dict[str, str] | None, channel: socket.socket | None = None) -> None:
        """A server started with ``env``; or, in a command the server forked, ``channel``: that
        command's own connection to the server that forked it."""
        self.process = None
        if channel is None:
            self.socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.process = _RealPopen(
                [sys.executable, __file__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
        else:
            self.socket = channel
        self.sending = threading.Lock()  # one request, and its reply, at a time
        self.state = threading.Condition(threading.RLock())  # reentrant: a handler may poll
        self.exits: dict[int, int] = {}
        self.replies: collections.deque[dict] = collections.deque()
        self.gone = False
        self.reader: threading.Thread | None = None

    def start(self, request: dict, fds: list[int]) -> int:
        """The pid of the child started for ``request``; what setting it up raised, as
        subprocess raises it in the caller (a missing ``cwd``, a failing ``preexec_fn``)."""
        with self.sending:
            if self.reader is None:
                self.reader = threading.Thread(target=self._read, name="forked-python", daemon=True)
                self.reader.start()
            socket.send_fds(self.socket, [json.dumps(request).encode()], fds)
            with self.state:
                self.state.wait_for(lambda: self.replies or self.gone)
                if not self.replies:
                    raise self._died()
                reply = self.replies.popleft()
        if "error" in reply:
            raise _setup_error(reply["error"])
        return reply["pid"]

    def exit_status(self, pid: int, timeout: float | None) -> int | None:
        """The child's wait status once it has ended; None when ``timeout`` passes first."""
        with self.state:
            if not self.state.wait_for(lambda: pid in self.exits or self.gone, timeout):
                return None
            if pid in self.exits:
                return self.exits[pid]
        raise self._died()

    def _read(self) -> None:
        while True:
            try:
                data = self.socket.recv(_MESSAGE_BYTES)
            except OSError:
                data = b""
            with self.state:
                if not data:
                    self.gone = True
                    self.state.notify_all()
                    return
                reply = json.loads(data)
                if "exit" in reply:
                    self.exits[reply["exit"]] = reply["status"]
                else:
                    self.replies.append(reply)
                self.state.notify_all()

    def _died(self) -> RuntimeError:
        pid = self.process.pid if self.process else os.getppid()
        return RuntimeError(f"the warm Python server (pid {pid}) has died")


def _setup_error(error: dict) -> Exception:
    """What subprocess raises for a child that could not be set up."""
    if error["kind"] == "preexec_fn":
        return subprocess.SubprocessError("Exception occurred in preexec_fn.")
    return OSError(error["errno"], os.strerror(error["errno"]), error["filename"])


_servers: dict[tuple, _Server] = {}
# In a command the server forked: its connection to that server, the environment (read at
# import) it has, its own pid and the server's.
_forked_from: tuple[_Server, tuple, int, int] | None = None


def _server_for(env: dict[str, str]) -> _Server | None:
    """The server for a command with ``env``; None where none can serve it (a command that a
    forked command starts, needing another import-time environment or another session; or one
    that a process the command forked itself starts: its copy of the channel is the command's)."""
    key = _load_time_env(env)
    if _forked_from is not None:
        server, own_key, own_pid, server_pid = _forked_from
        same_session = os.getsid(0) == os.getsid(server_pid)
        return server if key == own_key and same_session and os.getpid() == own_pid else None
    server = _servers.get(key)
    if server is None or server.process.poll() is not None:
        server = _servers[key] = _Server(env)
    return server


def _dispositions() -> dict[str, str]:
    """What each signal is in a child that ``exec`` started: ignored stays ignored, anything
    else is the default (Python then installs its own SIGINT handler)."""
    return {
        name: "ignore" if signal.getsignal(getattr(signal, name)) == signal.SIG_IGN else "default"
        for name in _SIGNALS
        if name != "SIGPIPE"  # Python's own startup ignores it
    }


def _setup_name(preexec_fn) -> str | None:
    """The name of ``preexec_fn`` in tests/child_setup.py ("" for none); None for a function
    from anywhere else, which only a real subprocess can run."""
    if preexec_fn is None:
        return ""
    import child_setup

    name = getattr(preexec_fn, "__name__", "")
    return name if getattr(child_setup, name, None) is preexec_fn else None


def _servable(args, preexec_fn, kwargs: dict) -> bool:
    unsupported = set(kwargs) - {"bufsize", "encoding", "errors", "universal_newlines"}
    defaults = {"shell": False, "close_fds": True}  # given as their defaults: nothing asked
    unsupported -= {k for k, v in defaults.items() if kwargs.get(k, v) == v}
    if not isinstance(args, (list, tuple)) or len(args) < 2 or str(args[0]) != sys.executable:
        return False
    command = [str(a) for a in args[2:]] if args[1] == "-u" else [str(a) for a in args[1:]]
    return (
        bool(command)
        and (command[0] in ("-m", "-c") or not command[0].startswith("-"))
        and _setup_name(preexec_fn) is not None
        and not unsupported
    )


class Popen(_RealPopen):
    """``subprocess.Popen`` for a Python command, forked from the warm server (a subclass, so
    that what checks for a Popen finds one)."""

    def __new__(cls, args, *positional, preexec_fn=None, **kwargs):
        servable_kwargs = {k: v for k, v in kwargs.items() if k not in _OWN_ARGUMENTS}
        env = kwargs.get("env")
        if (
            positional
            or not _servable(args, preexec_fn, servable_kwargs)
            or _server_for(dict(os.environ if env is None else env)) is None
        ):
            return _RealPopen(args, *positional, preexec_fn=preexec_fn, **kwargs)
        return object.__new__(cls)

    def __init__(
        self,
        args,
        stdin=None,
        stdout=None,
        stderr=None,
        cwd=None,
        env=None,
        text=None,
        preexec_fn=None,
        umask: int = -1,
        start_new_session: bool = False,
        **kwargs,
    ) -> None:
        self.args = args
        self.returncode: int | None = None
        self._child_created = False  # subprocess.Popen.__del__: nothing of its own to reap
        encoding, errors = kwargs.get("encoding"), kwargs.get("errors")
        text = bool(text or kwargs.get("universal_newlines") or encoding or errors)
        ours, theirs = [], []
        self.stdin = self.stdout = self.stderr = None
        for number, choice in enumerate((stdin, stdout, stderr)):
            if choice == subprocess.PIPE:
                read, write = os.pipe()
                mine, child = (write, read) if number == 0 else (read, write)
                mode = "w" if number == 0 else "r"
                stream = (
                    os.fdopen(mine, mode, encoding=encoding, errors=errors)
                    if text
                    else os.fdopen(mine, mode + "b")
                )
                setattr(self, ("stdin", "stdout", "stderr")[number], stream)
                theirs.append(child)
                ours.append(child)
            elif choice == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                theirs.append(fd)
                ours.append(fd)
            elif choice == subprocess.STDOUT:
                theirs.append(theirs[1])
            elif choice is None:
                theirs.append(number)
            else:
                theirs.append(choice if isinstance(choice, int) else choice.fileno())
        environment = dict(os.environ if env is None else env)
        self._server = _server_for(environment)
        unbuffered = args[1] == "-u"
        request = {
            "argv": [str(a) for a in args[2 if unbuffered else 1 :]],
            "unbuffered": unbuffered,
            "pgid": os.getpgid(0),
            "cwd": os.path.abspath(cwd or os.getcwd()),
            # Read without setting it: a command may have threads that create files meanwhile.
            "umask": umask if umask >= 0 else current_umask(),
            "env": {str(k): str(v) for k, v in environment.items()},
            "signals": _dispositions(),
            "new_session": bool(start_new_session),
            "setup": _setup_name(preexec_fn),
        }
        try:
            self.pid = self._server.start(request, theirs)
        except OSError as error:
            if error.filename == request["cwd"]:
                error.filename = cwd  # as given, as subprocess names it
            raise
        finally:
            for fd in ours:
                os.close(fd)

    def poll(self) -> int | None:
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            status = self._server.exit_status(self.pid, timeout)
            if status is not None:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def communicate(self, input=None, timeout: float | None = None):
        results: dict[str, object] = {}

        def read(name: str) -> None:
            stream = getattr(self, name)
            try:
                results[name] = stream.read()
            except BaseException as error:  # noqa: BLE001 - communicate raises it, as subprocess
                results[name + "_error"] = error
            finally:
                stream.close()

        readers = [
            threading.Thread(target=read, args=(name,), daemon=True)
            for name in ("stdout", "stderr")
            if getattr(self, name) is not None
        ]
        for reader in readers:
            reader.start()
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        for name in ("stdout", "stderr"):
            if name + "_error" in results:
                self.wait()
                raise results[name + "_error"]
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return results.get("stdout"), results.get("stderr")

    def send_signal(self, number: int) -> None:
        if self.poll() is None:  # the server reaps at once: never signal a pid it may reuse
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Popen:
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()

    def __del__(self) -> None:
        pass


def run(
    args, *, input=None, capture_output: bool = False, timeout=None, check: bool = False, **kwargs
):
    """``subprocess.run`` for a Python command, forked from the warm server."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    process = Popen(args, **kwargs)
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    result = subprocess.CompletedProcess(args, process.wait(), stdout, stderr)
    if check:
        result.check_returncode()
    return result


# --- the server: a warm interpreter that forks a child per command ----------------------------


def _serve(worker: socket.socket) -> None:
    """Fork a child for each request, from the test worker or from a child (a command's own
    Python commands: a benchmark's runs, a launcher's jobs); report each exit to whoever
    asked."""
    import importlib
    import selectors

    for name in PRELOAD:
        importlib.import_module(name)
    import child_setup  # noqa: F401  (what a request's preexec_fn names)

    # A forked child must start CUDA itself (with its own CUDA_VISIBLE_DEVICES), never inherit it.
    assert not sys.modules["torch"].cuda.is_initialized(), "CUDA started while importing"
    channels = selectors.DefaultSelector()
    channels.register(worker, selectors.EVENT_READ)
    asked_by: dict[int, socket.socket] = {}
    while True:
        while True:  # report every child that has ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            with contextlib.suppress(OSError, KeyError):  # whoever asked may have ended
                asked_by.pop(pid).send(json.dumps({"exit": pid, "status": status}).encode())
        for key, _ in channels.select(0.02):
            channel = key.fileobj
            try:
                message, fds, _, _ = socket.recv_fds(channel, _MESSAGE_BYTES, 3)
            except ConnectionResetError:  # a child that ended with a reply unread
                message, fds = b"", []
            if not message:
                if channel is worker:
                    return  # the test worker has gone
                channels.unregister(channel)  # a child has ended
                channel.close()
                continue
            request = json.loads(message)
            for trigger, names in PRELOAD_FOR.items():
                if any(trigger in argument for argument in request["argv"]):
                    for name in names:
                        importlib.import_module(name)
            own, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            set_up, report = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                for other in [*(k.fileobj for k in channels.get_map().values()), own]:
                    other.close()
                channels.close()
                os.close(set_up)
                _child(request, fds, theirs, report)  # never returns
            theirs.close()
            os.close(report)
            with os.fdopen(set_up, "rb") as reading:  # empty once the child is set up
                failed = reading.read()
            channels.register(own, selectors.EVENT_READ)
            asked_by[pid] = channel
            for fd in set(fds):
                if fd > 2:
                    os.close(fd)
            reply = {"pid": pid, **({"error": json.loads(failed)} if failed else {})}
            with contextlib.suppress(OSError):  # a child that asked may have ended since
                channel.send(json.dumps(reply).encode())


def _child(request: dict, fds: list[int], channel: socket.socket, report: int) -> None:
    """Become ``python <argv>`` with the request's streams, folder, environment and signals;
    the Python commands it starts itself are forked from the server too, over ``channel``.
    ``report``: where a failure to set it up goes (nothing once it is set up)."""
    import io

    global _forked_from

    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    for name in _SIGNALS:  # as exec leaves them: handlers reset, ignored signals kept ignored
        number = getattr(signal, name)
        if signal.getsignal(number) not in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(number, signal.SIG_DFL)
    for name, disposition in request["signals"].items():
        number = getattr(signal, name)
        signal.signal(number, signal.SIG_IGN if disposition == "ignore" else signal.SIG_DFL)
    # subprocess's steps between fork and exec, in its order.
    try:
        os.chdir(request["cwd"])
    except OSError as error:
        _not_set_up(report, {"kind": "cwd", "errno": error.errno, "filename": request["cwd"]})
    if request["new_session"]:
        os.setsid()
    else:  # in the group of whoever asked, as its own child would be (a killpg reaches it)
        with contextlib.suppress(OSError):  # that group has ended: stay in the server's
            os.setpgid(0, request["pgid"])
    os.umask(request["umask"])
    if request["setup"]:
        import child_setup

        try:
            getattr(child_setup, request["setup"])()
        except BaseException:  # noqa: BLE001 - subprocess says only this, in the caller
            _not_set_up(report, {"kind": "preexec_fn"})
    os.close(report)
    os.environ.clear()
    os.environ.update(request["env"])
    # Python's startup: Ctrl-C raises KeyboardInterrupt unless the signal was left ignored.
    if signal.getsignal(signal.SIGINT) == signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    import tempfile

    tempfile.tempdir = None  # TMPDIR read again, as a new interpreter reads it
    # Fresh streams on the new descriptors, as a new interpreter makes them.
    encoding = sys.__stdout__.encoding
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding)
    unbuffered = request["unbuffered"] or bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdout = io.TextIOWrapper(
        _binary_stream(1, unbuffered),
        encoding,
        line_buffering=os.isatty(1),
        write_through=unbuffered,
    )
    sys.stderr = io.TextIOWrapper(
        _binary_stream(2, unbuffered),
        encoding,
        errors="backslashreplace",
        line_buffering=True,
        write_through=unbuffered,
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    # Unseeded generators differ between processes, as in a fresh interpreter.
    import numpy
    import torch

    numpy.random.seed()
    torch.seed()
    _forked_from = (_Server(None, channel), _load_time_env(os.environ), os.getpid(), os.getppid())
    subprocess.Popen = Popen
    code = _run_as_main(request["argv"])
    os._exit(code)


def _not_set_up(report: int, error: dict) -> None:
    os.write(report, json.dumps(error).encode())
    os._exit(255)


def _binary_stream(fd: int, unbuffered: bool):
    """What Python writes a standard stream through: the file itself under -u or
    PYTHONUNBUFFERED, a buffer otherwise."""
    import io

    raw = io.FileIO(fd, "w", closefd=False)
    return raw if unbuffered else io.BufferedWriter(raw)


def _run_as_main(argv: list[str]) -> int:
    """Python's own handling of a main module's end (Py_RunMain): the exit status."""
    import runpy

    interrupted = False
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        elif not os.path.exists(argv[0]):
            print(
                f"{sys.executable}: can't open file {os.path.abspath(argv[0])!r}: "
                "[Errno 2] No such file or directory",
                file=sys.stderr,
            )
            return _finish(2)
        else:
            sys.argv = list(argv)
            sys.path[0] = str(Path(argv[0]).resolve().parent)
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = _system_exit_code(stop)
    except BaseException as error:  # noqa: BLE001  (what the interpreter does with it)
        interrupted = isinstance(error, KeyboardInterrupt)
        trace = error.__traceback__  # from the command's first frame, as Python shows it
        while trace is not None and trace.tb_frame.f_code.co_filename in (__file__, runpy.__file__):
            trace = trace.tb_next
        try:
            sys.excepthook(type(error), error.with_traceback(trace), trace)
        except SystemExit as stop:
            return _finish(_system_exit_code(stop))
        code = 1
    code = _finish(code)
    if interrupted:  # Python ends a process stopped by an uncaught Ctrl-C as killed by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _system_exit_code(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code & 0xFF
    print(stop.code, file=sys.stderr)
    return 1


def _finish(code: int) -> int:
    import atexit
    import logging

    threading._shutdown()  # joins non-daemon threads, as interpreter exit does
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    return code


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
