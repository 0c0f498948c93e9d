"""What the live preview costs: the event stream an owner's panel receives during a run, and what the
generator fetches from the web UI for it (ComfyUI pushes its frames on the socket the client follows
anyway: nothing is fetched for them).

A real `avatargen serve` process drives the simulated GPU (its own process, at the shipped demo pace:
20 steps of 50 ms, 512 px, two images a request, two requests in flight) through a manual refill, while
this script follows the admin API's event stream with the product's client. It reports, while the run
generates: events and bytes a second by type, the preview events' sizes and spacing, and the size of the
full-size live preview the generator fetches from `/sdapi/v1/progress` for each one.
Targets: no event above 4 kB, previews at least `generator.preview_every` (1 s) apart (as this client
sees them arrive, less 50 ms for each event's own delivery delay: ComfyUI's previews need no fetch, so
the generator sends them about 1.00 s apart).

    python -m benchmarks.preview_stream [--quick] [--images N] [--backend comfyui]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter, defaultdict
from itertools import pairwise

import httpx

from avatargen.api import AdminClient, Preview, StateChange, encode_event
from avatargen.config import SD_BACKENDS
from avatargen.testing import Simulator
from benchmarks.harness import ADMIN_TOKEN, Admin, avatargen_server, parse_args, scratch, write_config
from benchmarks.report import fmt, median, print_machine, print_table, verdict

EVENT_LIMIT = 4000  # bytes of an event's data
PREVIEW_EVERY = 1.0
DELIVERY_JITTER = 0.05  # seconds: gaps are seen where the stream arrives, each event delayed by its own amount


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=60, help="images the run makes (default 60)")
    parser.add_argument("--backend", choices=SD_BACKENDS, default="a1111", help="the SD server (default a1111)")


async def follow(url: str) -> tuple[list[tuple[float, str, int, object]], float]:
    """(arrival, event name, data bytes, event) of each event while the run generates, and its length."""
    seen: list[tuple[float, str, int, object]] = []
    generating_since: float | None = None
    async with AdminClient(url, ADMIN_TOKEN) as client, client.subscribe() as events:
        await client.refill(["fallback"])
        async for _, event in events:
            now = time.monotonic()
            name, data = encode_event(event)
            if isinstance(event, StateChange):
                if event.state == "generating" and generating_since is None:
                    generating_since = now
                elif event.state != "generating" and generating_since is not None:
                    return seen, now - generating_since
            if generating_since is not None:
                seen.append((now, name, len(json.dumps(data)), event))
    raise RuntimeError("the event stream ended before the run did")


def full_size_preview(sd_url: str, seconds: float) -> list[int]:
    """Bytes of `/sdapi/v1/progress` with its live preview, as the generator fetches it, sampled meanwhile."""
    sizes = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{sd_url}/sdapi/v1/progress", params={"skip_current_image": "false"}, timeout=10)
            if body.json().get("current_image"):
                sizes.append(len(body.content))
        except (httpx.HTTPError, ValueError):
            pass  # the machine is still booting
        time.sleep(0.5)
    return sizes


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    images = 16 if args.quick else args.images  # quick: about 4 s generating, so a few previews to compare
    print_machine()
    with scratch() as work, Simulator(work / "simulator.log", boot_delay="300ms", stop_delay="200ms",
                                      sd_boot_delay="100ms", step_time="50ms", backend=args.backend) as simulator:
        config = write_config(work, simulator.provider_config(), {
            "buckets": {"fallback": {"max": images}},
            "generator": {"concurrency": 2, "preview_every": f"{PREVIEW_EVERY}s"},
            "sd": {"steps": 20, "width": 512, "height": 512, "batch_size": 2},
        })
        with avatargen_server(config, work / "avatargen.log", env=simulator.env()) as server:
            Admin(server.url).wait_generator_started()
            fetch_from = simulator.info["sd_url"] if args.backend == "a1111" else None
            seen, seconds, fetched = asyncio.run(_measure(server.url, fetch_from))
    kinds: Counter[str] = Counter()
    sizes: defaultdict[str, int] = defaultdict(int)
    for _, name, size, _ in seen:
        kinds[name] += 1
        sizes[name] += size
    print(f"a run of {images} images on {args.backend}, {fmt(seconds, 1)} s generating")
    print_table("Event stream while a run generates",
                ["event", "count", "per second", "bytes/s", "largest bytes"],
                [[name, kinds[name], fmt(kinds[name] / seconds), fmt(sizes[name] / seconds, 0),
                  max(size for _, kind, size, _ in seen if kind == name)] for name in sorted(kinds)]
                + [["all", sum(kinds.values()), fmt(sum(kinds.values()) / seconds),
                    fmt(sum(sizes.values()) / seconds, 0), max(size for _, _, size, _ in seen)]])
    previews = [(at, size) for at, name, size, _ in seen if name == "preview"]
    gaps = [later - earlier for (earlier, _), (later, _) in pairwise(previews)]
    if not gaps:
        print(f"{len(previews)} preview(s) in {fmt(seconds, 1)} s generating: none to compare; {verdict(False)}")
        return 1
    pictures = [event.image for _, _, _, event in seen if isinstance(event, Preview)]
    rows: list[list[object]] = [
        ["preview event, bytes", fmt(median([size for _, size in previews]), 0), max(size for _, size in previews)],
        ["its WebP, bytes", fmt(median([len(picture) for picture in pictures]), 0), max(map(len, pictures))],
        ["seconds between previews", fmt(median(gaps)), fmt(max(gaps))],
    ]
    if fetched:  # the web UI's: ComfyUI's frames come on its socket whether or not avatargen shows them
        rows.append(["progress with the full-size preview (fetched per preview), bytes", fmt(median(fetched), 0),
                     max(fetched)])
    print_table("Live previews", ["what", "median", "largest"], rows)
    largest = max(size for _, _, size, _ in seen)
    met = largest <= EVENT_LIMIT and min(gaps) >= PREVIEW_EVERY - DELIVERY_JITTER
    print(f"largest event {largest} B (limit {EVENT_LIMIT}), closest previews {fmt(min(gaps))} s apart "
          f"(at least {PREVIEW_EVERY}): {verdict(met)}")
    return 0 if met else 1


async def _measure(url: str, sd_url: str | None) -> tuple[list[tuple[float, str, int, object]], float, list[int]]:
    """The stream while the run generates, and (from the web UI at `sd_url`) what a preview fetch weighs."""
    stream = asyncio.create_task(follow(url))
    fetched = [] if sd_url is None else await asyncio.to_thread(full_size_preview, sd_url, 4.0)
    seen, seconds = await stream
    return seen, seconds, fetched


if __name__ == "__main__":
    raise SystemExit(main())
