"""The generator on a RunPod Serverless endpoint (the simulated one, speaking RunPod's queue API and
worker-comfyui's shapes): runs read as a queue, worker time is billed, every job is taken back, and
`check-config` says which workers are supported."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from avatargen.config import Settings
from avatargen.events import Subscription
from avatargen.generator import AvatarGenerator
from avatargen.gpu.base import Serverless
from avatargen.gpu.serverless_api import JOURNAL
from avatargen.journal import JobJournal
from avatargen.simulator import SimulatedGpu
from avatargen.simulator.serverless import SimulatedServerless
from avatargen.storage.files.ledger import FileLedger
from avatargen.storage.spend import Entry
from tests.simhelpers import sim_settings
from tests.support import fast_settings, running_generator, wait_for_event, wait_until, write_config
from tests.test_generator_providers import KEY_ENV, check_config
from tests.tui_support import panel, running_server, wait_for
from tui.widgets.spend import SpendSummary


def serverless_settings(tmp_path: Path, **overrides: object) -> Settings:
    # The estimate's idle timeout is the simulated endpoint's (its stop_delay), as an owner sets the endpoint's.
    return fast_settings(tmp_path, gpu__simulated__api="runpod_serverless",
                         gpu__runpod_serverless__idle_timeout="150ms", **overrides)


def endpoint_of(gpu: SimulatedGpu) -> SimulatedServerless:
    assert gpu.endpoint is not None
    return gpu.endpoint


async def run_to_end(generator: AvatarGenerator, subscription: Subscription) -> tuple[dict, list[str]]:
    """The run's record once the generator is idle again, and every machine state it went through."""
    phases: list[str] = []

    def record(data: dict) -> bool:
        if data.get("machine_state") and (not phases or phases[-1] != data["machine_state"]):
            phases.append(data["machine_state"])
        return data["state"] == "idle" and bool(data["last_run"])

    await wait_for_event(subscription, "state", record, timeout=60)
    assert generator.last_run is not None
    return generator.last_run.to_dict(), phases


def journal(settings: Settings) -> dict:
    return json.loads((settings.server.data_dir / JOURNAL).read_text())["jobs"]


async def test_a_run_reads_as_a_queue_and_bills_worker_time_with_at_most_max_in_flight_jobs(tmp_path: Path) -> None:
    # Jobs of 0.3 s (10 steps of 30 ms): long enough for a status poll (20 ms) to find one IN_PROGRESS.
    settings = serverless_settings(tmp_path, gpu__runpod_serverless__max_in_flight=1, generator__concurrency=3,
                                   gpu__simulated__step_time="30ms")
    async with running_generator(settings) as (generator, gpu):
        endpoint = endpoint_of(gpu)
        with generator.events.subscribe() as subscription:
            generator.refill()
            health_seen = await wait_for_event(subscription, "state", lambda data: data["state"] == "generating")
            run, phases = await run_to_end(generator, subscription)
        status = generator.status()
    assert health_seen and run["outcome"] == "completed" and run["done"] == 10
    assert "waiting for a worker" in phases and "generating" in phases and phases[-1] == "off"
    assert endpoint.peak_in_flight == 1  # three request workers, one job at a time on the endpoint
    assert len(endpoint.completed) == 5 and endpoint.cancelled == 0
    gpu_status = status["gpu"]
    assert "serverless" in gpu_status["provider"] and gpu_status["machine_state"] == "off"
    detail = gpu_status["endpoint"]
    assert set(detail["health"]) >= {"workers_idle", "workers_running", "jobs_in_queue"}
    assert "estimate" in detail["billing"] and detail["max_in_flight"] == 1
    # Billed: the workers' time, not the run's, as close to what RunPod bills as rounding each worker's time
    # up to the second allows (a second per worker either way).
    assert status["cost"]["today"] == pytest.approx(detail["worker_seconds"], abs=0.01)  # 3600 an hour: 1 a second
    await wait_until(lambda: not endpoint.workers)  # every worker stopped: the simulator's bill is final
    assert detail["worker_seconds"] == pytest.approx(endpoint.billed_seconds, abs=endpoint.workers_started + 1)
    assert journal(settings) == {}


@pytest.mark.parametrize(("fault", "says"), [
    ("sd_500", "FAILED: Job failed: node"),
    ("serverless_timeout", "TIMED_OUT after running"),
    ("comfyui_validation", "FAILED: Workflow validation failed"),
])
async def test_a_job_that_fails_for_good_ends_the_run_with_what_happened(tmp_path: Path, fault: str, says: str) -> None:
    settings = serverless_settings(tmp_path, gpu__simulated__faults=[fault], generator__max_consecutive_failures=3)
    async with running_generator(settings) as (generator, gpu):
        with generator.events.subscribe() as subscription:
            generator.refill(["unique"])
            run, _phases = await run_to_end(generator, subscription)
        sent = len(endpoint_of(gpu).jobs)
    assert run["outcome"] == "failed" and says in run["error"] and run["done"] == 0
    assert sent <= 3 + settings.generator.concurrency  # not retried for ever: the run ends at the limit


