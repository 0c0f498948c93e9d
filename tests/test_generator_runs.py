"""The generator against the simulated GPU: runs fill buckets, and the machine always ends off."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avatargen.events import EventHub, Subscription
from avatargen.generator import AvatarGenerator, NothingToDo, NotRunning, RunActive
from avatargen.gpu import make_provider
from avatargen.imaging import placeholder_webp
from avatargen.simulator.runner import SimulatedGpu
from avatargen.storage.files.folder_bucket import folder_buckets
from avatargen.storage.files.ledger import CostLedger, FileLedger
from avatargen.storage.files.lock import GeneratorLock
from avatargen.storage.framing import unique_copy
from tests.support import FAST, fast_settings, running_generator, wait_for_event, wait_until


@pytest.fixture(autouse=True, params=["paperspace", "runpod"])
def simulated_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every generator test runs against the simulated GPU speaking each provider's API."""
    monkeypatch.setitem(FAST["gpu"]["simulated"], "api", request.param)
    return request.param


async def states_until_idle(subscription: Subscription) -> list[str]:
    seen: list[str] = []

    def record(data: dict) -> bool:
        if not seen or seen[-1] != data["state"]:
            seen.append(data["state"])
        return data["state"] == "idle"

    await wait_for_event(subscription, "state", record)
    return seen


async def run_to_end(generator: AvatarGenerator, buckets: list[str] | None = None) -> tuple[dict, list[str]]:
    with generator.events.subscribe() as subscription:
        generator.refill(buckets)
        states = await states_until_idle(subscription)
    assert generator.last_run is not None
    return generator.last_run.to_dict(), states


async def test_one_run_fills_both_buckets_to_max_and_ends_with_machine_off(tmp_path: Path, backend: str) -> None:
    settings = fast_settings(tmp_path, buckets__fallback__max=5)  # odd: the last request asks for 1 image
    async with running_generator(settings) as (generator, gpu):
        await generator.buckets["unique"].publish(placeholder_webp(64), {"prompt": "already there"})
        run, states = await run_to_end(generator)
        assert states == ["booting", "generating", "shutting_down", "idle"]
        assert run["outcome"] == "completed" and run["error"] is None
        assert run["targets"] == {"unique": 3, "fallback": 5}
        assert (run["done"], run["failed"], run["total"]) == (8, 0, 8)
        assert generator.buckets["unique"].count() == 4 and generator.buckets["fallback"].count() == 5
        assert gpu.machine.state == "off"
        assert run["billed_seconds"] > 0.3  # at least the boot delay
        unique = generator.buckets["unique"]
        for record in await unique.newest(3):  # framed in the imaging process, exactly as a visitor's claim would
            framed = (settings.buckets.unique.dir / ".framed" / f"{record.id}.webp").read_bytes()
            assert framed == unique_copy(settings)(await unique.read(record.id))
        newest = (await generator.buckets["fallback"].newest(1))[0]
        assert newest.metadata["prompt"].startswith(("A ", "An ")) and " of cjs" in newest.metadata["prompt"]
        assert newest.metadata["backend"] == backend and newest.metadata["provider"] == "simulated"
        assert isinstance(newest.metadata["seed"], int)
        status = generator.status()
        assert status["state"] == "idle" and status["last_run"]["id"] == run["id"]
        assert status["cost"]["billed_seconds_today"] == pytest.approx(run["billed_seconds"], abs=0.2)


async def test_refill_named_bucket_only_and_409_while_active(tmp_path: Path) -> None:
    async with running_generator(fast_settings(tmp_path)) as (generator, gpu):
        with generator.events.subscribe() as subscription:
            generator.refill(["unique"])
            with pytest.raises(RunActive):
                generator.refill()
            await states_until_idle(subscription)
        assert generator.buckets["unique"].count() == 4 and generator.buckets["fallback"].count() == 0
        with pytest.raises(NotRunning):
            generator.abort()
        with pytest.raises(NothingToDo, match="unique already at max"):
            generator.refill(["unique"])  # a machine would boot for nothing
        assert generator.last_run is not None
        assert gpu.machine.billed_seconds == pytest.approx(generator.last_run.billed_seconds(), abs=0.3)


