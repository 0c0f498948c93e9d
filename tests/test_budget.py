"""The daily budget within a run: an automatic run stops generating and shuts the machine down before the
day's spend would go over the budget; no automatic run starts when what is left cannot pay for one."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatargen.generator.budget import reserve
from tests.support import fast_settings, running_generator, wait_for_event
from tests.test_billing import billed_on_disk
from tests.test_generator_runs import states_until_idle

BUDGET = 8.0  # at 3600 an hour (the test config), seconds of machine time


async def test_an_automatic_run_stops_before_the_days_spend_would_cross_the_budget(tmp_path: Path) -> None:
    # 120 fallbacks at 10 steps of 20 ms a batch of 2: some 12 s of the SD server's time alone, well over the
    # budget; the bounds on a boot and a stop (before any was seen) leave a first run room to start.
    settings = fast_settings(tmp_path, gpu__daily_budget=BUDGET, gpu__ready_timeout="3s", gpu__stop_timeout="2s",
                             buckets__fallback__min=120, buckets__fallback__max=120,
                             gpu__simulated__step_time="20ms")
    async with running_generator(settings) as (generator, gpu):
        runs = []
        for _ in range(5):  # until the budget allows no more: each run stops short, the next may still fit
            with generator.events.subscribe() as subscription:
                if generator.auto_check() is None:
                    break
                await states_until_idle(subscription)
            assert generator.last_run is not None
            runs.append(generator.last_run.to_dict())
            assert generator.billing.spend().today <= BUDGET
        status = generator.status()
        assert gpu.machine.state == "off"
    first = runs[0]
    assert first["outcome"] == "aborted" and first["error"].startswith("daily budget reached"), first
    assert first["done"] < 120
    assert status["paused_by"] == "daily_budget" and status["paused_reason"].startswith("daily budget reached")
    assert status["cost"]["today"] <= BUDGET
    # 3600 an hour: the billed seconds are the spend
    assert billed_on_disk(settings.server.data_dir / "ledger.sqlite3") == pytest.approx(status["cost"]["today"],
                                                                                         abs=1e-3)
    assert gpu.machine.billed_seconds <= BUDGET  # what the provider bills, too


async def test_no_automatic_run_starts_when_what_is_left_cannot_pay_for_one(tmp_path: Path) -> None:
    # Left: 4 (of 8, none spent yet); a run needs at most a boot (3 s) and a stop (2 s) before any was seen.
    settings = fast_settings(tmp_path, gpu__daily_budget=4.0, gpu__ready_timeout="3s", gpu__stop_timeout="2s",
                             buckets__fallback__min=1)
    async with running_generator(settings) as (generator, gpu):
        assert generator.auto_check() is None
        reason = generator.status()["paused_reason"]
        assert reason is not None and reason.startswith("daily budget reached: 0.00 of 4.00 spent today, and what")
        assert gpu.machine.billed_seconds == 0


def test_the_reserve_keeps_the_stops_bound_however_fast_the_last_stops_were(tmp_path: Path) -> None:
    gpu = fast_settings(tmp_path, gpu__stop_timeout="8s", gpu__poll_every="100ms").gpu
    assert reserve(gpu, []) == pytest.approx(8.1)
    assert reserve(gpu, [0.2, 0.3]) == pytest.approx(8.1)  # fast stops seen do not shrink it below the bound
    assert reserve(gpu, [0.2, 5.0]) == pytest.approx(10.1)  # a stop seen slower than half the bound: twice it
    # A process whose death leaves the machine to another one: the time it takes the generator over, too.
    assert reserve(gpu, [0.3], takeover=10 * 4 / 3) == pytest.approx(8.1 + 10 * 4 / 3)


async def test_a_stop_failing_three_times_still_fits_in_the_budget(tmp_path: Path) -> None:
    # The soak's files setup: five quick stops seen, then a cut run's stop meets the cloud API failing it three
    # times (stop_500), retried with backoff: at least 1.75 s of waiting, where the reserve kept from the stops
    # seen was 0.6 s (the day's spend reached 1.046 of the budget). Since the reserve is the stop's bound
    # (stop_timeout: 8 s, room for the 3.5 s of backoff at most and the calls on a loaded machine).
    budget = 12.0
    settings = fast_settings(tmp_path, gpu__daily_budget=budget, gpu__ready_timeout="3s", gpu__stop_timeout="8s",
                             buckets__unique__min=0, buckets__unique__max=2,
                             buckets__fallback__min=300, buckets__fallback__max=300,
                             gpu__simulated__step_time="20ms")
    async with running_generator(settings) as (generator, gpu):
        with generator.events.subscribe() as subscription:  # a short manual run: a quick boot and stop seen
            generator.refill(["unique"])
            await wait_for_event(subscription, "state", lambda data: data["state"] == "idle", timeout=60)
        gpu.set_faults(["stop_500"])
        with generator.events.subscribe() as subscription:
            run = generator.auto_check()
            assert run is not None
            await wait_for_event(subscription, "state", lambda data: data["state"] == "idle", timeout=60)
        assert gpu.machine.state == "off"
        last = generator.last_run
        assert last is not None and last.outcome == "aborted" and (last.error or "").startswith("daily budget")
        assert gpu.faults.hits("stop_500") >= 3  # the cut run's stop met the failures
        assert generator.billing.spend().today <= budget
        assert gpu.machine.billed_seconds <= budget
