"""The cost ledger as the generator uses it: a locked, slow or lost ledger never holds a run or the loop up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from avatargen.imaging import placeholder_webp
from avatargen.storage.files.bucket import open_buckets
from avatargen.storage.files.ledger import CostLedger
from benchmarks.storage_faults import SqliteLock
from tests.support import fast_settings, running_generator, wait_until
from tests.test_generator_runs import run_to_end, states_until_idle


@contextlib.asynccontextmanager
async def heartbeat(every: float = 0.01) -> AsyncIterator[list[float]]:
    """The longest time the event loop went without running a task that asks to run every `every` s
    (a visitor's request waits as long)."""
    longest = [0.0]

    async def beat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            longest[0] = max(longest[0], now - last - every)
            last = now

    task = asyncio.create_task(beat())
    try:
        yield longest
    finally:
        task.cancel()


def billed_on_disk(path: Path) -> float:
    ledger = CostLedger(path)
    try:
        return ledger.spend().billed_seconds_today
    finally:
        ledger.close_db()


async def test_a_locked_ledger_neither_freezes_the_loop_nor_wedges_the_run(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    path = settings.server.data_dir / "ledger.sqlite3"
    async with running_generator(settings) as (generator, gpu):
        with SqliteLock(path) as lock:
            async with heartbeat() as longest:
                run, states = await run_to_end(generator, ["unique"])
                await wait_until(lambda: generator.status()["cost"]["ledger_problem"] is not None)
            assert longest[0] < 1.0, f"the event loop stalled {longest[0]:.2f} s"
            assert states == ["booting", "generating", "shutting_down", "idle"]
            assert run["outcome"] == "completed" and generator.state == "idle" and gpu.machine.state == "off"
            cost = generator.status()["cost"]
            assert "database is locked" in cost["ledger_problem"]
            assert cost["billed_seconds_today"] == pytest.approx(run["billed_seconds"], abs=0.2)  # from memory
            assert billed_on_disk(path) == 0
            lock.release()
            await wait_until(lambda: generator.status()["cost"]["ledger_problem"] is None, timeout=30)
        assert billed_on_disk(path) == pytest.approx(run["billed_seconds"], abs=0.2)
        run, _ = await run_to_end(generator, ["fallback"])  # and the next run starts as usual
        assert run["outcome"] == "completed"


async def test_closing_with_the_ledger_still_locked_ends_and_logs_the_unwritten_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = fast_settings(tmp_path)
    path = settings.server.data_dir / "ledger.sqlite3"
    with caplog.at_level(logging.ERROR, logger="avatargen"):
        async with running_generator(settings) as (generator, gpu):
            with SqliteLock(path):
                run, _ = await run_to_end(generator, ["unique"])
                closing = time.monotonic()
                await generator.close()
                assert time.monotonic() - closing < 15
        assert gpu.machine.state == "off"
    assert f"billed time of run {run['id']}" in caplog.text and "could not be written" in caplog.text


def lose(path: Path, how: str) -> None:
    """What an owner (or a clean-up script) might do to the ledger while the server runs."""
    if how == "replaced":
        fresh = path.with_name("fresh.sqlite3")
        fresh.write_bytes(b"")  # an empty file is an empty SQLite database
        fresh.replace(path)
        return
    path.unlink()
    if how == "deleted with its write-ahead log":
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["deleted", "deleted with its write-ahead log", "replaced"])
async def test_a_ledger_lost_while_running_is_written_again_and_todays_spend_survives_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    settings = fast_settings(tmp_path)
    path = settings.server.data_dir / "ledger.sqlite3"
    with caplog.at_level(logging.ERROR, logger="avatargen"):
        async with running_generator(settings) as (generator, _gpu):
            generator.billing.check_every = 0.05
            run, _ = await run_to_end(generator, ["unique"])
            await wait_until(lambda: billed_on_disk(path) > 0)
            lose(path, how)
            expected = "was replaced by another file" if how == "replaced" else "was deleted"
            await wait_until(lambda: expected in caplog.text)
            await wait_until(lambda: billed_on_disk(path) == pytest.approx(run["billed_seconds"], abs=0.2))
    async with running_generator(settings) as (generator, _gpu):
        cost = generator.status()["cost"]
        assert cost["billed_seconds_today"] == pytest.approx(run["billed_seconds"], abs=0.2)
        assert cost["ledger_problem"] is None


async def test_a_ledger_lost_while_the_server_was_down_is_reported_at_start_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = fast_settings(tmp_path)
    path = settings.server.data_dir / "ledger.sqlite3"
    async with running_generator(settings) as (generator, _gpu):
        run, _ = await run_to_end(generator, ["unique"])
    lose(path, "deleted with its write-ahead log")
    with caplog.at_level(logging.ERROR, logger="avatargen"):
        async with running_generator(settings) as (generator, _gpu):
            problem = generator.status()["cost"]["ledger_problem"]
    assert problem is not None and "found empty" in problem and run["id"] in problem
    assert "holds no billed time" in caplog.text and "restore the ledger" in caplog.text


async def test_images_made_before_metadata_named_the_provider_still_reveal_a_lost_ledger(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)  # images of earlier versions said "backend": <provider>, no "provider"
    open_buckets(settings)["unique"].images.publish(placeholder_webp(64), {"prompt": "old",
                                                                          "run_id": "20260101T000000-aa",
                                                                          "backend": "simulated"})
    async with running_generator(settings) as (generator, _gpu):
        problem = generator.status()["cost"]["ledger_problem"]
    assert problem is not None and "found empty" in problem and "20260101T000000-aa" in problem


@pytest.mark.parametrize("api", ["paperspace", "runpod"])
async def test_the_ledger_bills_from_the_start_the_provider_accepted(tmp_path: Path, api: str) -> None:
    """Start requests the provider refused (429 with `Retry-After: 1`, then 500) started nothing: the ledger
    bills what the provider bills, from the accepted start to the machine confirmed off."""
    settings = fast_settings(tmp_path, gpu__simulated__api=api)
    async with running_generator(settings) as (generator, gpu):
        # From now on, of every three API requests the first is answered 429 (`Retry-After: 1`) and the second
        # 500: the start is refused twice before it is accepted (and RunPod's look at the pod before it too).
        gpu.set_faults(["api_429", "api_500"])
        with generator.events.subscribe() as subscription:
            generator.refill(["unique"])
            await gpu.machine.wait_for("starting")
            gpu.set_faults([])  # the rest of the run as usual: only the start was refused
            await states_until_idle(subscription)
        assert generator.last_run is not None
        run = generator.last_run.to_dict()
        assert run["outcome"] == "completed" and gpu.machine.state == "off"
        ledger = generator.status()["cost"]["billed_seconds_today"]
    provider = gpu.machine.billed_seconds
    # The ledger opens when the accepted request goes out (before the provider starts the machine) and
    # closes at the poll that finds it off: it is never under the provider's bill, and over it by the
    # accepted request's and that poll's round trips and one poll interval (20 ms). Counting from the
    # refused attempts instead adds their waits: the 429's Retry-After (1 s) and the backoff after the 500
    # (0.5 to 1 s), 1.5 s at least. The bound lies between the two.
    assert run["billed_seconds"] == pytest.approx(ledger, abs=1e-3)
    assert provider - 0.01 <= ledger < provider + 1.4, (ledger, provider)