@pytest.mark.parametrize("when", ["booting", "generating"])
async def test_abort_stops_the_machine_and_keeps_images(tmp_path: Path, when: str, backend: str) -> None:
    settings = fast_settings(tmp_path, buckets__fallback__max=200, gpu__simulated__step_time="5ms")
    async with running_generator(settings) as (generator, gpu):
        with generator.events.subscribe() as subscription:
            generator.refill()
            if when == "booting":
                await wait_for_event(subscription, "state", lambda d: d.get("machine_state") == "starting")
            else:
                await wait_for_event(subscription, "image", lambda d: True)
            assert generator.abort().state == when
            await states_until_idle(subscription)
        run = generator.last_run
        assert run is not None and run.outcome == "aborted" and run.error == "aborted by the owner"
        assert gpu.machine.state == "off"
        stored = generator.buckets["unique"].count() + generator.buckets["fallback"].count()
        assert stored == run.done and (stored > 0) == (when == "generating")


async def test_abort_while_shutting_down_changes_nothing(tmp_path: Path) -> None:
    async with running_generator(fast_settings(tmp_path, gpu__simulated__stop_delay="500ms")) as (generator, gpu):
        with generator.events.subscribe() as subscription:
            generator.refill(["unique"])
            await wait_for_event(subscription, "state", lambda d: d["state"] == "shutting_down")
            assert generator.abort().state == "shutting_down"
            await states_until_idle(subscription)
        assert generator.last_run is not None and generator.last_run.outcome == "completed"
        assert gpu.machine.state == "off"


async def test_boot_timeout_fails_and_stops(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, gpu__ready_timeout="1s", gpu__simulated__faults=["never_ready"])
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator)
        assert run["outcome"] == "failed" and "ready" in run["error"]
        assert run["done"] == 0 and gpu.machine.state == "off"


async def test_a_run_past_max_run_duration_is_ended_and_stops(tmp_path: Path) -> None:
    # 252 jobs of 10 steps x 20 ms: a minute of sampling, far past the limit on any machine; the limit leaves
    # a loaded machine seconds to boot and store the first images, which the run keeps.
    settings = fast_settings(tmp_path, generator__max_run_duration="5s", buckets__fallback__max=500,
                             gpu__simulated__step_time="20ms")
    async with running_generator(settings) as (generator, gpu):
        with generator.events.subscribe() as subscription:
            generator.refill()
            await wait_for_event(subscription, "image", lambda d: True)  # generating when the limit strikes
            await states_until_idle(subscription)
        run = generator.last_run
        assert run is not None and run.outcome == "failed"
        assert run.error == "the run exceeded max_run_duration (5s)"
        stored = generator.buckets["unique"].count() + generator.buckets["fallback"].count()
        assert 0 < run.done == stored < 504 and gpu.machine.state == "off"


async def test_failing_start_event_fails_fast_and_stops(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, gpu__ready_timeout="10m", gpu__simulated__faults=["start_error"])
    async with running_generator(settings) as (generator, gpu):
        started = time.monotonic()
        run, _ = await run_to_end(generator)
        assert run["outcome"] == "failed"
        assert "capacity" in run["error"] or "not enough free GPUs" in run["error"]  # Paperspace's words, RunPod's
        assert time.monotonic() - started < 60  # not the 10-minute ready_timeout
        assert gpu.machine.state == "off"


async def test_sd_errors_end_the_run_after_consecutive_failures(tmp_path: Path, backend: str) -> None:
    settings = fast_settings(tmp_path, generator__max_consecutive_failures=3, gpu__simulated__faults=["sd_500"])
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator)
        assert run["outcome"] == "failed"
        assert "3 image requests failed in a row" in run["error"] and "out of memory" in run["error"].lower()
        assert run["done"] == 0 and run["failed"] >= 2 and gpu.machine.state == "off"


async def test_a_run_that_stored_nothing_is_failed_not_completed(tmp_path: Path, backend: str) -> None:
    settings = fast_settings(tmp_path, generator__max_consecutive_failures=10, generator__image_retries=0,
                             gpu__simulated__faults=["sd_500"])
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator, ["unique"])  # 2 requests of 2: fewer failures than the limit
        assert run["outcome"] == "failed" and run["error"].startswith("no image could be made; last error:")
        assert (run["done"], run["failed"]) == (0, 4) and gpu.machine.state == "off"


