"""Helpers for the TUI tests: a real `avatargen serve` process, the panel pointed at it, and waits.

The server runs as a subprocess (the panel talks to it over loopback HTTP, as it would across the
network), with the simulated GPU on fast timings and buckets whose `min` is 0 so that nothing starts
on its own: every run in these tests is one the panel asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from PIL import Image, ImageDraw
from starlette.types import ASGIApp
from textual.pilot import Pilot

from tests.support import write_config
from tui.app import AvatarApp
from tui.connection import Backoff

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tui-test-token"
QUICK_RETRY = Backoff(initial=0.1, maximum=0.5)

TUI_CONFIG: dict[str, Any] = {
    "server": {"data_dir": "data", "port": 8080},
    "buckets": {
        "unique": {"dir": "data/unique", "min": 0, "max": 2},
        "fallback": {"dir": "data/fallback", "min": 0, "max": 3},
    },
    # A week and a half day between automatic checks: "next check in 7d 2h" holds still for half an hour.
    "generator": {"check_every": "10230m", "concurrency": 2, "image_size": 64, "image_retries": 1},
    "gpu": {
        "provider": "simulated", "ready_timeout": "20s", "stop_timeout": "10s", "poll_every": "20ms",
        "simulated": {"boot_delay": "300ms", "stop_delay": "200ms", "sd_boot_delay": "100ms", "step_time": "2ms"},
    },
    "sd": {"steps": 10, "width": 128, "height": 128, "batch_size": 2},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`avatargen serve` in a subprocess on a fixed port, which it keeps across restarts."""

    def __init__(self, directory: Path, overrides: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.config = write_config(directory, {"server.port": self.port, **(overrides or {})}, base=TUI_CONFIG)
        self.log = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "AVATARGEN_ADMIN_TOKEN": TOKEN}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--config", str(self.config)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /healthz: another process's readiness announces itself to nothing we can await."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the server did not answer within {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """Stop it the hard way, as a crash or a pulled cable would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def running_server(directory: Path, overrides: dict[str, Any] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(directory, overrides)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def panel(url: str, token: str = TOKEN, **options: Any) -> AvatarApp:
    """The TUI as the owner runs it, with the deterministic image renderer and quick reconnects."""
    app = AvatarApp(url, token, image_style="halfcell", backoff=options.pop("backoff", QUICK_RETRY), **options)
    app.animation_level = "none"
    return app


async def wait_for(pilot: Pilot[Any], condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Let the panel run until condition holds; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def seed_images(bucket_dir: Path, count: int) -> None:
    """Store avatars as the generator does (<id>.webp + <id>.json), with fixed pixels, prompts and times."""
    bucket_dir.mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        image = Image.new("RGB", (64, 64), (40 * number, 90, 200 - 40 * number))
        draw = ImageDraw.Draw(image)
        draw.ellipse((14, 8, 50, 52), fill=(235, 195, 160))
        draw.rectangle((24, 36, 40, 39), fill=(150, 50, 60))
        data = io.BytesIO()
        image.save(data, "WEBP", lossless=True)
        image_id = f"20250101T12000{number}-seed{number}"
        (bucket_dir / f"{image_id}.webp").write_bytes(data.getvalue())
        metadata = {"prompt": f"A watercolour of cjs, in the style of Hokusai, number {number}", "seed": number,
                    "sampler": "DPM++ 2M", "steps": 10, "created_at": f"2025-01-01T12:00:0{number}+00:00"}
        (bucket_dir / f"{image_id}.json").write_text(json.dumps(metadata))


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp) -> AsyncIterator[str]:
    """A small ASGI app under uvicorn on a free loopback port, for tests of the HTTP plumbing itself."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn announces readiness only through this flag
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
