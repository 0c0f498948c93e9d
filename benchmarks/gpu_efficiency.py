"""GPU efficiency and cost: how much of the billed machine time the SD server spends generating.

The generator runs in this process against the simulated GPU (`SimulatedGpu`, whose SD server, web UI
or ComfyUI, takes a fixed time per image: steps x step_time for a one-image batch, a batch of b images
1 + 0.18 (b - 1) times that) and fills the fallback bucket with one run, for each batch_size and concurrency. Per run:
- billed: start request to confirmed stop (the run's ledger entry), less the configured boot delay;
- SD busy: the time the SD server (web UI or ComfyUI) spent on jobs (the simulator's `busy_seconds`);
- busy share = SD busy / billed, billed seconds per image, and the projected cost of 1,000 avatars at the
  shipped config.toml's hourly_cost.
Target: busy share >= 97% with the shipped defaults (sd.batch_size, generator.concurrency), on both SD
backends (`--backend` runs one).

With ComfyUI, the shipped defaults also run on the simulated RunPod Serverless endpoint (worker-comfyui),
beside a ComfyUI pod: what each bills for the same images, and the cost per 1,000 avatars. Here the pod's
boot counts (a pod pays it once per run; an endpoint pays a cold start per worker it starts).

`--gate` measures the shipped defaults with the safety gate off and on (`[review] enabled`, the shipped
rules; needs the `review` extra: NudeNet checks each image in the imaging process before it is
published), taking turns for `--rounds` rounds, so both meet the same load on a shared machine; the
target holds for the gate's median on each backend.

    python -m benchmarks.gpu_efficiency [--quick] [--images N] [--step-time 15ms] [--backend comfyui]
                                        [--gate [--rounds 3]]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from avatargen.config import SD_BACKENDS, Settings, load_settings
from avatargen.durations import parse_duration
from avatargen.events import EventHub
from avatargen.generator import AvatarGenerator
from avatargen.simulator.runner import SimulatedGpu
from avatargen.storage.files.folder_bucket import folder_buckets
from avatargen.storage.files.ledger import FileLedger
from benchmarks.harness import ROOT, parse_args, scratch, write_config
from benchmarks.report import fmt, print_machine, print_table, verdict

TARGET_SHARE = 0.97
STEPS = 20
BOOT_DELAY = "500ms"
FULL_COMBOS = [(batch, concurrency) for batch in (1, 2, 4) for concurrency in (1, 2, 4)]
QUICK_COMBOS = [(1, 1), (2, 2)]


@dataclass(frozen=True)
class Measurement:
    backend: str
    batch: int
    concurrency: int
    images: int
    billed: float  # seconds, boot delay left out
    busy: float  # seconds the SD server spent on jobs
    hourly_cost: float

    @property
    def share(self) -> float:
        return self.busy / self.billed

    @property
    def seconds_per_image(self) -> float:
        return self.billed / self.images

    @property
    def cost_per_thousand(self) -> float:
        return self.seconds_per_image * 1000 / 3600 * self.hourly_cost


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=200, help="images per run (default 200)")
    parser.add_argument("--step-time", default="15ms", help="simulated time per sampling step (default 15ms)")
    parser.add_argument("--gate", action="store_true",
                        help="the shipped defaults with the safety gate off and on, taking turns")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --gate (default 3)")
    parser.add_argument("--backend", choices=SD_BACKENDS, default=None, help="only this SD backend (default: both)")


async def started(generator: AvatarGenerator, timeout: float = 30.0) -> None:
    """Until the generator has made its start-up check (nothing announces it: poll, with a deadline)."""
    deadline = time.monotonic() + timeout
    while generator.next_check_at is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the generator did not make its start-up check in time")
        await asyncio.sleep(0.01)


async def one_run(settings: Settings) -> tuple[float, float, int, float]:
    """Fill the fallback bucket in one run: the billed seconds (on a serverless endpoint, what it bills), the SD
    server's busy seconds, jobs done, and the seconds the ledger billed (a serverless run's estimate)."""
    buckets = folder_buckets(settings)
    async with SimulatedGpu(settings.gpu.simulated, backend=settings.sd.backend,
                            hourly_price=settings.gpu.hourly_cost) as gpu:
        ledger = await FileLedger.open(settings.server.data_dir / "ledger.sqlite3")
        generator = AvatarGenerator(settings, buckets, gpu.provider(settings.gpu, data_dir=settings.server.data_dir),
                                    ledger, EventHub())
        await generator.start()
        try:
            await started(generator)
            generator.refill(["fallback"])
            await generator.wait_idle()
        finally:
            await generator.close()
            await ledger.aclose()
        sd = gpu.endpoint or gpu.sd
        busy, jobs = sd.busy_seconds, len(sd.completed)
        if gpu.endpoint is not None:  # what RunPod bills: every worker's time, rounded up, once they all stopped
            while gpu.endpoint.workers:
                await asyncio.sleep(0.05)
            billed_by_endpoint = gpu.endpoint.billed_seconds
    run = generator.last_run
    expected = settings.buckets.fallback.max
    if run is None or run.outcome != "completed" or run.done + run.held != expected:
        raise SystemExit(f"the run did not complete with {expected} images: {run and run.to_dict()}")
    ledger_seconds = run.cost() / settings.gpu.hourly_cost * 3600
    if gpu.endpoint is not None:
        return billed_by_endpoint, busy, jobs, ledger_seconds
    return run.billed_seconds(), busy, jobs, ledger_seconds


def measure(work: Path, backend: str, batch: int, concurrency: int, images: int, step_time: str,
            hourly_cost: float, gate: bool) -> Measurement:
    directory = work / f"{backend}-batch{batch}-concurrency{concurrency}"
    directory.mkdir()
    settings = load_settings(write_config(directory, {
        "buckets": {"fallback": {"max": images}},
        "generator": {"concurrency": concurrency},
        "gpu": {"hourly_cost": hourly_cost, "poll_every": "100ms",
                "simulated": {"boot_delay": BOOT_DELAY, "stop_delay": "200ms", "sd_boot_delay": "200ms",
                              "step_time": step_time}},
        "sd": {"batch_size": batch, "steps": STEPS, "backend": backend},
        "review": {"enabled": gate},
    }))
    billed, busy, jobs, _ledger = asyncio.run(one_run(settings))
    if jobs != -(-images // batch):
        raise SystemExit(f"the {backend} server computed {jobs} jobs for {images} images in batches of {batch}")
    measurement = Measurement(backend, batch, concurrency, images, billed - settings.gpu.simulated.boot_delay, busy,
                              hourly_cost)
    print(f"{backend} batch {batch} concurrency {concurrency}{' gate on' if gate else ''}: "
          f"share {measurement.share:.1%}", file=sys.stderr, flush=True)
    return measurement


def serverless_beside_the_pod(work: Path, shipped: Settings, images: int, step_time: str) -> None:
    """The shipped defaults on a serverless endpoint (worker-comfyui) and on a ComfyUI pod: cost per 1,000."""
    batch, concurrency, rate = shipped.sd.batch_size, shipped.generator.concurrency, shipped.gpu.hourly_cost
    timing = {"stop_delay": "200ms", "sd_boot_delay": "200ms", "step_time": step_time}
    rows = []
    for name, api in (("ComfyUI pod", "runpod"), ("serverless endpoint (worker-comfyui)", "runpod_serverless")):
        directory = work / f"beside-{api}"
        directory.mkdir()
        settings = load_settings(write_config(directory, {
            "buckets": {"fallback": {"max": images}},
            "generator": {"concurrency": concurrency},
            "gpu": {"hourly_cost": rate, "poll_every": "100ms", "runpod_serverless": {"idle_timeout": "200ms"},
                    "simulated": {"api": api, "boot_delay": BOOT_DELAY, **timing}},
            "sd": {"batch_size": batch, "steps": STEPS, "backend": "comfyui"},
        }))
        billed, busy, _jobs, ledger = asyncio.run(one_run(settings))
        per_image = billed / images
        rows.append([name, images, fmt(billed), fmt(ledger), fmt(busy), f"{busy / billed:.1%}", fmt(per_image, 3),
                     fmt(per_image * 1000 / 3600 * rate, 3)])
        print(f"{name}: billed {billed:.2f} s, ledger {ledger:.2f} s", file=sys.stderr, flush=True)
    print_table("Serverless endpoint beside a pod, shipped defaults", [
        "GPU", "images", "billed s", "ledger s", "SD busy s", "busy share", "billed s/image",
        "cost per 1,000 avatars"], rows, [
        f"batch_size {batch}, concurrency {concurrency}, max_in_flight {shipped.gpu.runpod_serverless.max_in_flight}; "
        f"{STEPS} steps x {step_time}; both at hourly_cost {rate:g} (RunPod's serverless price per second is "
        "higher than a pod's for the same GPU: compare with your own prices)",
        f"pod: start request to confirmed stop, its boot ({BOOT_DELAY}) included; serverless: what the simulated "
        f"endpoint bills (each worker from start to stop, rounded up to the second, cold start {BOOT_DELAY} and "
        "idle timeout 200ms included); ledger s: what avatargen's ledger counted (for the endpoint, its estimate)",
    ])


def compare_gate(shipped: Settings, backends: list[str], images: int, step_time: str, rounds: int) -> None:
    """The shipped defaults with the safety gate off and on, taking turns, on each backend."""
    batch, concurrency = shipped.sd.batch_size, shipped.generator.concurrency
    results: dict[tuple[str, bool], list[Measurement]] = {(b, gate): [] for b in backends for gate in (False, True)}
    rows = []
    with scratch() as work:
        for round_ in range(1, rounds + 1):
            for backend in backends:
                for gate in (False, True):
                    folder = work / f"round{round_}-gate-{'on' if gate else 'off'}"
                    folder.mkdir(exist_ok=True)
                    m = measure(folder, backend, batch, concurrency, images, step_time, shipped.gpu.hourly_cost,
                                gate)
                    results[backend, gate].append(m)
                    rows.append([backend, "on" if gate else "off", round_, m.images, fmt(m.billed), fmt(m.busy),
                                 f"{m.share:.1%}", fmt(m.seconds_per_image, 3)])
    median = {key: statistics.median(m.share for m in ms) for key, ms in results.items()}
    print_table("Safety gate and GPU busy share, shipped defaults", [
        "backend", "safety gate", "round", "images", "billed s", "SD busy s", "busy share", "billed s/image"], rows, [
        f"batch_size {batch}, concurrency {concurrency}; simulated SD server: {STEPS} steps x {step_time}; gate off "
        "and on take turns; gate on: [review] enabled with the shipped rules",
        *(f"{backend}: median busy share gate off {median[backend, False]:.1%}, gate on {median[backend, True]:.1%}; "
          f"target >= {TARGET_SHARE:.0%} with the gate on: {verdict(median[backend, True] >= TARGET_SHARE)}"
          for backend in backends),
    ])


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    shipped = load_settings(ROOT / "config.toml")
    images, step_time, combos = (20, "2ms", QUICK_COMBOS) if args.quick else (args.images, args.step_time, FULL_COMBOS)
    defaults = (shipped.sd.batch_size, shipped.generator.concurrency)
    if defaults not in combos:
        raise SystemExit(f"the shipped defaults (batch {defaults[0]}, concurrency {defaults[1]}) are not measured")
    print_machine()
    backends = [args.backend] if args.backend else list(SD_BACKENDS)
    if args.gate:
        compare_gate(shipped, backends, images, step_time, 1 if args.quick else args.rounds)
        return 0
    with scratch() as work:
        results = [measure(work, backend, batch, concurrency, images, step_time, shipped.gpu.hourly_cost, False)
                   for backend in backends for batch, concurrency in combos]
        if "comfyui" in backends:
            serverless_beside_the_pod(work, shipped, images, step_time)
    rows = [[m.backend, m.batch, m.concurrency, m.images, fmt(m.billed), fmt(m.busy), f"{m.share:.1%}",
             fmt(m.seconds_per_image, 3), fmt(m.cost_per_thousand, 3)] for m in results]
    cheapest = min(results, key=lambda m: m.seconds_per_image)
    per_image = STEPS * parse_duration(step_time)
    print_table("GPU efficiency and cost per run", [
        "backend", "batch_size", "concurrency", "images", "billed s", "SD busy s", "busy share", "billed s/image",
        "cost per 1,000 avatars"], rows, [
        f"simulated SD server (web UI or ComfyUI): {STEPS} steps x {step_time} = {per_image:g} s per one-image "
        f"batch; boot delay {BOOT_DELAY} left out of billed time; SD boot 200ms, stop 200ms, poll_every 100ms",
        f"cost at the shipped hourly_cost {shipped.gpu.hourly_cost:g}; a real run also pays its boot once "
        "(a minute or two per run, whatever its size)",
        f"cheapest per image: {cheapest.backend}, batch_size {cheapest.batch}, concurrency {cheapest.concurrency}",
        *(f"target: busy share >= {TARGET_SHARE:.0%} with the shipped defaults (batch_size {defaults[0]}, "
          f"concurrency {defaults[1]}) on {m.backend}: {m.share:.1%}, {verdict(m.share >= TARGET_SHARE)}"
          for m in results if (m.batch, m.concurrency) == defaults),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