@pytest.mark.parametrize("fault", ["sd_invalid_image", "sd_garbage"])
async def test_bad_sd_answers_fail_the_run_and_store_nothing(tmp_path: Path, fault: str, backend: str) -> None:
    settings = fast_settings(tmp_path, generator__max_consecutive_failures=2, gpu__simulated__faults=[fault])
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator)
        assert run["outcome"] == "failed" and run["done"] == 0
        assert gpu.machine.state == "off"
        for name, bucket in settings.buckets.items():
            assert generator.buckets[name].count() == 0
            assert not list(bucket.dir.glob("*.webp"))


async def test_an_exception_in_our_own_code_still_stops_the_machine(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    async with running_generator(settings) as (generator, gpu):
        work = settings.buckets.unique.dir / ".tmp"
        work.rmdir()
        work.write_text("not a folder")  # publishing will hit NotADirectoryError
        run, _ = await run_to_end(generator, ["unique"])
        assert run["outcome"] == "failed" and "Not a directory" in run["error"]
        assert gpu.machine.state == "off"


async def test_a_failing_stop_is_retried_until_confirmed(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, gpu__simulated__faults=["stop_500"])
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator, ["unique"])
        assert run["outcome"] == "completed"
        assert gpu.machine.state == "off"


async def test_external_stop_mid_run_fails_the_run_and_machine_ends_off(tmp_path: Path, backend: str) -> None:
    settings = fast_settings(tmp_path, buckets__fallback__max=40, generator__max_consecutive_failures=2,
                             gpu__simulated__faults=["external_stop"])
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator)
        assert run["outcome"] == "failed"
        assert gpu.machine.state == "off"


async def test_missing_checkpoint_fails_before_any_image(tmp_path: Path, backend: str) -> None:
    settings = fast_settings(tmp_path, sd__checkpoint="a-stranger.safetensors")
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator)
        assert run["outcome"] == "failed" and "a-stranger.safetensors" in run["error"]
        assert run["done"] == 0 and gpu.machine.state == "off"


@pytest.mark.parametrize("webui", ["automatic1111", "forge"])
async def test_the_checkpoint_by_its_file_name_fills_the_buckets_with_the_owners_model(tmp_path: Path,
                                                                                       webui: str) -> None:
    settings = fast_settings(tmp_path, sd__checkpoint="cjs-dreambooth.safetensors", buckets__fallback__max=3,
                             buckets__unique__max=0, gpu__simulated__webui=webui)
    async with running_generator(settings) as (generator, gpu):
        run, _ = await run_to_end(generator)
        assert (run["outcome"], run["done"]) == ("completed", 3)
        assert gpu.machine.state == "off"
    models = {json.loads(sidecar.read_text())["model"] for sidecar in (tmp_path / "data" / "fallback").glob("*.json")}
    assert models == {"cjs-dreambooth"}  # what the web UI says it drew with


async def test_machine_running_at_start_up_is_stopped(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)

    async def start_machine(gpu: SimulatedGpu) -> None:
        gpu.machine.start()  # a crash left it running
        await gpu.machine.wait_for("ready")

    async with running_generator(settings, before_start=start_machine) as (generator, gpu):
        assert generator.state == "shutting_down"  # no run may start before the orphan is off
        with pytest.raises(RunActive):
            generator.refill()
        await generator.wait_idle()
        assert generator.state == "idle" and gpu.machine.state == "off"


async def test_automatic_check_fills_only_due_buckets(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, buckets__unique__min=2, generator__check_every="1h")
    async with running_generator(settings) as (generator, _gpu):
        await wait_until(lambda: generator.last_run is not None)
        assert generator.last_run is not None and generator.last_run.trigger == "auto"
        assert generator.last_run.outcome == "completed"
        assert generator.buckets["unique"].count() == 4 and generator.buckets["fallback"].count() == 0
        assert generator.auto_check() is None  # nothing due any more