async def test_a_worker_that_never_comes_fails_the_job_at_ready_timeout_and_cancels_it(tmp_path: Path) -> None:
    settings = serverless_settings(tmp_path, gpu__simulated__faults=["never_ready"], gpu__ready_timeout="1s",
                                   generator__max_consecutive_failures=2, generator__image_retries=0)
    async with running_generator(settings) as (generator, gpu):
        with generator.events.subscribe() as subscription:
            generator.refill(["unique"])
            run, phases = await run_to_end(generator, subscription)
        endpoint = endpoint_of(gpu)
        assert all(job.status == "CANCELLED" for job in endpoint.jobs.values())
    assert run["outcome"] == "failed" and "no worker took serverless job" in run["error"]
    assert "waiting for a worker" in phases and "generating" not in phases
    assert run["cost"] == 0  # no worker ran: nothing is billed
    assert journal(settings) == {}


async def test_abort_cancels_every_job_and_purges_the_queue(tmp_path: Path) -> None:
    settings = serverless_settings(tmp_path, gpu__simulated__faults=["never_ready"], gpu__ready_timeout="10m")
    async with running_generator(settings) as (generator, gpu):
        endpoint = endpoint_of(gpu)
        with generator.events.subscribe() as subscription:
            generator.refill()
            await wait_until(lambda: len(endpoint.queued) == settings.generator.concurrency)
            generator.abort()
            run, _phases = await run_to_end(generator, subscription)
        # Each cancelled by its id, or purged with the queue when the abort came before its id did.
        assert all(job.status == "CANCELLED" for job in endpoint.jobs.values())
        assert endpoint.cancelled + endpoint.purged == len(endpoint.jobs) == settings.generator.concurrency
    assert run["outcome"] == "aborted" and journal(settings) == {}


async def test_jobs_a_killed_server_left_are_cancelled_at_the_next_start(tmp_path: Path) -> None:
    """The journal a server killed mid-run leaves behind (a job queued, a job whose id never came back)
    is acted on before any run: the job is cancelled and the queue purged. The killed run's billing ends
    where its jobs' activity did, not hours later when the server came back."""
    settings = serverless_settings(tmp_path, gpu__simulated__faults=["never_ready"])
    crashed_at = time.time() - 2 * 3600

    async def leave_orphans(gpu: SimulatedGpu) -> None:
        earlier = gpu.provider(settings.gpu, data_dir=settings.server.data_dir)  # the killed server's
        assert isinstance(earlier, Serverless)
        sd = earlier.sd_backend(settings)("")
        sending = asyncio.create_task(sd.generate("a portrait of cjs", count=1))
        # Queued, and its id written down: on a loaded machine the endpoint may have queued it before the answer
        # with its id came back, and a job without one is purged with the queue, not cancelled.
        await wait_until(lambda: len(endpoint_of(gpu).queued) == 1
                         and len(JobJournal(settings.server.data_dir / JOURNAL).job_ids) == 1)
        sending.cancel()  # the process dies: nothing is cleaned up
        await asyncio.gather(sending, return_exceptions=True)
        JobJournal(settings.server.data_dir / JOURNAL).sending("lost")  # killed while sending a second job
        await sd.aclose()
        await earlier.aclose()
        os.utime(settings.server.data_dir / JOURNAL, (crashed_at, crashed_at))  # the server was down 2 hours
        ledger = await FileLedger.open(settings.server.data_dir / "ledger.sqlite3")
        await ledger.record([Entry("killed-run", crashed_at - 60, None, 3600.0)])  # its entry, left open
        await ledger.aclose()

    async with running_generator(settings, before_start=leave_orphans) as (generator, gpu):
        assert len(journal(settings)) == 2
        await generator.wait_idle()  # the orphans are taken back before the generator goes idle
        endpoint = endpoint_of(gpu)
        assert endpoint.cancelled == 1 and all(job.status == "CANCELLED" for job in endpoint.jobs.values())
        assert journal(settings) == {} and generator.status()["gpu"]["machine_state"] == "off"
        billed = sum(day.billed_seconds for day in await generator.billing.history(2))
    assert billed == pytest.approx(60, abs=2)  # the minute before the crash, not the two hours after it


