"""Suite-wide checks, and fixtures shared by test modules (a real redis-server, stopped when the test ends)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from avatargen.config import SD_BACKENDS
from avatargen.testing import RedisServer, running_redis
from tests.processes import SESSION_ENV, describe, left_behind, still_running_after
from tests.support import FAST


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """The suite leaves no process behind: whatever a test started (a server, its imaging process,
    multiprocessing's resource tracker, a simulator) has ended by the end of the session.

    Every process the session starts inherits a marker in its environment, which is how an orphan is
    recognised once it has lost its parent.
    """
    session = secrets.token_hex(8)
    os.environ[SESSION_ENV] = session
    yield
    orphans = still_running_after(left_behind(session), timeout=10)
    assert not orphans, f"processes left behind by the test session:\n{describe(orphans)}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server without persistence."""
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def durable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server with an append-only file fsynced at every write (survives a restart or a crash)."""
    with running_redis(tmp_path / "redis", appendonly=True) as server:
        yield server


@pytest.fixture(params=SD_BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test that takes this runs on each SD backend (the web UI API, ComfyUI) against its simulator."""
    monkeypatch.setitem(FAST, "sd", {**FAST["sd"], "backend": request.param})
    return str(request.param)
