"""Live previews: the generator sends small pictures of the image being made, throttled, through the hub
and the admin API's event stream; and the event stream stays small over a long run."""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from avatargen.events import Subscription
from avatargen.generator import Generator
from tests.support import fast_settings, running_generator, serving

TOKEN = "owner-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# about a second per request of two images (the demo's pace; a real GPU takes a few): a job outlasts the
# preview period, as it does on a real GPU
PACED = {"sd__steps": 20, "gpu__simulated__step_time": "50ms"}


async def events_until_idle(subscription: Subscription) -> list[tuple[float, str, dict[str, Any]]]:
    """(arrival time, type, data) of each event until the generator is idle again."""
    seen: list[tuple[float, str, dict[str, Any]]] = []
    while True:
        event = await subscription.next(30)
        assert event is not None, "no event for 30 s"
        seen.append((time.monotonic(), event.type, event.data))
        if event.type == "state" and event.data["state"] == "idle":
            return seen


def picture(preview: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(preview["image"])))
    image.load()
    return image


async def run_with_events(generator: Generator) -> list[tuple[float, str, dict[str, Any]]]:
    with generator.events.subscribe() as subscription:
        generator.refill()
        return await events_until_idle(subscription)


async def test_a_run_sends_small_throttled_previews_of_the_job_being_made(tmp_path: Path, backend: str) -> None:
    settings = fast_settings(tmp_path, generator__preview_every="1s", **PACED)
    async with running_generator(settings) as (generator, _):
        events = await run_with_events(generator)
    run = generator.last_run
    assert run is not None and run.outcome == "completed"
    previews = [(at, data) for at, kind, data in events if kind == "preview"]
    assert len(previews) >= 2
    made = {data["prompt"]: data["bucket"] for _, kind, data in events if kind == "image"}
    for _, preview in previews:
        assert preview["run_id"] == run.id
        assert made[preview["prompt"]] == preview["bucket"]  # the job computing, not merely the last one sent
        assert 1 <= preview["step"] <= preview["steps"] == 20
        assert preview["media_type"] == "image/webp"
        image = picture(preview)
        assert image.format == "WEBP" and max(image.size) <= 96
        assert len(json.dumps(preview)) < 4000
    arrivals = [at for at, _ in previews]
    # apart by preview_every plus a fetch and a shrink, less the jitter of each event's delivery
    assert min(later - earlier for earlier, later in itertools.pairwise(arrivals)) >= 0.95


async def test_no_previews_when_preview_every_is_zero(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, generator__preview_every=0, **PACED)
    async with running_generator(settings) as (generator, _):
        events = await run_with_events(generator)
    kinds = {kind for _, kind, _ in events}
    assert "progress" in kinds and "image" in kinds and "preview" not in kinds


async def read_stream(client: httpx.AsyncClient) -> list[tuple[float, str, str]]:
    """(arrival time, event name, raw data line) of each SSE event until the generator is idle again."""
    events: list[tuple[float, str, str]] = []
    async with client.stream("GET", "/admin/api/events") as response:
        assert response.status_code == 200
        fields: dict[str, str] = {}
        started = False
        async for line in response.aiter_lines():
            if line.startswith((":", "retry:")):
                if not started:
                    started = True
                    assert (await client.post("/admin/api/refill")).status_code == 202
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                events.append((time.monotonic(), fields["event"], fields["data"]))
                if fields["event"] == "state" and json.loads(fields["data"])["state"] == "idle":
                    return events
            fields = {}
    return events


async def test_the_event_stream_stays_small_over_a_long_run(tmp_path: Path) -> None:
    """Through real HTTP: previews come over the stream, no event is above a few kB, and besides what each
    stored image sends, the stream carries a few small events a second while a run generates."""
    settings = fast_settings(tmp_path, admin__token=TOKEN, buckets__unique__max=6, buckets__fallback__max=10,
                             **PACED)
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client:
        events = await read_stream(client)
    generating = [at for at, name, data in events if name == "state" and json.loads(data)["state"] == "generating"]
    ending = [at for at, name, data in events if name == "state" and json.loads(data)["state"] == "shutting_down"]
    during = [(at, name, data) for at, name, data in events if generating[0] <= at <= ending[0]]
    seconds = ending[0] - generating[0]
    assert seconds > 5  # 16 images at about a second a request of two
    previews = [json.loads(data) for _, name, data in during if name == "preview"]
    kinds = Counter(name for _, name, _ in during)
    # one a second at most, and they keep coming (on a loaded machine each costs a fetch and a shrink more,
    # and a try that meets the end of a job waits half a period: about 0.7 a second then)
    assert seconds / 3 <= len(previews) <= seconds + 1
    assert max(picture(preview).size[0] for preview in previews) <= 96
    assert max(len(data) for _, _, data in events) < 4000
    # beyond each image's own events (image, progress): the step bar twice a second and a preview a second
    assert kinds["progress"] <= 2.2 * seconds + kinds["image"] + 2
    assert kinds["image"] == 16
    print(f"{seconds:.1f} s generating: {dict(kinds)}, {sum(len(data) for _, _, data in during) / seconds:.0f} B/s; "
          f"previews of {min(len(json.dumps(p)) for p in previews)}-{max(len(json.dumps(p)) for p in previews)} B, "
          f"largest event {max(len(data) for _, _, data in events)} B")
