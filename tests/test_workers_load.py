"""`server.workers = 2` under the owner's load, as a real process: the owner's actions get through however many
panels hold an event stream open, the log stays free of tracebacks, and the prompt samples follow a PUT
whichever worker answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from avatargen.testing import Service
from tests.test_workers import TOKEN, server

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# More streams than the forwarder's pool of 100 connections held, on each of the two workers (a new connection
# lands on either worker at random: about 175 each, and fewer than 101 on one of them has odds below 1e-10).
STREAMS = 350


@contextlib.asynccontextmanager
async def event_streams(service: Service, count: int) -> AsyncIterator[None]:
    """`count` panels' event streams, each on a connection of its own, open (their first bytes read) while the
    block runs."""
    connections: list[asyncio.StreamWriter] = []

    async def open_one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        connections.append(writer)
        writer.write(f"GET /admin/api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        await reader.readuntil(b": connected")  # the stream has begun (after chunk framing)

    try:
        async with asyncio.timeout(120):
            for start in range(0, count, 50):  # a few at a time: the backlog of a loaded machine's listener
                await asyncio.gather(*(open_one() for _ in range(start, min(count, start + 50))))
        yield
    finally:
        for writer in connections:
            writer.close()


@pytest.mark.timeout(300)  # hundreds of connections to a two-worker server, on a busy machine
async def test_the_owners_actions_get_through_hundreds_of_open_event_streams(tmp_path: Path) -> None:
    with server(tmp_path) as service:
        async with event_streams(service, STREAMS):
            async def abort() -> httpx.Response:
                async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=60) as owner:
                    return await owner.post("/admin/api/abort")  # a new connection: either worker

            async with asyncio.timeout(30):  # one forward waited 10 s for a pooled connection, then said 503
                answers = await asyncio.gather(*(abort() for _ in range(16)))
            assert Counter(answer.status_code for answer in answers) == {409: 16}, [a.text for a in answers]
            async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=60) as owner:
                refill = await owner.post("/admin/api/refill", json={"buckets": ["fallback"]})
                assert refill.status_code == 202, refill.text
                assert (await owner.post("/admin/api/abort")).status_code == 202
    log = service.log_text()
    assert "Traceback" not in log and "InvalidStateError" not in log, log[-3000:]


@pytest.mark.timeout(300)
async def test_panels_closing_during_a_run_leave_no_traceback(tmp_path: Path) -> None:
    """Panels come and go while a run sends events: the forwarded streams' reads are cancelled as data
    arrives, which made the forwarding worker log "InvalidStateError" from Future.set_result (dozens of
    times in four rounds)."""
    fast = {"buckets.fallback.max": 400, "gpu.simulated.boot_delay": "100ms", "gpu.simulated.sd_boot_delay": "50ms",
            "gpu.simulated.step_time": "1ms"}
    with server(tmp_path, None, **fast) as service:
        async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=60) as owner:
            assert (await owner.post("/admin/api/refill", json={"buckets": ["fallback"]})).status_code == 202
            for _ in range(4):
                async with event_streams(service, 150):
                    await asyncio.sleep(0.5)  # events flow to every panel
            assert (await owner.get("/admin/api/status")).json()["state"] != "idle", "the run ended too soon"
    log = service.log_text()
    assert "InvalidStateError" not in log and "Traceback" not in log, log[-3000:]


async def test_prompt_samples_follow_a_put_from_either_worker(tmp_path: Path) -> None:
    with server(tmp_path) as service:
        async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=60) as owner:
            saved = await owner.put("/admin/api/prompts", json={"subject": "zebrafinch"})
            assert saved.status_code == 200 and saved.json()["subject"] == "zebrafinch"

        async def sample() -> list[str]:
            async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=60) as owner:  # either worker
                answer = await owner.get("/admin/api/prompts/sample", params={"n": 3})
                assert answer.status_code == 200, answer.text
                return answer.json()["prompts"]

        samples = [prompt for prompts in await asyncio.gather(*(sample() for _ in range(40))) for prompt in prompts]
        assert len(samples) == 120 and all("zebrafinch" in prompt for prompt in samples), samples
