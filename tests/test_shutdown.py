"""SIGTERM while the owner's panel is connected: the event stream ends at once and the server exits cleanly.

An event stream never ends by itself, and uvicorn waits for open connections before it shuts the app
down; the stream must notice the shutdown, or SIGTERM waits out uvicorn's graceful timeout and ends in
a cancelled task and a traceback. `avatargen serve` runs as a real process, as the owner runs it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from avatargen.api import AdminClient, StateChange
from avatargen.testing import Service, avatargen_server
from tests.support import write_config

TOKEN = "shutdown-test-token"
PROMPTLY = 2.0  # seconds from SIGTERM to the end of the stream; uvicorn's graceful timeout is 3 s


@pytest.mark.parametrize("during_a_run", [False, True])
async def test_sigterm_ends_event_streams_promptly_and_exits_0(tmp_path: Path, during_a_run: bool) -> None:
    config = write_config(tmp_path, {"gpu.simulated.step_time": "50ms", "buckets.fallback.max": 50})
    server: Service = await asyncio.to_thread(avatargen_server(config, tmp_path / "server.log", token=TOKEN).start)
    assert server.process is not None
    try:
        async with AdminClient(server.url, TOKEN) as panel, panel.subscribe() as events:
            if during_a_run:
                await panel.refill(["fallback"])
                async with asyncio.timeout(30):
                    async for _, event in events:
                        if isinstance(event, StateChange) and event.state == "generating":
                            break
            server.process.terminate()
            signalled = time.monotonic()
            async with asyncio.timeout(30):
                async for _ in events:
                    pass  # what was under way when the signal came
            ended_after = time.monotonic() - signalled
        status = await asyncio.to_thread(server.process.wait, 60)
    finally:
        server.kill()
    log = server.log_text()
    assert status == 0, log
    assert ended_after < PROMPTLY, f"the event stream ended {ended_after:.1f}s after SIGTERM"
    for sign_of_trouble in ("Traceback", "CancelledError", "graceful shutdown exceeded", "ERROR"):
        assert sign_of_trouble not in log, log
    assert log.rstrip().endswith(f"Finished server process [{server.process.pid}]")
    if during_a_run:
        # The run was aborted and its machine confirmed off before the process ended.
        assert log.index("aborting run") < log.index("machine is off") < log.index("Application shutdown complete")
