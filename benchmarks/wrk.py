"""Load with wrk: install it (and nginx) from Debian when missing, run it, read its figures.

Request headers and pauses between requests go in a Lua script, the way wrk takes them; `--latency`
makes wrk print its latency distribution, from which p50 and p99 are read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_BAD = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    socket_errors: int


def ensure_installed(command: str, packages: Sequence[str]) -> str:
    """The path of `command`, installed with apt-get (the first of `packages` that installs) if missing."""
    found = _which(command)
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    for package in packages:
        if subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", package], env=env).returncode == 0:
            break
    found = _which(command)
    if not found:
        raise SystemExit(f"cannot find {command!r}, and installing it with apt-get ({', '.join(packages)}) failed")
    return found


def _which(command: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/usr/local/sbin")


def lua_script(headers: Mapping[str, str], pause_ms: float = 0) -> str:
    """wrk's Lua: set request headers; with a pause, each connection waits that long between requests."""
    lines = [f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}" for name, value in headers.items()]
    if pause_ms > 0:
        lines.append(f"function delay() return {pause_ms:g} end")
    return "\n".join(lines) + "\n"


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(url: str, *, threads: int, connections: int, seconds: int, headers: Mapping[str, str] | None = None,
            pause_ms: float = 0) -> WrkResult:
    """Load `url` for `seconds`; every answer must be 2xx or 3xx."""
    wrk = ensure_installed("wrk", ["wrk"])
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua_script(headers or {}, pause_ms))
        script.flush()
        command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, seconds)}s", "--latency",
                   "-s", script.name, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> WrkResult:
    """The figures of wrk's `--latency` report; an error quoting the report when they are not there."""
    latencies = {share: float(value) * _UNITS_MS[unit] for share, value, unit in _LATENCY.findall(output)}
    rate, total = _RATE.search(output), _TOTAL.search(output)
    if rate is None or total is None or set(latencies) != {"50", "99"}:
        raise RuntimeError(f"cannot read wrk's report (was --latency given?):\n{output}")
    bad = _BAD.search(output)
    if bad is not None:
        raise RuntimeError(f"{bad.group(1)} answers were neither 2xx nor 3xx:\n{output}")
    socket_errors = _SOCKET.search(output)
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        requests=int(total.group(1)),
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
    )

