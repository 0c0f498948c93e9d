"""What every benchmark needs: a config file, real server processes on loopback, the admin API, images.

Benchmarks measure the product as the owner runs it: `avatargen serve` as its own process (the same
command line), the simulated GPU as a process of its own when a machine must outlive a server, and
buckets filled with `Bucket.publish`, as the generator fills them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import tomlkit

from avatargen.buckets import Bucket
from avatargen.imaging import to_avatar_webp
from avatargen.simulator.drawing import draw_avatar

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "benchmark-admin-token"
SIM_KEY_ENV = "BENCHMARK_SIM_PAPERSPACE_KEY"
START_TIMEOUT = 30.0
SIM_RETRIES, SIM_RETRY_PAUSE = 10, 0.1
EventTest = Callable[[str, dict[str, Any]], bool]  # (event type, data) -> whether it is the one awaited

# A config that runs on its own: no automatic runs (min 0), small timings, the simulated GPU.
BASE_CONFIG: dict[str, Any] = {
    "server": {"data_dir": "data", "port": 0},
    "serving": {"unique_burst": 0},
    "buckets": {
        "unique": {"dir": "data/unique", "min": 0, "max": 0},
        "fallback": {"dir": "data/fallback", "min": 0, "max": 0},
    },
    "generator": {"check_every": "24h"},
    "gpu": {
        "provider": "simulated", "poll_every": "50ms", "ready_timeout": "30s", "stop_timeout": "30s",
        "simulated": {"boot_delay": "300ms", "stop_delay": "200ms", "sd_boot_delay": "100ms", "step_time": "2ms"},
    },
}


def parse_args(description: str, add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """`--quick` for every script, plus the script's own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny durations: checks that the script works, its figures mean nothing")
    if add is not None:
        add(parser)
    return parser.parse_args()


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
    """`directory/config.toml`: BASE_CONFIG with the layers merged on top."""
    path = directory / "config.toml"
    path.write_text(tomlkit.dumps(merged(BASE_CONFIG, *layers)))
    return path


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A scratch folder, removed afterwards; readable by others (nginx's worker runs unprivileged)."""
    with tempfile.TemporaryDirectory(prefix="avatargen-bench-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_avatars(count: int, size: int = 256, quality: int = 60) -> list[bytes]:
    """Distinct avatar WebPs as the generator stores them (drawn by the simulator's painter)."""
    return [to_avatar_webp(draw_avatar(f"A painting of cjs, benchmark {n}", n, size, size), size, quality)
            for n in range(count)]


def publish(bucket: Bucket, images: Sequence[bytes]) -> list[str]:
    """Publish images into a bucket as the generator does; their ids."""
    return [bucket.publish(image, {"prompt": "benchmark", "backend": "benchmark"}).id for image in images]


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
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=1).status_code < 500:
                    return self
            except httpx.TransportError:
                time.sleep(0.02)
        raise TimeoutError(f"{self.name} did not answer {self.health_path} within {START_TIMEOUT:g}s:\n"
                           f"{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, the OOM killer)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

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


def serve_command(config: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", str(port)]


def avatargen_server(config: Path, log: Path, *, port: int | None = None,
                     env: Mapping[str, str] | None = None) -> Service:
    """`avatargen serve --config CONFIG --port PORT`, with the benchmark's admin token."""
    port = port or free_port()
    return Service("avatargen serve", serve_command(config, port), port=port, log=log,
                   env={"AVATARGEN_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})})


class Simulator:
    """`python -m avatargen.simulator` as its own process: a machine that outlives any avatargen process.

    It runs at the lowest CPU priority (nice 19): it stands for a remote machine, so drawing its images
    must not take CPU from the server being measured. Its faults strike the benchmark's own requests
    too, so those are retried as a client would.
    """

    def __init__(self, log: Path, *, boot_delay: str, stop_delay: str, sd_boot_delay: str, step_time: str,
                 faults: Sequence[str] = (), backend: str = "a1111") -> None:
        self.log = log
        self.backend = backend
        self.command = ["nice", "-n", "19", sys.executable, "-m", "avatargen.simulator", "--backend", backend,
                        "--boot-delay", boot_delay, "--stop-delay", stop_delay, "--sd-boot-delay", sd_boot_delay,
                        "--step-time", step_time, *(arg for name in faults for arg in ("--fault", name))]
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, str] = {}

    def __enter__(self) -> Simulator:
        with self.log.open("ab") as errors:
            self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert self.process.stdout is not None
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
            self.process.wait(10)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.info["paperspace_url"].removesuffix("/v1") + path
        headers = {"Authorization": f"Bearer {self.info['api_key']}"}
        for _ in range(SIM_RETRIES):
            response = httpx.request(method, url, headers=headers, timeout=10, **kwargs)
            if response.status_code != 429 and response.status_code < 500:
                break
            time.sleep(float(response.headers.get("retry-after", SIM_RETRY_PAUSE)))
        response.raise_for_status()
        return response.json()

    def machine(self) -> dict[str, Any]:
        """The machine as the Paperspace API shows it, with the simulator's `billedSeconds`."""
        return self._request("GET", f"/v1/machines/{self.info['machine_id']}")

    def stop_machine(self) -> None:
        """Stop the machine by hand, as the owner would from the Paperspace console."""
        self._request("PATCH", f"/v1/machines/{self.info['machine_id']}/stop")

    def provider_config(self) -> dict[str, Any]:
        """The config layer that points an avatargen server at this simulator (env: `env()`)."""
        return {"gpu": {"provider": "paperspace",
                        "paperspace": {"api_url": self.info["paperspace_url"], "api_key_env": SIM_KEY_ENV,
                                       "machine_id": self.info["machine_id"]}},
                "sd": {"url": self.info["sd_url"], "backend": self.backend}}

    def env(self) -> dict[str, str]:
        return {SIM_KEY_ENV: self.info["api_key"]}


class Admin:
    """The admin API of a running server, as the TUI uses it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/admin/api/status", headers=self.headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def refill(self, buckets: Sequence[str]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/admin/api/refill", headers=self.headers, json={"buckets": list(buckets)},
                              timeout=10)
        if response.status_code != 202:
            raise RuntimeError(f"refill answered {response.status_code}: {response.text}")
        return response.json()["run"]

    def abort(self) -> None:
        response = httpx.post(f"{self.url}/admin/api/abort", headers=self.headers, timeout=10)
        if response.status_code != 202:
            raise RuntimeError(f"abort answered {response.status_code}: {response.text}")

    def wait_generator_started(self, timeout: float = START_TIMEOUT) -> None:
        """Until the generator has made its start-up check (a machine found on is stopped first).

        A refill sent before that check could see its own machine taken for one a crash left running.
        Nothing announces the check across processes: poll the status, with a deadline.
        """
        deadline = time.monotonic() + timeout
        while self.status()["next_check_at"] is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the generator did not make its start-up check in time")
            time.sleep(0.02)

    def events(self, timeout: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """The live events (from the start of the process's history), until `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        headers = {**self.headers, "Last-Event-ID": "0"}
        with httpx.stream("GET", f"{self.url}/admin/api/events", headers=headers, timeout=30) as stream:
            kind = ""
            for line in stream.iter_lines():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no expected event within {timeout:g}s")
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    yield kind, json.loads(line.removeprefix("data: "))

    def wait_event(self, matches: EventTest, timeout: float = 60.0) -> dict[str, Any]:
        """The data of the first event (history included) that `matches(kind, data)`."""
        with contextlib.closing(self.events(timeout)) as events:
            for kind, data in events:
                if matches(kind, data):
                    return data
        raise RuntimeError("the event stream ended before the expected event: the server went away")


def run_in_state(run_id: str, state: str) -> EventTest:
    """Matches the event saying that run `run_id` reached `state`."""
    return lambda kind, data: kind == "state" and (data.get("run") or {}).get("id") == run_id and \
        data["run"].get("state") == state


def run_ended(run_id: str) -> EventTest:
    """Matches the event saying that run `run_id` is over, its machine confirmed off."""
    return lambda kind, data: kind == "state" and data.get("run") is None and \
        (data.get("last_run") or {}).get("id") == run_id
