"""`python -m tollbridge.cli …` in a real process, without paying for a fresh interpreter each time.

Every command loads the stage kinds, which import pipecat and the provider SDKs:
about three seconds of CPU before the command does anything. A warm parent (one
per test process, started on first use) imports them once; each command then
runs in a child forked from it, with its own arguments, environment, working
folder, stdout and stderr, and its own exit status, exactly as `subprocess.run`
reports it. The child runs `tollbridge.cli` as `__main__`, as `-m` does, and
leaves through the interpreter's own shutdown.

What a fork cannot show is a fresh interpreter's start: the tests that start the
real `python -m tollbridge.cli` (the README call, `serve`, the plugin tests)
keep doing so.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WarmCli:
    """The test side: one warm parent process, asked to run one command at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parent: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="warm-cli-")

    def _started(self) -> subprocess.Popen[bytes]:
        if self._parent is None or self._parent.poll() is not None:
            self._parent = subprocess.Popen(
                [sys.executable, "-m", "tests.cli.warm_cli"], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
            atexit.register(self.close)
        return self._parent

    def run(self, args: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float) -> subprocess.CompletedProcess[str]:
        with self._lock:
            parent = self._started()
            assert parent.stdin is not None and parent.stdout is not None
            out, err = Path(self._dir.name) / "stdout", Path(self._dir.name) / "stderr"
            request = {"args": args, "env": env, "cwd": str(cwd),
                       "stdout": str(out), "stderr": str(err)}
            parent.stdin.write(json.dumps(request).encode() + b"\n")
            parent.stdin.flush()
            started = parent.stdout.readline()
            if not started:
                raise RuntimeError("the warm CLI parent died")
            pid = json.loads(started)["pid"]
            timer = threading.Timer(timeout, os.kill, (pid, 9))
            timer.start()
            try:
                reply = parent.stdout.readline()
            finally:
                timer.cancel()
            if not reply:
                raise RuntimeError("the warm CLI parent died")
            status = json.loads(reply)["status"]
            returncode = os.waitstatus_to_exitcode(status)
            if returncode == -9:
                raise subprocess.TimeoutExpired(["tollbridge", *args], timeout)
            return subprocess.CompletedProcess(
                [sys.executable, "-m", "tollbridge.cli", *args], returncode,
                _text(out.read_bytes()), _text(err.read_bytes()),
            )

    def close(self) -> None:
        if self._parent is not None and self._parent.poll() is None:
            assert self._parent.stdin is not None
            self._parent.stdin.close()
            self._parent.wait(timeout=10)


def _text(data: bytes) -> str:
    """As `subprocess.run(text=True)` decodes a pipe."""
    import locale

    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


_cli = WarmCli()


def run_cli(args: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _cli.run(args, env=env, cwd=cwd, timeout=timeout)


# The warm parent ------------------------------------------------------------------------


def _preload() -> None:
    """Import what every command imports: the CLI's modules and every installed stage kind."""
    import importlib
    from importlib.metadata import entry_points

    for module in ("tollbridge.costs.cli", "tollbridge.schema", "tollbridge.serve",
                   "tollbridge.testing.local_call", "tollbridge.transports.twilio.rest"):
        importlib.import_module(module)
    for entry_point in entry_points(group="tollbridge.stages"):
        entry_point.load()


def _child(request: dict) -> int | str | None:
    """In the forked child: become `python -m tollbridge.cli ARGS` run in `cwd` with `env`."""
    import runpy

    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]  # -m puts the working folder first
    spec = __import__("importlib.util").util.find_spec("tollbridge.cli")
    sys.argv = [spec.origin, *request["args"]]
    try:
        runpy.run_module("tollbridge.cli", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code
    return 0


def _serve() -> None:
    _preload()
    gc.freeze()  # what was imported is never collected: a child's exit need not walk it all
    sys.stdout.flush()
    sys.stderr.flush()
    replies = sys.stdout.buffer
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            sys.exit(_child(request))  # the interpreter's own exit: atexit, flushing, status
        replies.write(json.dumps({"pid": pid}).encode() + b"\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": status}).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    _serve()
