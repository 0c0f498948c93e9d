"""Fixtures shared by test modules: a real redis-server, stopped when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_support import RedisServer, running_redis


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
