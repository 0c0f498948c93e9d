"""deploy/avatargen.service: `systemd-analyze verify` finds nothing to say about it (no systemd needed as
PID 1), and it keeps what a stop of the GPU machine and an unattended service need."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from avatargen.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "avatargen.service"
SHIPPED_BINARY = "/opt/avatargen/venv/bin/avatargen"


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on the unit, its ExecStart pointed at a program this test creates (verify
    insists that it exists and is executable)."""
    program = tmp_path / "avatargen"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    assert SHIPPED_BINARY in unit_text
    unit = tmp_path / "avatargen.service"
    unit.write_text(unit_text.replace(SHIPPED_BINARY, str(program)))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(timespan: str) -> float:
    """A systemd time span in seconds, as systemd itself reads it."""
    answer = subprocess.run(["systemd-analyze", "timespan", timespan], capture_output=True, text=True, check=True)
    match = re.search(r"μs: (\d+)", answer.stdout)
    assert match, answer.stdout
    return int(match.group(1)) / 1e6


@pytest.fixture(autouse=True)
def systemd_analyze() -> None:
    assert shutil.which("systemd-analyze"), "Debian's systemd package provides systemd-analyze (.ci/run installs it)"


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    answer = verify(UNIT.read_text(), tmp_path)
    assert answer.returncode == 0 and answer.stderr == "" and answer.stdout == "", answer.stderr


def test_a_mistake_in_the_unit_is_caught(tmp_path: Path) -> None:
    answer = verify(UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd"), tmp_path)
    assert "KillMode" in answer.stderr or "kill mode" in answer.stderr


def test_the_unit_runs_unprivileged_hardened_and_waits_for_the_machine() -> None:
    unit = directives(UNIT.read_text())
    assert unit["User"] == ["avatargen"] and unit["StateDirectory"] == ["avatargen"]
    assert unit["Restart"] == ["on-failure"] and unit["KillMode"] == ["mixed"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert "/var/lib/avatargen" in unit["ReadWritePaths"][0].split()
    assert unit["EnvironmentFile"] and "serve" in unit["ExecStart"][0]
    stop_timeout = load_settings(ROOT / "config.toml").gpu.stop_timeout
    assert seconds(unit["TimeoutStopSec"][0]) > stop_timeout
