"""Fault matrix: every fault the simulated GPU can inject, one per run, and SIGKILL of the server in each run state,
for each provider's API (Paperspace, RunPod pods, RunPod Serverless) and each SD backend (the web UI API, ComfyUI);
and storage faults, with the first API.

The simulated GPU runs as a process of its own (a machine outlives any avatargen process), and every row
gets a fresh `avatargen serve` process and data folder. A row is a manual refill of the unique bucket:
- with one fault of `avatargen.simulator.FAULTS` switched on, until the run is over; or
- with a storage fault (`STORAGE_FAULTS`) from before the run until after it: another process holding
  the cost ledger locked; the disk under data_dir full; the unique bucket's filesystem read-only;
  truncated images in both buckets (images and framed copies, there before the server starts); Redis (the
  storage backend of that row) stopped for 2 s and started again before the run, the fallback bucket full,
  which must be at most at its max at the end (`benchmarks.redis_blip`). Visitors may claim
  uniques in these rows, so the unique path meets the fault too; or
- with no fault, the server SIGKILLed once the run is booting (machine starting), generating (images
  stored) or shutting_down, then started again: its start-up check must stop the orphaned machine; or
- one of issue 19's money rows (`MONEY_ROWS`, `--money`): two replicas on a real redis-server, the
  generator's SIGSTOPped mid-run and woken up during the new holder's run (which must complete, with no
  machine call from the stalled one); `serve` started with Redis down (placeholder first, then a run once
  Redis answers); a safety gate that holds every image (the run fails, automatic runs paused); a workflow
  whose LoRA ComfyUI lacks (the run fails before its first image).
Meanwhile a background loop GETs /avatar, each request from a visitor address of its own (from the
killed server's twin, a visitor-only process on the same folders, in the SIGKILL rows), and records every
answer that is not a whole image with a 200.

Every row must hold: the machine is off (or terminated, billed no more) at the end; no billed seconds after
the stop confirmation (the simulator's count at the end and a few poll periods later); no image lost
(announced as stored, neither in the bucket nor served to a visitor) or half-written (a visible .webp
without its sidecar, or one that does not decode); visitors answered throughout. The script exits with
status 1 if a row does not hold.

The ComfyUI rows (on the first API: the machine's faults do not depend on the backend) are the SD server's
faults (`SD_FAULTS`: those that strike the web UI as they strike ComfyUI, and ComfyUI's own) and SIGKILL
while generating; the web UI's rows leave ComfyUI's own faults out. `--quick` runs 4 images per row instead
of 20, and of the ComfyUI rows only a representative part (`QUICK_COMFYUI`: ComfyUI's own faults, the
machine stopped from outside, SIGKILL while generating), so the test suite that runs it stays short: the
SD server's other faults meet ComfyUI in the generator tests too.

A serverless endpoint has no machine: its rows' "machine" is "off" once no job is queued or running, and
its workers may bill the endpoint's idle timeout after the run (RunPod bills it), nothing more. Its rows
run its own faults (`faults.SERVERLESS`) and SIGKILL while generating or shutting down: the restart must
cancel the jobs the killed server left and purge the queue.

    python -m benchmarks.fault_matrix [--quick] [--jobs N] [--api paperspace|runpod|runpod_serverless ...]
                                      [--storage] [--comfyui] [--money]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from PIL import Image

from avatargen.api import NewImage, ServerEvent, StateChange
from avatargen.api.client import AdminError, Unreachable
from avatargen.config import load_settings
from avatargen.durations import parse_duration
from avatargen.imaging import ImageError, check_webp
from avatargen.sd.workflow import BUILTIN_GRAPH
from avatargen.simulator.faults import faults_for
from avatargen.storage.files.bucket import open_buckets
from avatargen.testing import RedisServer, Service, Simulator
from benchmarks import redis_blip
from benchmarks.harness import (
    Admin,
    EventTest,
    avatargen_server,
    parse_args,
    publish,
    run_ended,
    run_in_state,
    sample_avatars,
    scratch,
    write_config,
)
from benchmarks.report import print_machine, print_table
from benchmarks.storage_faults import SqliteLock, fill, read_only, tmpfs

KILL_STATES = ("booting", "generating", "shutting_down")
# Rows of the first API are named by their fault alone, the others' say the API.
APIS = ("paperspace", "runpod", "runpod_serverless")
COMFYUI_ONLY = ("comfyui_validation", "comfyui_socket_drop")
SD_FAULTS = ("sd_500", "sd_garbage", "sd_invalid_image", "sd_slow_first", "external_stop", *COMFYUI_ONLY)
QUICK_COMFYUI = (*COMFYUI_ONLY, "external_stop")  # with SIGKILL while generating
STORAGE_FAULTS = ("locked ledger", "full disk", "read-only unique bucket", "corrupt images", "Redis blip")
# Issue 19's money rows: a generator replica stalled past its lease, Redis down at start-up, a safety gate that
# holds every image back, a LoRA the ComfyUI server does not have.
MONEY_ROWS = ("stalled generator replica", "Redis down at start-up", "gate holds every image", "LoRA not on ComfyUI")
MONEY_UNIQUES = 40  # the stalled replica's row: the new holder's run lasts while the stalled one wakes up
UNIQUES_BEFORE = 3  # uniques in the bucket before a storage-fault row's run, for visitors to claim
VISITOR_UNIQUES = 1000  # the visitors' unique allowance in the storage-fault rows
DATA_DISK = "64m"  # the tmpfs under data_dir in the full-disk row
POLL_EVERY = "50ms"
BOOT_DELAY, STOP_DELAY = "500ms", "300ms"
SETTLE_POLLS = 6  # poll periods to wait before reading the billed seconds again
FALLBACK_IMAGES = 5
VISITOR_PAUSE = 0.02
ROW_TIMEOUT = 60.0
ERROR_QUOTE = 100  # characters of a run's error shown in the table


def kill_states(api: str) -> tuple[str, ...]:
    """The run states a row SIGKILLs the server in: a serverless run has no machine to boot (its booting is one
    request), so its rows kill it generating (jobs out) and shutting down (jobs being cancelled)."""
    return KILL_STATES[1:] if api == "runpod_serverless" else KILL_STATES


class Visitors:
    """A background loop of GET /avatar against one server, each request from a visitor address of its own
    (X-Forwarded-For, believed from loopback), counting the answers that are not a whole avatar."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests = 0
        self.failures: list[str] = []
        self.uniques: set[str] = set()  # ids of the uniques served
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="visitors", daemon=True)

    def _loop(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(VISITOR_PAUSE):
                self.requests += 1
                address = f"10.{self.requests >> 16 & 255}.{self.requests >> 8 & 255}.{self.requests & 255}"
                try:
                    response = client.get(self.url + "/avatar.webp", headers={"X-Forwarded-For": address})
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200 or "x-avatar-kind" not in response.headers:
                    self.failures.append(f"{response.status_code} {response.text[:80]}")
                    continue
                try:
                    check_webp(response.content)
                except ImageError as exc:
                    self.failures.append(f"a broken image: {exc}")
                if response.headers["x-avatar-kind"] == "unique":
                    self.uniques.add(response.headers["x-avatar-id"])

    def verdict(self) -> str:
        if not self.failures:
            return f"yes ({self.requests} requests)"
        return f"NO: {len(self.failures)} of {self.requests} failed ({self.failures[0]})"

    def __enter__(self) -> Visitors:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Row:
    name: str
    outcome: str = "-"
    machine: str = "-"
    billed_after: float | None = None
    lost: int | None = None
    broken: int | None = None
    visitors: Visitors | None = None
    problems: list[str] = field(default_factory=list)
    billed_allowed: float = 0.0005  # a serverless endpoint's workers bill their idle timeout after the last job

    def check(self) -> None:
        """Record what does not hold."""
        if self.machine not in ("off", "terminated"):
            self.problems.append(f"the machine is {self.machine}")
        if self.billed_after is None or self.billed_after > self.billed_allowed:
            self.problems.append(f"billed after the stop: {self.billed_after}")
        if self.lost or self.broken:
            self.problems.append(f"{self.lost} images lost, {self.broken} half-written")
        if self.visitors is None or self.visitors.failures or not self.visitors.requests:
            self.problems.append("visitors were not answered throughout")

    def cells(self) -> list[object]:
        billed = "-" if self.billed_after is None else f"{self.billed_after:.3f}"
        visitors = self.visitors.verdict() if self.visitors else "-"
        holds = "yes" if not self.problems else "NO: " + "; ".join(self.problems)
        return [self.name, self.outcome, self.machine, billed, _dash(self.lost), _dash(self.broken), visitors, holds]


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def follow_run(admin: Admin, until: EventTest) -> tuple[set[str], ServerEvent]:
    """Read events until `until` matches: the unique images announced as stored so far, and that event."""
    announced: set[str] = set()

    def watch(event: ServerEvent) -> bool:
        if isinstance(event, NewImage) and event.image.bucket == "unique":
            announced.add(event.image.id)
        return until(event)

    return announced, admin.wait_event(watch, ROW_TIMEOUT)


def after_images(count: int) -> EventTest:
    """Matches the `count`-th image event (a fresh test per use: it counts)."""
    seen = [0]

    def test(event: ServerEvent) -> bool:
        seen[0] += isinstance(event, NewImage)
        return seen[0] >= count

    return test


def kill_point(state: str, run_id: str, api: str) -> EventTest:
    """The moment to SIGKILL the server: its machine billing while booting, images stored (on a serverless
    endpoint: a job of ours running, so the restart finds it in the journal), or stopping."""
    if state == "generating" and api == "runpod_serverless":
        return lambda event: isinstance(event, StateChange) and event.run is not None and event.run.id == run_id \
            and event.machine_state == "generating"
    if state == "booting":
        return lambda event: isinstance(event, StateChange) and event.run is not None and event.run.id == run_id \
            and event.machine_state == "starting"
    if state == "generating":
        return after_images(2)
    return run_in_state(run_id, "shutting_down")


def bucket_damage(folder: Path, announced: set[str], served: set[str]) -> tuple[int, int]:
    """Images announced but neither in the folder nor served to a visitor, and visible images without a
    sidecar or that do not decode."""
    visible = {path.stem for path in folder.glob("*.webp")}
    broken = 0
    for image_id in visible:
        try:
            with Image.open(folder / f"{image_id}.webp") as picture:
                picture.load()
            whole = (folder / f"{image_id}.json").is_file()
        except OSError:
            whole = False
        broken += not whole
    return len(announced - visible - served), broken


def settle(row: Row, simulator: Simulator, poll_every: float) -> None:
    """The machine's state, and the billed seconds it accrued from now until a few poll periods later."""
    machine = simulator.machine()
    row.machine = machine["state"]
    time.sleep(max(0.3, SETTLE_POLLS * poll_every))  # nothing happens here, and that is what is measured
    row.billed_after = simulator.machine()["billedSeconds"] - machine["billedSeconds"]
    if "idleTimeout" in machine:  # a serverless endpoint: "off" is no job out; idle workers bill their timeout
        row.billed_allowed = float(machine["idleTimeout"]) * int(machine["workers"]) + 0.0005


class Matrix:
    """The rows: each with a fresh simulated GPU (its fault switched on from the start), server and data folder."""

    def __init__(self, work: Path, run_images: int) -> None:
        self.work = work
        self.run_images = run_images
        self.poll_every = parse_duration(POLL_EVERY)

    def row(self, api: str, name: str, faults: list[str], body: Callable[[Row, Path, Simulator], None], *,
            backend: str = "a1111", uniques: int = 0,
            disk: Callable[[Path], contextlib.AbstractContextManager[object]] | None = None,
            layer: Callable[[Path], dict[str, Any]] | None = None) -> Row:
        """Run one row; an error in it fails the row, and the matrix goes on. Rows of RunPod's API and of
        ComfyUI say so.

        `uniques`: the visitors' unique allowance (0: fallbacks only). `disk`: what the row's data folder is
        mounted on, from before anything is written there until the row is over. `layer`: a config layer of
        the row's own, made in its folder.
        """
        row = Row(name if api == APIS[0] else f"{name} ({api})")
        row.name += "" if backend == "a1111" else f" ({backend})"
        directory = self.work / f"{api}_{backend}_{name.replace(' ', '_')}"
        directory.mkdir()
        simulator = Simulator(directory / "simulator.log", boot_delay=BOOT_DELAY, stop_delay=STOP_DELAY,
                              sd_boot_delay="100ms", step_time="2ms", faults=faults, api=api, backend=backend)
        try:
            with simulator, (disk or _as_it_is)(directory / "data"):
                config = write_config(directory, simulator.provider_config(), {
                    "serving": {"unique_burst": uniques, "fallback_retire_every": "24h"},
                    "buckets": {"unique": {"max": self.run_images + (UNIQUES_BEFORE if uniques else 0)},
                                "fallback": {"max": FALLBACK_IMAGES}},
                    "generator": {"image_retries": 1},
                    "gpu": {"poll_every": POLL_EVERY, "ready_timeout": "5s", "stop_timeout": "30s"},
                }, layer(directory) if layer else {})
                publish(open_buckets(load_settings(config))["fallback"], sample_avatars(FALLBACK_IMAGES))
                body(row, config, simulator)
            row.check()
        except Exception as exc:  # the row fails, the matrix goes on
            row.problems.append(f"{type(exc).__name__}: {exc}")
        print(f"{row.name}: {row.outcome}; {'holds' if not row.problems else 'DOES NOT HOLD'}", file=sys.stderr,
              flush=True)
        return row

    def _server(self, config: Path, log: str, simulator: Simulator) -> Service:
        return avatargen_server(config, config.parent / log, env=simulator.env())

    def refill(self, row: Row, config: Path, simulator: Simulator, *,
               during: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
               before: Callable[[Admin], None] | None = None, stored: Callable[[], set[str]] | None = None,
               after: Callable[[Row, Admin], None] | None = None) -> None:
        """Start the server, refill the unique bucket while visitors come, until the run is over.

        `during`: a fault that strikes once the server is up, from before the run until after it. `before`:
        what happens to the server, visitors coming, before the refill. `stored`: the uniques in the bucket at
        the end (default: its folder's images; the images' files are checked there too). `after`: what the
        row checks once the run is over, while the server still runs (a problem goes in the row).
        """
        with self._server(config, "server.log", simulator) as server:
            admin = Admin(server.url)
            admin.wait_generator_started()
            with (during or contextlib.nullcontext)(), Visitors(server.url) as row.visitors:
                if before is not None:
                    before(admin)
                run_id = admin.refill(["unique"]).id
                announced, event = follow_run(admin, run_ended(run_id))
            settle(row, simulator, self.poll_every)
            if after is not None:
                after(row, admin)
        assert isinstance(event, StateChange) and event.last_run is not None
        row.outcome = _outcome(event)
        if stored is None:
            row.lost, row.broken = bucket_damage(load_settings(config).buckets.unique.dir, announced,
                                                 row.visitors.uniques)
        else:  # in Redis: nothing half-written can be seen (each image is stored by one script)
            row.lost, row.broken = len(announced - stored() - row.visitors.uniques), 0

    def fault(self, api: str, fault: str, backend: str = "a1111") -> Row:

        return self.row(api, fault, [fault], self.refill, backend=backend)

    def storage(self, api: str, fault: str) -> Row:
        """A storage fault from before the run until after it; visitors may claim the uniques already there."""
        if fault == "Redis blip":
            return self.row(api, fault, [], self._redis_blip, uniques=VISITOR_UNIQUES)

        def body(row: Row, config: Path, simulator: Simulator) -> None:
            settings = load_settings(config)
            unique = open_buckets(settings)["unique"]
            ids = publish(unique, sample_avatars(UNIQUES_BEFORE))
            during: Callable[[], contextlib.AbstractContextManager[object]] | None = None
            if fault == "locked ledger":
                during = partial(SqliteLock, settings.server.data_dir / "ledger.sqlite3")
            elif fault == "full disk":
                during = partial(_filled, settings.server.data_dir)
            elif fault == "read-only unique bucket":  # once the server is up: it refuses to start on one
                during = partial(_read_only, unique.directory)
            else:  # corrupt images: an image and a framed copy of the uniques, and a fallback, cut short
                _cut_short(unique.directory / f"{ids[0]}.webp", unique.directory / ".framed" / f"{ids[0]}.webp",
                           unique.directory / ".framed" / f"{ids[1]}.webp",
                           next(settings.buckets.fallback.dir.glob("*.webp")))
            self.refill(row, config, simulator, during=during)

        disks: dict[str, Callable[[Path], contextlib.AbstractContextManager[object]]] = {
            "full disk": partial(tmpfs, size=DATA_DISK), "read-only unique bucket": _unique_on_tmpfs}
        return self.row(api, fault, [], body, uniques=VISITOR_UNIQUES, disk=disks.get(fault))

    def _redis_blip(self, row: Row, config: Path, simulator: Simulator) -> None:
        """See `benchmarks.redis_blip`: the fallback bucket, full, must be at its max after the blip, no more."""
        most = redis_blip.FALLBACKS
        with redis_blip.on_redis(config, sample_avatars(most)) as (moved, redis):
            self.refill(row, moved, simulator, before=partial(redis_blip.blip, redis),
                        stored=partial(redis_blip.ids, redis, "unique"))
            fallbacks = len(redis_blip.ids(redis, "fallback"))
        row.outcome += f"; fallback bucket {fallbacks} of max {most}"
        if fallbacks > most:
            row.problems.append(f"the fallback bucket was filled past its max: {fallbacks} of {most}")

    def kill(self, api: str, state: str, backend: str = "a1111") -> Row:
        def body(row: Row, config: Path, simulator: Simulator) -> None:
            server = self._server(config, "server.log", simulator).start()
            try:
                admin = Admin(server.url)
                admin.wait_generator_started()
                # A visitor-only twin on the same folders: it answers visitors while the generator dies.
                with self._server(config, "twin.log", simulator) as twin, Visitors(twin.url) as row.visitors:
                    run_id = admin.refill(["unique"]).id
                    announced, _ = follow_run(admin, kill_point(state, run_id, api))
                    server.kill()
                    left = simulator.machine()["state"]
                    with self._server(config, "restarted.log", simulator) as restarted:
                        Admin(restarted.url).wait_generator_started()  # after the start-up check stopped it
                        settle(row, simulator, self.poll_every)
                        # whichever took the generator's lease: the restarted server or the visitor-only twin
                        stopped = any("no run is active: stopping it" in service.log_text()
                                      for service in (restarted, twin))
            finally:
                server.stop()
            row.outcome = (f"killed while {state} (machine {left}); the restart "
                           + ("stopped the machine" if stopped else "found it off"))
            row.lost, row.broken = bucket_damage(load_settings(config).buckets.unique.dir, announced,
                                                 row.visitors.uniques if row.visitors else set())

        return self.row(api, f"SIGKILL while {state}", [], body, backend=backend)


class MoneyRows:
    """Issue 19's money rows, on the first provider API: each must end with the machine off, nothing billed
    after, and what the owner pays for limited to what the row allows."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix

    def row(self, name: str) -> Row:
        rows = {"stalled generator replica": self.stalled_replica, "Redis down at start-up": self.redis_down,
                "gate holds every image": self.gate_holds_everything, "LoRA not on ComfyUI": self.missing_lora}
        return rows[name]()

    def gate_holds_everything(self) -> Row:
        """`require_face` on drawings without a face: the run fails and automatic runs are paused."""
        def paused(row: Row, admin: Admin) -> None:
            status = admin.status()
            if status.paused_by != "safety_gate":
                row.problems.append(f"automatic runs are not paused by the gate (paused_by {status.paused_by!r})")
            if status.last_run is None or status.last_run.outcome != "failed":
                row.problems.append("the run the gate held back is not shown as failed")

        return self.matrix.row(APIS[0], "gate holds every image", [],
                               lambda row, config, sim: self.matrix.refill(row, config, sim, after=paused),
                               layer=lambda _: {"review": {"enabled": True, "require_face": True, "face_score": 1.0}})

    def missing_lora(self) -> Row:
        """A workflow whose LoRA ComfyUI does not have: the run fails before its first image."""
        def workflow(directory: Path) -> dict[str, Any]:
            nodes = json.loads(json.dumps(BUILTIN_GRAPH))
            nodes["10"] = {"class_type": "LoraLoader", "inputs": {
                "model": ["4", 0], "clip": ["4", 1], "lora_name": "no-such-lora.safetensors",
                "strength_model": 1.0, "strength_clip": 1.0}}
            nodes["3"]["inputs"]["model"] = ["10", 0]
            for encoder in ("6", "7"):
                nodes[encoder]["inputs"]["clip"] = ["10", 1]
            (directory / "lora_api.json").write_text(json.dumps(nodes))
            return {"sd": {"comfyui": {"workflow": "lora_api.json"}}}

        def nothing_made(row: Row, admin: Admin) -> None:
            last = admin.status().last_run
            if last is None or last.run.done + last.run.held + last.run.failed or "no-such-lora" not in (
                    last.error or ""):
                row.problems.append("the run did not fail on the missing LoRA before its first image")

        return self.matrix.row(APIS[0], "LoRA not on ComfyUI", [],
                               lambda row, config, sim: self.matrix.refill(row, config, sim, after=nothing_made),
                               backend="comfyui", layer=workflow)

    def redis_down(self) -> Row:
        """`serve` with Redis not there yet: visitors get the placeholder; once Redis answers, the generator
        starts and a refill runs."""
        redis: list[RedisServer] = []

        def storage(directory: Path) -> dict[str, Any]:
            redis.append(RedisServer(directory / "redis"))
            return {"storage": {"backend": "redis", "url": redis[0].url}}

        def body(row: Row, config: Path, simulator: Simulator) -> None:
            try:
                with self.matrix._server(config, "server.log", simulator) as server, \
                        Visitors(server.url) as row.visitors:
                    before = httpx.get(server.url + "/avatar", timeout=10).headers.get("x-avatar-kind")
                    redis[0].start()
                    admin = Admin(server.url)
                    _generator_here(admin)
                    _, event = follow_run(admin, run_ended(admin.refill(["unique"]).id))
                    settle(row, simulator, self.matrix.poll_every)
            finally:
                redis[0].stop()
            row.outcome = f"{before} before Redis; then {_outcome(event)}"

        return self.matrix.row(APIS[0], "Redis down at start-up", [], body, layer=storage)

    def stalled_replica(self) -> Row:
        """Two replicas: the generator's is SIGSTOPped mid-run, the other takes over and runs; the first wakes
        up during that run and must neither start nor stop the machine."""
        redis: list[RedisServer] = []

        def storage(directory: Path) -> dict[str, Any]:
            redis.append(RedisServer(directory / "redis"))
            return {"storage": {"backend": "redis", "url": redis[0].url},
                    "buckets": {"unique": {"max": MONEY_UNIQUES}}}

        def body(row: Row, config: Path, simulator: Simulator) -> None:
            (config.parent / "second").mkdir()
            second_config = config.parent / "second" / "config.toml"
            second_config.write_text(config.read_text())  # its own data folder beside it
            redis[0].start()
            try:
                with self.matrix._server(config, "first.log", simulator) as first, \
                        self.matrix._server(second_config, "second.log", simulator) as second, \
                        Visitors(second.url) as row.visitors:
                    holder, standby = Admin(first.url), Admin(second.url)
                    holder.wait_generator_started()
                    holder.refill(["unique"])
                    holder.wait_event(after_images(1))
                    first.pause()
                    try:
                        _generator_here(standby)  # the lease expired: the second took over, stopped the machine
                        run_id = standby.refill(["unique"]).id
                        standby.wait_event(run_in_state(run_id, "generating"))
                    finally:
                        first.resume()
                    _, event = follow_run(standby, run_ended(run_id))
                    settle(row, simulator, self.matrix.poll_every)
                    woken = first.log_text()
            finally:
                redis[0].stop()
            calls = simulator.machine()["calls"]
            if calls.count("start") != 2 or calls[-2:] != ["start", "stop"]:
                row.problems.append(f"the stalled replica touched the machine: {calls}")
            if "lost the generator lease" not in woken:
                row.problems.append("the stalled replica did not say it lost the generator lease")
            row.outcome = f"the new holder's run {_outcome(event)}; machine calls {' '.join(calls)}"

        return self.matrix.row(APIS[0], "stalled generator replica", [], body, layer=storage)


def _generator_here(admin: Admin) -> None:
    """Until the generator of this server (or of one it forwards to) answers and has made its start-up check."""
    deadline = time.monotonic() + ROW_TIMEOUT
    while True:
        try:
            status = admin.status()
        except (AdminError, Unreachable):  # 503, or no answer in time, while no replica runs the generator
            status = None
        if status is not None and status.next_check_at is not None and status.state == "idle":
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the generator did not start in time")
        time.sleep(0.1)


def _outcome(event: ServerEvent) -> str:
    """A finished run in the table: how it ended, its counts and the start of its error."""
    assert isinstance(event, StateChange) and event.last_run is not None
    last_run = event.last_run
    error = last_run.error or ""
    return (f"{last_run.outcome} ({last_run.run.done} stored, {last_run.run.held} held, {last_run.run.failed} failed)"
            + (f": {error[:ERROR_QUOTE]}{'...' if len(error) > ERROR_QUOTE else ''}" if error else ""))


@contextlib.contextmanager
def _as_it_is(folder: Path) -> Iterator[Path]:
    yield folder


@contextlib.contextmanager
def _unique_on_tmpfs(data: Path) -> Iterator[Path]:
    """The unique bucket's folder on a tmpfs of its own, which the row can make read-only."""
    with tmpfs(data / "unique"):
        yield data


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[Path]:
    """The tmpfs on `folder` read-only until the end of the block."""
    read_only(folder)
    try:
        yield folder
    finally:
        read_only(folder, on=False)


@contextlib.contextmanager
def _filled(folder: Path) -> Iterator[Path]:
    """The filesystem of `folder` full until the end of the block."""
    filler = fill(folder)
    try:
        yield filler
    finally:
        filler.unlink()


def _cut_short(*paths: Path) -> None:
    for path in paths:
        os.truncate(path, path.stat().st_size // 2)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=4, help="rows run at the same time (default 4); each row has "
                        "its own simulated GPU, server and folders")
    parser.add_argument("--api", action="append", choices=APIS,
                        help="run the simulator-fault and SIGKILL rows of these provider APIs (default: all)")
    parser.add_argument("--storage", action="store_true",
                        help="run the storage-fault rows (with the first provider API)")
    parser.add_argument("--comfyui", action="store_true",
                        help="run the ComfyUI rows (with the first provider API)")
    parser.add_argument("--money", action="store_true",
                        help="run issue 19's money rows (with the first provider API, two of them on a real "
                             "redis-server); with none of these four: every row")


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    run_images = 4 if args.quick else 20
    print_machine()
    with scratch() as work, ThreadPoolExecutor(args.jobs) as pool:
        matrix = Matrix(work, run_images)
        everything = not args.api and not args.storage and not args.comfyui and not args.money
        futures = [future for api in (APIS if everything else args.api or ()) for future in (
            *(pool.submit(matrix.fault, api, fault) for fault in faults_for(api) if fault not in COMFYUI_ONLY),
            *(pool.submit(matrix.kill, api, state) for state in kill_states(api)))]
        if everything or args.storage:
            futures += [pool.submit(matrix.storage, APIS[0], fault) for fault in STORAGE_FAULTS]
        if everything or args.comfyui:
            futures += [pool.submit(matrix.fault, APIS[0], fault, "comfyui")
                        for fault in (QUICK_COMFYUI if args.quick else SD_FAULTS)]
            futures.append(pool.submit(matrix.kill, APIS[0], "generating", "comfyui"))
        if everything or args.money:
            futures += [pool.submit(MoneyRows(matrix).row, name) for name in MONEY_ROWS]
        try:
            rows = [future.result() for future in futures]
        except BaseException:  # Ctrl-C or `kill`: the rows under way finish and clean up, the queued ones never start
            pool.shutdown(cancel_futures=True)
            raise
    print_table("Fault matrix: one fault per run, SIGKILL in each run state", [
        "fault", "run outcome", "machine at end", "billed s after the end", "images lost", "images half-written",
        "visitors answered", "holds"], [row.cells() for row in rows], [
        f"manual refill of {run_images} uniques per row; simulated GPU in its own process (boot {BOOT_DELAY}, "
        f"stop {STOP_DELAY}, step_time 2ms); poll_every {POLL_EVERY}; billed seconds read again {SETTLE_POLLS} "
        "poll periods after the run ended",
    ])
    failed = [row.name for row in rows if row.problems]
    if failed:
        print(f"rows that do not hold: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
