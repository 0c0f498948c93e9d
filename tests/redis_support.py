"""A real redis-server for the tests: Debian's binary on a free loopback port, in a temporary folder.

Started with no snapshots (`--save ''`) and, where a test restarts it and needs the data back, an
append-only file fsynced at every write (`appendfsync always`: what the README asks of the owner's Redis).
Ready is read from its log ("Ready to accept connections"), not polled.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process; `restart` keeps its port and folder (and, with AOF, its data)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir",
                str(self.directory), "--logfile", "", "--daemonize", "no", "--enable-debug-command", "local"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.process = process
        assert process.stdout is not None
        log = []
        timer = _kill_after(process, START_TIMEOUT)
        try:
            for line in process.stdout:
                log.append(line)
                if "Ready to accept connections" in line:
                    break
        finally:
            timer.cancel()
        if process.poll() is not None or not log or "Ready to accept" not in log[-1]:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "".join(log[-20:]))
        # Keep reading its log, so a full pipe never blocks it.
        _drain(process)

    def stop(self) -> None:
        """SIGTERM (Redis saves its AOF and exits), then wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash; only what was fsynced to the AOF survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, *, crash: bool = False) -> None:
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()


def _kill_after(process: subprocess.Popen[str], seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, process.kill)
    timer.daemon = True
    timer.start()
    return timer


def _drain(process: subprocess.Popen[str]) -> None:
    def read() -> None:
        assert process.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for _ in process.stdout:
                pass

    threading.Thread(target=read, daemon=True).start()


@contextlib.contextmanager
def running_redis(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()