async def test_rate_limits_and_server_errors_of_the_api_are_retried(tmp_path: Path) -> None:
    settings = serverless_settings(tmp_path, gpu__simulated__faults=["api_500"])
    async with running_generator(settings) as (generator, _gpu):
        with generator.events.subscribe() as subscription:
            generator.refill(["unique"])
            run, _phases = await run_to_end(generator, subscription)
    assert run["outcome"] == "completed" and run["done"] == 4


async def test_check_config_asks_the_endpoint_and_refuses_the_web_ui_backend(tmp_path: Path) -> None:
    async with SimulatedGpu(sim_settings(api="runpod_serverless")) as sim:
        overrides = {"gpu.provider": "runpod_serverless", "gpu.runpod_serverless.api_url": sim.api_url,
                     "gpu.runpod_serverless.api_key_env": KEY_ENV, "gpu.runpod_serverless.endpoint_id": sim.machine_id,
                     "sd.backend": "comfyui", "sd.checkpoint": "cjs-dreambooth.safetensors"}
        fine = await asyncio.to_thread(check_config, write_config(tmp_path, overrides), sim.api_key)
        web_ui = await asyncio.to_thread(check_config, write_config(tmp_path, {**overrides, "sd.backend": "a1111"}),
                                         sim.api_key)
        wrong_key = await asyncio.to_thread(check_config, write_config(tmp_path, overrides), "not-the-key")
        no_model = await asyncio.to_thread(check_config, write_config(tmp_path, {**overrides, "sd.checkpoint": ""}),
                                           sim.api_key)
    assert fine.returncode == 0, fine.stderr
    assert web_ui.returncode == 2 and "sd.backend" in web_ui.stderr and "worker-comfyui" in web_ui.stderr
    assert wrong_key.returncode == 2 and "refuses the API key" in wrong_key.stderr
    assert no_model.returncode == 2 and "sd.checkpoint" in no_model.stderr and "network volume" in no_model.stderr
    assert "Traceback" not in web_ui.stderr + wrong_key.stderr + no_model.stderr


async def test_the_demo_on_the_simulated_endpoint_shows_its_workers_and_queue_in_the_panel(tmp_path: Path) -> None:
    """`avatargen serve` with gpu.simulated.api = "runpod_serverless" (the shipped web UI backend left as it
    is: the simulated endpoint is worker-comfyui), and the owner's panel on it."""
    with running_server(tmp_path, {"gpu.simulated.api": "runpod_serverless"}) as server:
        app = panel(server.url)
        async with app.run_test(size=(120, 30)) as pilot:
            spend = app.main.query_one(SpendSummary)
            await wait_for(pilot, lambda: "jobs in queue" in str(spend.render()), "the endpoint's health line")
            shown = str(spend.render())
    assert "endpoint off (simulated_serverless)" in shown and "ours 0 of max 4" in shown
    assert "cost estimated from worker time" in shown


async def test_max_run_duration_ends_a_run_of_waiting_jobs_and_takes_them_all_back(tmp_path: Path) -> None:
    settings = serverless_settings(tmp_path, gpu__simulated__faults=["never_ready"], gpu__ready_timeout="10m",
                                   generator__max_run_duration="1s")
    async with running_generator(settings) as (generator, gpu):
        with generator.events.subscribe() as subscription:
            generator.refill()
            run, _phases = await run_to_end(generator, subscription)
        endpoint = endpoint_of(gpu)
        assert endpoint.jobs and all(job.status == "CANCELLED" for job in endpoint.jobs.values())
    assert run["outcome"] == "failed" and "max_run_duration" in run["error"] and journal(settings) == {}


async def test_the_daily_budget_counts_worker_time_and_stops_automatic_runs(tmp_path: Path) -> None:
    # 3600 an hour is 1 a second: one run's worker seconds are more than a budget of 0.5.
    settings = serverless_settings(tmp_path, gpu__daily_budget=0.5, buckets__unique__min=1)
    async with running_generator(settings) as (generator, _gpu):
        await wait_until(lambda: generator.paused_reason is not None)  # too little to pay for an automatic run
        with generator.events.subscribe() as subscription:
            generator.refill()  # the owner's own run: the budget does not cut it
            await run_to_end(generator, subscription)
        assert generator.last_run is not None and generator.last_run.outcome == "completed"
        spent = generator.status()["cost"]["today"]
        for bucket in generator.buckets.values():  # below min again
            for record in await bucket.newest(10):
                await bucket.delete(record.id)
        assert generator.auto_check() is None
        paused = generator.status()["paused_reason"]
        assert isinstance(generator.provider, Serverless)
        assert spent == pytest.approx(generator.provider.worker_seconds(), abs=0.01) and spent >= 1
        assert paused is not None and "daily budget reached" in paused
