"""PaperspaceClient against the simulated Paperspace API over loopback: retries, errors, secrecy."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatargen.config import Secret
from avatargen.gpu.paperspace import PaperspaceClient, PaperspaceError
from avatargen.retry import backoff_delay, parse_retry_after
from avatargen.simulator import LoopbackServer, SimulatedGpu
from tests.simhelpers import fixed_answers, sim_settings


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedGpu]:
    async with SimulatedGpu(sim_settings()) as gpu:
        yield gpu


def client_for(sim: SimulatedGpu, *, max_retries: int = 6, backoff: float = 0.5) -> PaperspaceClient:
    return PaperspaceClient(sim.api_url, Secret(sim.api_key), max_retries=max_retries, backoff=backoff)


async def test_reads_starts_follows_and_stops_the_machine(sim: SimulatedGpu) -> None:
    async with client_for(sim) as client:
        assert (await client.get_machine(sim.machine_id))["state"] == "off"
        machine, event, since = await client.start(sim.machine_id)
        assert (machine["state"], event["name"]) == ("starting", "start")
        assert since <= time.time()
        await sim.machine.wait_for("ready")
        assert (await client.get_event(event["id"]))["state"] == "done"
        machine, event = await client.stop(sim.machine_id)
        assert (machine["state"], event["name"]) == ("stopping", "stop")


async def test_a_wrong_key_fails_at_once_without_showing_the_key(sim: SimulatedGpu) -> None:
    wrong = Secret("not-the-key-4711")
    started = time.monotonic()
    async with PaperspaceClient(sim.api_url, wrong, backoff=5) as client:
        with pytest.raises(PaperspaceError) as failure:
            await client.get_machine(sim.machine_id)
        shown = repr(client)
    assert time.monotonic() - started < 1  # no retry (the first backoff would be 2.5 s or more)
    assert (failure.value.status, failure.value.code) == (401, "UNAUTHORIZED")
    assert not failure.value.retryable
    for text in (str(failure.value), repr(failure.value), shown):
        assert "not-the-key-4711" not in text


async def test_an_unknown_machine_is_not_found_at_once(sim: SimulatedGpu) -> None:
    async with client_for(sim, backoff=5) as client:
        with pytest.raises(PaperspaceError) as failure:
            await client.get_machine("psnope")
    assert (failure.value.status, failure.value.code) == (404, "NOT_FOUND")
    assert str(failure.value) == "Paperspace API error 404 NOT_FOUND: Machine psnope not found"


async def test_a_conflict_is_not_retried(sim: SimulatedGpu) -> None:
    async with client_for(sim, backoff=5) as client:
        await client.start(sim.machine_id)
        await client.stop(sim.machine_id)
        with pytest.raises(PaperspaceError) as failure:
            await client.start(sim.machine_id)
    assert (failure.value.status, failure.value.code) == (409, "CONFLICT")
    assert "stopping" in failure.value.message


async def test_rate_limits_are_retried_after_the_time_retry_after_asks(sim: SimulatedGpu) -> None:
    sim.set_faults(["api_429"])
    started = time.monotonic()
    async with client_for(sim, backoff=0.001) as client:
        assert (await client.get_machine(sim.machine_id))["state"] == "off"
    assert time.monotonic() - started >= 1.0  # Retry-After: 1, not the 1 ms backoff
    assert sim.faults.hits("api_429") == 2


async def test_server_errors_are_retried_then_reported(sim: SimulatedGpu, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "avatargen.gpu.paperspace")
    sim.set_faults(["api_500"])
    async with client_for(sim, backoff=0.001) as client:
        assert (await client.get_machine(sim.machine_id))["id"] == sim.machine_id
    assert "500 INTERNAL_SERVER_ERROR" in caplog.text and "retry 1/6" in caplog.text
    assert sim.api_key not in caplog.text
    sim.set_faults(["api_500"])
    async with client_for(sim, max_retries=0) as client:
        with pytest.raises(PaperspaceError) as failure:
            await client.get_machine(sim.machine_id)
    assert (failure.value.status, failure.value.code) == (500, "INTERNAL_SERVER_ERROR")
    assert failure.value.retryable


class _FirstRetry(logging.Handler):
    """Sets an event when the client logs its first retry, i.e. once an attempt has failed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


