"""Faults on a schedule: each setup goes through its list again and again, one fault at a time, each on for
`on` seconds and followed by `gap` seconds of quiet, so every kind strikes at least once per cycle.

The simulated GPU's faults are switched through its `PUT /_sim/faults` (and how often each struck is read
back before switching it off); the rest are done to the processes: Redis stopped (SIGTERM, started again on
its port: its append-only file keeps the data) and slowed (CLIENT PAUSE, again and again), the disk under
the data folder filled to the last byte, a replica SIGKILLed (and started again) or SIGSTOPped (and
continued), the server SIGTERMed and started again. Which replica each replica fault strikes: see
REDIS_FAULTS.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import redis

from benchmarks.soak.setups import Setup, Slot
from benchmarks.storage_faults import fill

SIM_FAULTS = ("sd_500", "sd_garbage", "sd_invalid_image", "api_429", "api_500", "start_error", "stop_500")
RUNPOD_FAULTS = ("zero_gpu",)
FILES_FAULTS = ("disk full", "server SIGTERM + restart")
# The SIGSTOP strikes the replica holding the generator (it comes back as the same process: its life goes on)
# and, frozen for longer than the lease's takeover in a full soak, hands the generator to the other one; the
# SIGKILL, next, strikes that other one, the last slot: the only one ever restarted, so the first lives the
# whole soak, and its resources are judged over all of it.
REDIS_FAULTS = ("Redis stopped", "Redis slowed", "replica SIGSTOP", "replica SIGKILL + restart")
PAUSE_MS, PAUSE_EVERY = 700, 1.0  # Redis slowed: all clients paused 0.7 s of every second


def faults_of(setup: Setup) -> list[str]:
    """The faults that strike this setup, in schedule order (the disk only where a tmpfs could be mounted)."""
    simulated = [*SIM_FAULTS, *(RUNPOD_FAULTS if setup.api == "runpod" else ())]
    processes = list(REDIS_FAULTS) if setup.redis is not None else [
        fault for fault in FILES_FAULTS if fault != "disk full" or setup.disk is not None]
    # Interleaved, the processes' faults first: a short soak (--quick) meets every kind before it ends.
    order: list[str] = []
    for n in range(max(len(simulated), len(processes))):
        order += [*processes[n:n + 1], *simulated[n:n + 1]]
    return order


@dataclass
class Strike:
    """One fault, on from `start` to `end`; `hits`: how often the simulator says it struck (its own faults);
    `generator`: whether the replica struck held the generator (replica faults)."""

    setup: str
    fault: str
    start: float
    end: float
    hits: int | None = None
    generator: bool | None = None


def _sim_faults(setup: Setup, names: list[str]) -> dict[str, int]:
    """Switch the simulator's faults to `names`; how often the ones switched off had struck."""
    struck = setup.simulator.faults()["hits"]
    setup.simulator.faults(names)
    return {str(name): int(count) for name, count in struck.items()}


@contextlib.contextmanager
def _redis_slowed(url: str, stop: threading.Event) -> Iterator[None]:
    client = redis.Redis.from_url(url)
    done = threading.Event()

    def pause() -> None:
        while not done.is_set() and not stop.is_set():
            with contextlib.suppress(redis.RedisError):
                client.client_pause(PAUSE_MS)
            done.wait(PAUSE_EVERY)

    thread = threading.Thread(target=pause, name="redis slowed", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(redis.RedisError):
            client.execute_command("CLIENT", "UNPAUSE")
        client.close()


class Schedule:
    """A thread striking one setup with its faults in turn until `stop`; `strikes` records each."""

    def __init__(self, setup: Setup, stop: threading.Event, *, on: float, gap: float, first_after: float) -> None:
        self.setup = setup
        self.stop = stop
        self.on, self.gap, self.first_after = on, gap, first_after
        self.faults = faults_of(setup)
        self.strikes: list[Strike] = []
        self.errors: list[str] = []  # a fault that could not be done (the soak's own failure)
        self._target = setup.slots[-1]  # the replica a replica fault strikes
        self.thread = threading.Thread(target=self._loop, name=f"faults {setup.name}", daemon=True)

    def _hold(self) -> None:
        self.stop.wait(self.on)

    def _strike(self, fault: str, strike: Strike) -> None:
        """Do one fault for `on` seconds."""
        setup = self.setup
        if fault in SIM_FAULTS or fault in RUNPOD_FAULTS:
            _sim_faults(setup, [fault])
            self._hold()
            strike.hits = _sim_faults(setup, []).get(fault, 0)
            return
        if fault.startswith("replica"):
            self._target = self._holder() if fault == "replica SIGSTOP" else setup.slots[-1]
            strike.generator = self._holds(self._target)
        actions: dict[str, Callable[[], None]] = {
            "disk full": self._disk_full,
            "server SIGTERM + restart": self._server_restarted,
            "Redis stopped": self._redis_stopped,
            "Redis slowed": self._redis_slowed,
            "replica SIGKILL + restart": self._replica_killed,
            "replica SIGSTOP": self._replica_stopped,
        }
        actions[fault]()

    @staticmethod
    def _holds(slot: Slot) -> bool:
        """Whether the replica in `slot` holds the generator now."""
        return bool(httpx.get(slot.url + "/healthz", timeout=5).json().get("generator") != "elsewhere")

    def _holder(self) -> Slot:
        """The slot holding the generator (the first one when none says so: a takeover under way)."""
        for slot in self.setup.serving():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if self._holds(slot):
                    return slot
        return self.setup.slots[0]

    def _server_restarted(self) -> None:
        self.setup.slots[0].terminate_and_restart()
        self._hold()

    def _replica_killed(self) -> None:
        self._target.kill_and_restart()
        self._hold()

    def _disk_full(self) -> None:
        assert self.setup.disk is not None
        filler = fill(self.setup.disk)
        try:
            self._hold()
        finally:
            filler.unlink()

    def _redis_stopped(self) -> None:
        assert self.setup.redis is not None
        self.setup.redis.stop()
        try:
            self._hold()
        finally:
            self.setup.redis.start()

    def _redis_slowed(self) -> None:
        assert self.setup.redis is not None
        with _redis_slowed(self.setup.redis.url, self.stop):
            self._hold()

    def _replica_stopped(self) -> None:
        slot = self._target
        with slot.down():
            slot.service.pause()
            try:
                self._hold()
            finally:
                slot.service.resume()  # its traffic comes back at once: woken, it no longer speaks as the generator

    def _loop(self) -> None:
        if self.stop.wait(self.first_after):
            return
        while not self.stop.is_set():
            for fault in self.faults:
                strike = Strike(self.setup.name, fault, time.time(), 0.0)
                try:
                    self._strike(fault, strike)
                except (httpx.HTTPError, OSError, RuntimeError, TimeoutError, ValueError) as exc:
                    self.errors.append(f"{fault}: {type(exc).__name__}: {exc}")
                strike.end = time.time()
                self.strikes.append(strike)
                if self.stop.wait(self.gap):
                    return
