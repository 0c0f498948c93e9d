"""Helpers for the TUI tests: a real `avatargen serve` process, the panel pointed at it, and waits.

The server runs as a subprocess (the panel talks to it over loopback HTTP, as it would across the
network), with the simulated GPU on fast timings and buckets whose `min` is 0 so that nothing starts
on its own: every run in these tests is one the panel asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from textual.pilot import Pilot

from avatargen.testing import Service, free_port, serve_command
from tests.support import write_config
from tui.app import AvatarApp
from tui.connection import Backoff

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tui-test-token"
QUICK_RETRY = Backoff(initial=0.1, maximum=0.5)

# The shared fast test settings, with smaller buckets and the real-use hourly cost.
TUI_SETTINGS: dict[str, Any] = {
    "buckets.unique.max": 2,
    "buckets.fallback.max": 3,
    # A week and a half day between automatic checks: "next check in 7d 2h" holds still for half an hour.
    "generator.check_every": "10230m",
    "gpu.hourly_cost": 0.76,
    "gpu.daily_budget": 5.0,  # what the panel shows as the budget in the snapshots
    "gpu.simulated.stop_delay": "200ms",
}


class ServerProcess(Service):
    """`avatargen serve` in a subprocess on a fixed port, which it keeps across restarts."""

    def __init__(self, directory: Path, overrides: dict[str, Any] | None = None) -> None:
        port = free_port()
        self.config = write_config(directory, {**TUI_SETTINGS, "server.port": port, **(overrides or {})})
        super().__init__("avatargen serve", serve_command(self.config, port), port=port,
                         log=directory / "server.log", env={"AVATARGEN_ADMIN_TOKEN": TOKEN})


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


def footer_keys(app: AvatarApp) -> dict[str, str]:
    """The keys the footer offers now, with their descriptions."""
    return {key: active.binding.description for key, active in app.screen.active_bindings.items()
            if active.binding.show}


async def refill_everything(pilot: Pilot[Any], app: AvatarApp) -> None:
    """Once connected, start a refill of every bucket the way the owner does: r, then Enter in the dialog."""
    from tui.screens.refill import RefillScreen

    await wait_for(pilot, lambda: app.main.status is not None, "the first status")
    await pilot.press("r")
    await wait_for(pilot, lambda: isinstance(app.screen, RefillScreen), "the refill dialog")
    await pilot.press("enter")


async def wait_for(pilot: Pilot[Any], condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Let the panel run until condition holds; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def seed_images(bucket_dir: Path, count: int, prompts: Sequence[str] = (), *, held_because: str | None = None) -> None:
    """Store avatars as the generator does (<id>.webp + <id>.json), with fixed pixels, prompts and times;
    `held_because`: as the safety gate holds them back instead, in the bucket's review folder."""
    folder = bucket_dir / ".review" if held_because else bucket_dir
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        image = Image.new("RGB", (64, 64), (40 * number, 90, 200 - 40 * number))
        draw = ImageDraw.Draw(image)
        draw.ellipse((14, 8, 50, 52), fill=(235, 195, 160))
        draw.rectangle((24, 36, 40, 39), fill=(150, 50, 60))
        data = io.BytesIO()
        image.save(data, "WEBP", lossless=True)
        image_id = f"20250101T1{'1' if held_because else '2'}000{number}-{'held' if held_because else 'seed'}{number}"
        (folder / f"{image_id}.webp").write_bytes(data.getvalue())
        prompt = prompts[number - 1] if prompts else f"A watercolour of cjs, in the style of Hokusai, number {number}"
        metadata: dict[str, Any] = {"prompt": prompt, "seed": number, "sampler": "DPM++ 2M", "steps": 10,
                                    "created_at": f"2025-01-01T1{'1' if held_because else '2'}:00:0{number}+00:00"}
        if held_because:
            metadata["review"] = {"held": True, "reasons": [{"kind": "no_face", "text": held_because}]}
        (folder / f"{image_id}.json").write_text(json.dumps(metadata))
