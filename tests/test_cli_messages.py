"""The `avatargen` command's papercuts: a help that lists every command,
two servers never offered one port, and quiet exits into a closed pipe."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from avatargen.testing import free_port
from server.cli import build_parser
from tests.support import fast_settings, serving

ROOT = Path(__file__).resolve().parent.parent


def test_the_help_summary_names_every_command() -> None:
    parser = build_parser()
    summary = " ".join((parser.description or "").split())
    commands = list(parser._subparsers._group_actions[0].choices or ())  # type: ignore[union-attr]
    assert "migrate" in commands
    assert summary.endswith(f"Commands: {', '.join(commands)}.")


def test_simulate_refuses_one_port_for_both_servers() -> None:
    port = str(free_port())
    result = subprocess.run([sys.executable, "-m", "server.cli", "simulate", "--api-port", port, "--sd-port", port],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert f"avatargen simulate: error: --api-port and --sd-port are both {port}: the machine API and the SD " \
           "server need a port each" in result.stderr


def pipeline(command: str) -> subprocess.CompletedProcess[str]:
    """A shell pipeline as an owner types it; `pipefail` so avatargen's own status shows."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)


def test_prompts_into_head_ends_quietly() -> None:
    result = pipeline(f"{sys.executable} -m server.cli prompts -n 20000 --seed 1 | head -1")
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert result.returncode == 141  # as a Unix tool that SIGPIPE ended


async def test_status_into_a_reader_that_leaves_ends_quietly(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, admin__token="pipe-token")
    async with serving(settings) as (url, _app):
        # `true` reads nothing and is gone long before the status is fetched.
        result = await asyncio.to_thread(
            pipeline, f"{sys.executable} -m server.cli status --url {url} --token pipe-token | true")
    assert result.stderr == ""
    assert result.returncode in (0, 141)  # 0 only if all of it fitted in the pipe before `true` ended
