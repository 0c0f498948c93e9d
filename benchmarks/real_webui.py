"""The `a1111` backend against a real web UI (AUTOMATIC1111, Forge, SD.Next) that is already running.

CI cannot run one (no model weights can be fetched there); a developer starts one (for Forge Classic on
this CPU: `../shared/tools/forge/`) and points this script at it. Each check is a real `avatargen serve`
process with `provider = "always_on"` and the server's URL, driven through the admin API:

1. a refill for each way an owner writes `sd.checkpoint` (the title, the file name with and without its
   folder, the name without extension, the short hash): every run completes and every image says it was
   drawn by that model;
2. the guard: a name the server lacks fails the run before its first image, naming what would match;
3. an abort in the middle of a job: the web UI's job is interrupted (its progress goes idle);
4. the live preview: preview events arrive while the run generates (or the log says the server draws none).

    python -m benchmarks.real_webui --url http://127.0.0.1:18300 [--steps 3] [--size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from avatargen.api import AdminClient, Preview, StateChange
from benchmarks.harness import ADMIN_TOKEN, Admin, avatargen_server, parse_args, run_ended, scratch, write_config
from benchmarks.report import fmt, print_machine, print_table, verdict


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:18300", help="the running web UI (default port 18300)")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps per image (default 3: CPU servers)")
    parser.add_argument("--size", type=int, default=64, help="width and height asked of the web UI (default 64)")
    parser.add_argument("--images", type=int, default=2, help="images per refill (default 2)")
    parser.add_argument("--model", type=int, default=0, help="which of /sdapi/v1/sd-models to use (default 0)")


def config_for(work: Path, args: argparse.Namespace, checkpoint: str, **extra: Any) -> Path:
    return write_config(work, {
        "gpu": {"provider": "always_on"},
        "sd": {"url": args.url, "checkpoint": checkpoint, "steps": args.steps, "width": args.size,
               "height": args.size, "batch_size": 1},
        "buckets": {"unique": {"min": 0, "max": 0}, "fallback": {"min": 0, "max": args.images}},
        "generator": {"concurrency": 1, "check_every": "24h", "preview_every": "1s"},
    }, extra)


def checkpoint_spellings(url: str, index: int) -> tuple[str, list[str], set[str]]:
    """The name a model's images report (`sd_model_name`: its file name without extension), and the ways
    an owner writes it: its title, the file name with its folder (if any) and without, the name without
    extension, and the short hash (the model name before the web UI has hashed the file); and those of them
    that also name another model (the same file in two folders has the same hash), which must be refused."""
    models = httpx.get(f"{url}/sdapi/v1/sd-models", timeout=30).json()
    model = models[index]
    title = model["title"]
    name = title.rsplit(" [", 1)[0]
    base = name.rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0]
    spellings = list(dict.fromkeys([title, name, base, stem, model["hash"] or model["model_name"]]))
    shared = {other["hash"] for position, other in enumerate(models) if position != index and other["hash"]}
    return stem, spellings, {spelling for spelling in spellings if spelling in shared}


async def refill_and_watch(url: str) -> tuple[dict[str, Any], int, float, float | None]:
    """One refill to its end: the last run as the status gives it, preview events seen, seconds in all, and
    seconds to the first preview."""
    started = time.monotonic()
    previews, first_preview = 0, None
    async with AdminClient(url, ADMIN_TOKEN) as client, client.subscribe() as events:
        run = await client.refill(["fallback"])
        async for _, event in events:
            if isinstance(event, Preview):
                previews += 1
                first_preview = first_preview or time.monotonic() - started
            if isinstance(event, StateChange) and event.run is None and event.last_run is not None \
                    and event.last_run.run.id == run.id:
                status = await client.status()
                assert status.last_run is not None
                last = status.last_run
                return ({"outcome": last.outcome, "done": last.run.done, "error": last.error}, previews,
                        time.monotonic() - started, first_preview)
    raise RuntimeError("the event stream ended before the run did")


def models_of(bucket: Path) -> set[str]:
    return {json.loads(sidecar.read_text()).get("model") for sidecar in bucket.glob("*.json")}


def web_ui_idle(url: str) -> bool:
    state = httpx.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "true"}, timeout=30).json()["state"]
    return not state.get("job_count")


def abort_mid_job(work: Path, args: argparse.Namespace) -> tuple[float, bool]:
    """Seconds from the abort to idle, and whether the web UI's job ended with it (it was interrupted)."""
    config = config_for(work, args, "", sd={"steps": max(args.steps, 12)})
    with avatargen_server(config, work / "abort.log") as server:
        admin = Admin(server.url)
        admin.wait_generator_started()
        run = admin.refill(["fallback"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until the web UI samples our job
            state = httpx.get(f"{args.url}/sdapi/v1/progress", params={"skip_current_image": "true"},
                              timeout=30).json()["state"]
            if state.get("sampling_step"):
                break
            time.sleep(0.2)
        began = time.monotonic()
        admin.abort()
        admin.wait_event(run_ended(run.id), timeout=300)
        seconds = time.monotonic() - began
        idle_deadline = time.monotonic() + 60
        while not web_ui_idle(args.url) and time.monotonic() < idle_deadline:
            time.sleep(0.2)
        return seconds, web_ui_idle(args.url)


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    print_machine()
    model_name, spellings, ambiguous = checkpoint_spellings(args.url, args.model)
    rows: list[list[object]] = []
    met = True
    with scratch() as work:
        for spelling in [*spellings, "someone-else.safetensors"]:
            folder = work / f"run{len(rows)}"
            folder.mkdir()
            config = config_for(folder, args, spelling)
            with avatargen_server(config, folder / "avatargen.log") as server:
                Admin(server.url).wait_generator_started()
                run, previews, seconds, first_preview = asyncio.run(refill_and_watch(server.url))
            models = models_of(folder / "data" / "fallback")
            refused = spelling == "someone-else.safetensors" or spelling in ambiguous
            ok = (run["outcome"] == "failed" and run["done"] == 0) if refused else (
                run["outcome"] == "completed" and run["done"] == args.images and models == {model_name})
            met &= ok
            rows.append([spelling, run["outcome"], run["done"], ", ".join(sorted(map(str, models))) or "-",
                         previews, fmt(first_preview, 1) if first_preview else "-", fmt(seconds, 1),
                         verdict(ok) + (f" ({run['error']})" if run["error"] else "")])
        abort_seconds, interrupted = abort_mid_job(work, args)
    met &= interrupted
    print_table(f"Refills against {args.url} ({args.images} images, {args.steps} steps, {args.size} px)",
                ["sd.checkpoint", "outcome", "images", "model drawn", "previews", "first preview s", "seconds",
                 "verdict"], rows)
    print(f"abort while the web UI samples: idle after {fmt(abort_seconds, 1)} s, web UI job interrupted: "
          f"{verdict(interrupted)}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
