"""The generator's socket when `data_dir` is too long for a Unix socket's path (a Docker volume's): a short
place of this user's alone, found the same by every worker; a trap in its place is a config error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.socket_place import MAX_PATH_BYTES, SocketPlaceError, generator_socket
from tests.test_workers import TOKEN, server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short XDG_RUNTIME_DIR of the test's own (so nothing is left in /tmp's shared folder)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        monkeypatch.setenv("XDG_RUNTIME_DIR", folder)
        yield Path(folder)


def long_data_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / ("a-docker-volume-" * 5) / "data"
    assert len(os.fsencode(data_dir / "generator.sock")) > MAX_PATH_BYTES
    return data_dir


def test_a_short_data_dir_keeps_its_socket(tmp_path: Path) -> None:
    assert generator_socket(tmp_path / "data") == tmp_path / "data" / "generator.sock"


def test_a_long_data_dir_gets_a_short_private_place(tmp_path: Path, runtime_dir: Path) -> None:
    first, second = generator_socket(long_data_dir(tmp_path)), generator_socket(tmp_path / "another" / ("x" * 40))
    assert first.parent == second.parent == runtime_dir / f"avatargen-{os.getuid()}" and first != second
    assert generator_socket(long_data_dir(tmp_path)) == first, "every worker finds the same socket"
    assert len(os.fsencode(first)) <= MAX_PATH_BYTES
    assert first.parent.stat().st_mode & 0o777 == 0o700


def test_a_trap_in_the_short_place_is_refused(tmp_path: Path, runtime_dir: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (runtime_dir / f"avatargen-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SocketPlaceError, match="not a folder of this user's own"):
        generator_socket(long_data_dir(tmp_path))
    (tmp_path / "config.toml").write_text(f'[server]\ndata_dir = "{long_data_dir(tmp_path)}"\n')
    result = subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config",
                             str(tmp_path / "config.toml")], capture_output=True, text=True, cwd=ROOT, check=False,
                            timeout=120, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "server.data_dir: " in result.stderr and "it may be a trap" in result.stderr


async def test_two_workers_serve_from_a_long_data_dir(tmp_path: Path, runtime_dir: Path) -> None:
    with server(tmp_path, None, **{"server.data_dir": str(long_data_dir(tmp_path))}) as service:
        async def status() -> bool:
            async with httpx.AsyncClient(base_url=service.url, timeout=60,
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as owner:  # either worker
                return (await owner.get("/admin/api/status")).json()["paused_reason"] is None

        assert all(await asyncio.gather(*(status() for _ in range(20))))
        [socket] = (runtime_dir / f"avatargen-{os.getuid()}").iterdir()
        assert socket.stat().st_mode & 0o777 == 0o600
    assert "Traceback" not in service.log_text()
