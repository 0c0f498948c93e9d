"""Running avatargen as its owner does, for the tests and the benchmarks: config files, real processes.

Both measure and check the product from outside, so both need the same few helpers: a config file made
of layered tables, `avatargen serve` and the simulated GPU as processes of their own on loopback ports,
started when they answer and stopped with SIGTERM; and the owner's webhook (`Receiver`), where Apprise's
`json://` URLs post the notifications. Nothing in the product imports this module.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import tomlkit

START_TIMEOUT = 30.0
# The simulated GPU's niceness. Low enough that the server being measured keeps the CPU (about 90% of a core
# they both want), not the lowest: at nice 19 a CPU-bound neighbour (`stress-ng --cpu 2`) left it about 1.5%
# of a core, its start took 50 to 67 s and every run waited on it.
SIMULATOR_NICE = 10
SIM_KEY_ENV = "AVATARGEN_TEST_SIM_PAPERSPACE_KEY"
SERVERLESS_CHECKPOINT = "cjs-dreambooth.safetensors"  # on the simulated endpoint's volume
SIM_RETRIES, SIM_RETRY_PAUSE = 10, 0.1


def merged(base: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merged key by key, later layers winning (a nested table is merged, not replaced)."""
    result = dict(base)
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
                value = merged(result[key], value)
            result[key] = value
    return result


def write_config(directory: Path, *layers: Mapping[str, Any]) -> Path:
    """`directory/config.toml`: the layers' tables merged, later layers winning."""
    path = directory / "config.toml"
    path.write_text(tomlkit.dumps(merged({}, *layers)))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def stopped_on_failure(stop: Callable[[], object]) -> Iterator[None]:
    """Stop what a start began when the start fails, times out or is interrupted (Ctrl-C, or a `kill` that the
    benchmarks turn into KeyboardInterrupt): its caller never reaches `__exit__`, and nothing may be left
    running."""
    try:
        yield
    except BaseException:
        stop()
        raise