async def test_failed_automatic_run_doubles_the_wait(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, buckets__unique__min=2, generator__check_every="1h",
                             generator__max_consecutive_failures=1, gpu__simulated__faults=["sd_500"])
    async with running_generator(settings) as (generator, _gpu):
        await wait_until(lambda: generator.last_run is not None)
        assert generator.last_run is not None and generator.last_run.outcome == "failed"
        assert generator.next_check_at is not None
        assert generator.next_check_at - time.time() == pytest.approx(7200, abs=60)


async def test_daily_budget_stops_automatic_runs(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, buckets__unique__min=2, gpu__daily_budget=0.0)
    async with running_generator(settings) as (generator, gpu):
        await wait_until(lambda: generator.paused_reason is not None)
        assert "daily budget reached" in (generator.status()["paused_reason"] or "")
        assert generator.run is None and gpu.machine.billed_seconds == 0


async def test_cost_ledger_survives_restart(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    async with running_generator(settings) as (generator, _gpu):
        run, _ = await run_to_end(generator, ["unique"])
    ledger = CostLedger(settings.server.data_dir / "ledger.sqlite3")
    spend = ledger.spend()
    assert spend.billed_seconds_today == pytest.approx(run["billed_seconds"], abs=0.2)
    assert spend.today == pytest.approx(spend.billed_seconds_today)  # hourly_cost 3600: 1 per second
    ledger.close_db()


def test_only_one_generator_per_data_directory(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from avatargen.storage.files.lock import GeneratorLock;"
         f"lock = GeneratorLock(Path({str(tmp_path)!r})); print(lock.acquire(), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        lock = GeneratorLock(tmp_path)
        assert lock.acquire() is False
        assert lock.holder() == str(holder.pid)
    finally:
        holder.communicate("")
    assert GeneratorLock(tmp_path).acquire() is True  # released when its holder exits


@pytest.mark.parametrize("ends", ["killed", "released"])
def test_a_lock_taken_from_a_holder_that_died_names_it(tmp_path: Path, ends: str) -> None:
    """The process that takes the lock over from a dead holder says so (the owner is told the generator
    moved), whoever it is; after a clean release the next holder is not taking over from anyone."""
    release = "lock.release(); " if ends == "released" else ""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from avatargen.storage.files.lock import GeneratorLock;"
         f"lock = GeneratorLock(Path({str(tmp_path)!r})); print(lock.acquire(), flush=True); sys.stdin.readline();"
         f"{release}print('done', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "True"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "done"
        holder.kill()  # killed while holding it, or after letting go
        holder.wait(timeout=30)
    finally:
        holder.kill()
    lock = GeneratorLock(tmp_path)
    assert lock.acquire() is True
    assert lock.dead_holder == (str(holder.pid) if ends == "killed" else None)
    lock.release()
    again = GeneratorLock(tmp_path)
    assert again.acquire() is True and again.dead_holder is None  # this process let go cleanly


async def test_always_on_machine_is_used_as_it_is_never_started_or_stopped(tmp_path: Path, backend: str) -> None:
    base = fast_settings(tmp_path)
    async with SimulatedGpu(base.gpu.simulated, backend=backend) as gpu:
        gpu.machine.start()  # the owner's own machine, up before avatargen starts
        await gpu.machine.wait_for("ready")
        settings = fast_settings(tmp_path, gpu__provider="always_on", sd__url=gpu.sd_url)
        buckets = folder_buckets(settings)
        ledger = await FileLedger.open(settings.server.data_dir / "ledger.sqlite3")
        generator = AvatarGenerator(settings, buckets, make_provider(settings), ledger, EventHub())
        await generator.start()
        try:
            run, states = await run_to_end(generator, ["unique"])
            assert generator.status()["gpu"] == {"provider": "always_on", "machine_state": "ready", "notes": []}
            assert generator.status()["cost"]["today"] == 0
        finally:
            await generator.close()
            await ledger.aclose()
        assert states == ["booting", "generating", "shutting_down", "idle"]
        assert run["outcome"] == "completed" and run["done"] == 4
        assert run["billed_seconds"] == 0 and run["cost"] == 0
        assert gpu.machine.state == "ready"  # left on: it is not ours to stop