async def test_refused_connections_are_retried_until_the_api_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    retries = _FirstRetry()
    logger = logging.getLogger("avatargen.gpu.paperspace")
    logger.addHandler(retries)
    try:
        async with PaperspaceClient(f"http://127.0.0.1:{port}/v1", Secret("k"), backoff=0.2) as client:
            reading = asyncio.create_task(client.get_machine("pssim42"))
            await retries.seen.wait()
            async with SimulatedGpu(sim_settings(), api_port=port):
                with pytest.raises(PaperspaceError) as failure:  # it reached the API: the key is wrong
                    await reading
    finally:
        logger.removeHandler(retries)
    assert failure.value.status == 401
    assert "UNREACHABLE" in retries.messages[0] and "retry 1/6" in retries.messages[0]


async def test_an_unreachable_api_is_reported_after_the_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    async with PaperspaceClient(url, Secret("k"), max_retries=2, backoff=0.01) as client:
        with pytest.raises(PaperspaceError) as failure:
            await client.stop("ps1")
    assert (failure.value.status, failure.value.code) == (None, "UNREACHABLE")
    assert f"cannot reach {url}" in str(failure.value)


async def test_answers_that_are_not_the_api_shape_are_errors_with_a_quote() -> None:
    answers = {
        "/v1/machines/ps1": Response("<html><h1>502 Bad Gateway</h1></html>", status_code=502,
                                     media_type="text/html"),
        "/v1/machines/ps1/start": Response("[]", media_type="application/json"),
        "/v1/machines/ps1/stop": Response('{"data": {}}', media_type="application/json"),
    }
    async with fixed_answers(answers) as url, PaperspaceClient(url + "/v1", Secret("k"), max_retries=1,
                                                              backoff=0.01) as client:
        with pytest.raises(PaperspaceError) as gateway:
            await client.get_machine("ps1")
        with pytest.raises(PaperspaceError, match="not a JSON object"):
            await client.start("ps1")
        with pytest.raises(PaperspaceError, match="BAD_RESPONSE"):
            await client.stop("ps1")
    assert (gateway.value.status, gateway.value.code) == (502, "HTTP_502")
    assert "502 Bad Gateway" in gateway.value.message


async def test_a_start_counts_from_the_attempt_accepted_or_from_one_whose_outcome_is_unknown() -> None:
    """What the ledger bills from: a refused attempt (429, 500) started nothing; one the client gave up
    waiting for may have started the machine, so the time counts from it (in the owner's favour)."""
    sent: list[float] = []
    answer = JSONResponse({"data": {"id": "ps1", "state": "starting"}, "event": {"id": "ev1", "state": "pending"}})

    async def start(request: Request) -> Response:
        sent.append(time.time())
        if len(sent) == 1:
            return JSONResponse({"message": "slow down"}, status_code=429, headers={"Retry-After": "0"})
        if len(sent) == 2:
            return JSONResponse({"message": "try again"}, status_code=500)
        if len(sent) == 3 and request.path_params["machine"] == "ps2":
            await asyncio.sleep(5)  # past the client's timeout: did it start? The client cannot know
        return answer

    app = Starlette(routes=[Route("/v1/machines/{machine}/start", start, methods=["PATCH"])])
    async with LoopbackServer(app) as server, PaperspaceClient(server.url + "/v1", Secret("k"), backoff=0.01,
                                                               timeout=0.5) as client:
        *_, since = await client.start("ps1")
        assert len(sent) == 3 and since == pytest.approx(sent[2], abs=0.05) and since > sent[1]
        sent.clear()
        *_, since = await client.start("ps2")
        assert len(sent) == 4 and since == pytest.approx(sent[2], abs=0.05) and since < sent[3]


def test_retry_after_reads_seconds_or_a_date_and_is_capped() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("2") == 2.0
    assert 28 <= (parse_retry_after(soon) or 0) <= 30
    assert parse_retry_after("86400") == 60.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("whenever") is None
    assert parse_retry_after(None) is None


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 60.0)]:
        delays = [backoff_delay(attempt, base=0.5) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1