class Service:
    """A server process on a loopback port: started, waited for until `health_path` answers, stopped.

    Nothing announces readiness across processes, so `start` polls the health URL, with a deadline.
    """

    def __init__(self, name: str, command: Sequence[str], *, port: int, log: Path, health_path: str = "/healthz",
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.port = port
        self.log = log
        self.health_path = health_path
        self.env = dict(os.environ, **(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Service:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT)
        with stopped_on_failure(self.stop):
            self._wait_until_ready(self.process)
        return self

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        # One client for all the polls: a client per poll costs ~0.1 s of CPU, taken from the server starting.
        with httpx.Client(timeout=1) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with status {process.returncode}:\n{self.log_text()}")
                try:
                    if client.get(self.url + self.health_path).status_code < 500:
                        return
                except httpx.TransportError:
                    time.sleep(0.02)
        raise TimeoutError(f"{self.name} did not answer {self.health_path} within {START_TIMEOUT:g}s:\n"
                           f"{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cpu_seconds(self) -> float:
        """CPU time the process and the processes it started (uvicorn's workers) have used so far: user +
        system, from /proc."""
        assert self.process is not None
        return sum(_cpu_seconds(pid) for pid in family(self.process.pid))

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, the OOM killer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP the process and its workers: a stalled VM, a long GC pause; `resume` wakes them."""
        self._signal_family(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_family(signal.SIGCONT)

    def _signal_family(self, signum: signal.Signals) -> None:
        assert self.process is not None
        for pid in family(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL past the timeout); the exit status, None if it never ran."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def family(pid: int) -> list[int]:
    """A process and its descendants, from /proc (those that ended meanwhile are left out)."""
    family, index = [pid], 0
    while index < len(family):
        for task in Path(f"/proc/{family[index]}/task").glob("*/children"):
            try:
                family += [int(child) for child in task.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        index += 1
    return family


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_command(config: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", str(port)]


def avatargen_server(config: Path, log: Path, *, token: str, port: int | None = None,
                     env: Mapping[str, str] | None = None) -> Service:
    """`avatargen serve --config CONFIG --port PORT`, with this admin token."""
    port = port or free_port()
    return Service("avatargen serve", serve_command(config, port), port=port, log=log,
                   env={"AVATARGEN_ADMIN_TOKEN": token, **(env or {})})


class Simulator:
    """`python -m avatargen.simulator` as its own process: a machine that outlives any avatargen process.

    It runs at a low CPU priority (`SIMULATOR_NICE`): it stands for a remote machine, so drawing its images
    must not take CPU from the server being measured. Its faults strike the caller's own requests too,
    so those are retried as a client would.
    """

    def __init__(self, log: Path, *, boot_delay: str, stop_delay: str, sd_boot_delay: str, step_time: str,
                 faults: Sequence[str] = (), api: str = "paperspace", backend: str = "a1111",
                 hourly_price: float | None = None) -> None:
        self.log = log
        self.backend = backend
        self.command = ["nice", "-n", str(SIMULATOR_NICE), sys.executable, "-m", "avatargen.simulator", "--api", api,
                        "--backend", backend,
                        "--boot-delay", boot_delay, "--stop-delay", stop_delay, "--sd-boot-delay", sd_boot_delay,
                        "--step-time", step_time, *(arg for name in faults for arg in ("--fault", name)),
                        *(["--hourly-price", str(hourly_price)] if hourly_price is not None else [])]
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, str] = {}

    def __enter__(self) -> Simulator:
        with self.log.open("ab") as errors:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert self.process.stdout is not None
        with stopped_on_failure(self.__exit__):
            line = self.process.stdout.readline()
            if not line:
                self.process.wait(10)
                raise RuntimeError(f"the simulator exited with status {self.process.returncode} before listening:\n"
                                   f"{self.log.read_text(errors='replace')}")
            self.info = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)  # at its low priority on a busy machine, it may wait a while for the CPU to exit

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.info["api_url"].removesuffix("/v1").removesuffix("/v2") + path
        headers = {"Authorization": f"Bearer {self.info['api_key']}"}
        for _ in range(SIM_RETRIES):
            response = httpx.request(method, url, headers=headers, timeout=10, **kwargs)
            if response.status_code != 429 and response.status_code < 500:
                break
            time.sleep(float(response.headers.get("retry-after", SIM_RETRY_PAUSE)))
        response.raise_for_status()
        return response.json()

    def machine(self) -> dict[str, Any]:
        """The machine as the simulator sees it: `state` (off, starting, ..., ready), `billedSeconds` and
        `calls` (the start and stop requests it received, oldest first)."""
        return self._request("GET", "/_sim/machine")

    def faults(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The faults switched on, and how often each struck since the set last changed (`hits`); with `names`,
        switch to exactly those first (their counts start again from 0)."""
        if names is not None:
            self._request("PUT", "/_sim/faults", json={"faults": list(names)})
        return self._request("GET", "/_sim/faults")

    def provider_config(self) -> dict[str, Any]:
        """The config layer that points an avatargen server at this simulator (env: `env()`), exactly as at the
        real provider: a pod's web UI is reached on its TCP-exposed port."""
        api = self.info["api"]
        if api == "runpod_serverless":  # worker-comfyui, with the model the simulated volume holds
            return {"gpu": {"provider": api, api: {"api_url": self.info["api_url"], "api_key_env": SIM_KEY_ENV,
                                                   "endpoint_id": self.info["machine_id"]}},
                    "sd": {"backend": "comfyui", "checkpoint": SERVERLESS_CHECKPOINT}}
        machine = {"pod_id" if api == "runpod" else "machine_id": self.info["machine_id"]}
        sd_url = "http://{public_ip}:{port:7860}" if api == "runpod" else self.info["sd_url"]
        return {"gpu": {"provider": api, api: {"api_url": self.info["api_url"], "api_key_env": SIM_KEY_ENV, **machine}},
                "sd": {"url": sd_url, "backend": self.backend}}

    def env(self) -> dict[str, str]:
        return {SIM_KEY_ENV: self.info["api_key"]}


# --- a real Redis ---------------------------------------------------------------------------------------
# Debian's redis-server on a free loopback port in a folder of its own, started with no snapshots
# (`--save ''`) and, where it must survive a restart, an append-only file fsynced at every write
# (`appendfsync always`: what docs/redis.md asks of the owner's Redis). Ready is read from its log.

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_START_TIMEOUT = 20.0
REDIS_PORT_TRIES = 3  # a free port may be taken by another process before redis-server binds it


class PortTaken(RuntimeError):
    """redis-server could not listen: its port was taken meanwhile."""


class RedisServer:
    """One redis-server process; `restart` keeps its port and folder (and, with AOF, its data)."""

    def __init__(self, directory: Path, *, appendonly: bool = False, debug: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.debug = debug  # DEBUG commands (DEBUG SLEEP: a Redis that answers nobody) from loopback
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir",
                str(self.directory), "--logfile", "", "--daemonize", "no"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.debug:
            args += ["--enable-debug-command", "local"]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.process = process
        assert process.stdout is not None
        log = []
        timer = _kill_after(process, REDIS_START_TIMEOUT)
        try:
            with stopped_on_failure(self.stop):
                for line in process.stdout:
                    log.append(line)
                    if "Ready to accept connections" in line:
                        break
        finally:
            timer.cancel()
        if process.poll() is not None or not log or "Ready to accept" not in log[-1]:
            self.stop()
            said = "".join(log[-20:])
            raise (PortTaken if "Address already in use" in said else RuntimeError)(
                f"redis-server did not start on port {self.port}:\n{said}")
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
def running_redis(directory: Path, *, appendonly: bool = False, debug: bool = False) -> Iterator[RedisServer]:
    for attempt in range(REDIS_PORT_TRIES):
        server = RedisServer(directory, appendonly=appendonly, debug=debug)
        try:
            server.start()
            break
        except PortTaken:
            if attempt == REDIS_PORT_TRIES - 1:
                raise
    try:
        yield server
    finally:
        server.stop()



@dataclass(frozen=True)
class Posted:
    """One message a `json://` URL posted: when it came (epoch seconds), to which path ("/hook"), its body."""

    at: float
    path: str
    body: dict[str, Any]


def _path(path: str) -> str:
    return "/" + path.lstrip("/")


class Receiver:
    """The owner's webhook, for real: a threading HTTP server on a free loopback port, while used as a context
    manager, keeping every JSON message Apprise's `json://` URLs post to it (`messages`, in arrival order).

    A path starting with `failing` (default `/broken`) answers 500 and keeps nothing: a webhook that is
    down. A body that is not JSON is kept as `{"unreadable": true}`. Tests wait for a message
    (`wait_for`); the soak asks which came to a setup's path while a fault was on (`between`).
    """

    def __init__(self, *, failing: str = "/broken") -> None:
        self.messages: list[Posted] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length") or 0))
                refused = self.path.startswith(failing)
                # Kept before it is answered: the sender sends its next message once this one is answered, so
                # `messages` keeps their order (kept after, the next request's thread could keep its own first).
                if not refused:
                    try:
                        body = json.loads(data or b"{}")
                    except ValueError:
                        body = {"unreadable": True}
                    with receiver.arrived:
                        receiver.messages.append(Posted(time.time(), self.path, body))
                        receiver.arrived.notify_all()
                self.send_response(500 if refused else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: what arrived is in `messages`."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook receiver", daemon=True)

    def url(self, path: str) -> str:
        """The Apprise URL that posts to `path` ("/hook" or "hook") here."""
        return f"json://127.0.0.1:{self._server.server_address[1]}{_path(path)}"

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The body of the first message that passes `check`, waiting up to `timeout` seconds for it."""
        with self.arrived:
            found = self.arrived.wait_for(lambda: next((m.body for m in self.messages if check(m.body)), None),
                                          timeout)
        if found is None:
            raise TimeoutError(f"no such message within {timeout} s; got {self.messages}")
        return found

    def between(self, path: str, start: float, end: float) -> list[Posted]:
        """The messages posted to `path` from `start` to `end` (epoch seconds)."""
        with self.arrived:
            return [message for message in self.messages
                    if message.path == _path(path) and start <= message.at <= end]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
