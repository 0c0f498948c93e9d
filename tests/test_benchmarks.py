"""Every benchmark script runs in quick mode and prints its table, so none of them rots.

Quick mode uses tiny durations: its figures mean nothing and are not checked here. What is checked is
that the script exits 0 (the fault matrix exits 1 when a row does not hold) and prints its table.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from avatargen.config import SD_BACKENDS
from avatargen.simulator.faults import faults_for
from benchmarks.fault_matrix import APIS, COMFYUI_ONLY, MONEY_ROWS, QUICK_COMFYUI, STORAGE_FAULTS, kill_states
from benchmarks.soak.faults import REDIS_FAULTS, SIM_FAULTS

ROOT = Path(__file__).resolve().parent.parent
# Their own step of .ci/run, after the rest of the suite (`-m bench`): about a third of the suite's time.
pytestmark = pytest.mark.bench
# How long a script may run before it counts as hung: their speed is their own figure, this bound only ends one
# that stopped. Beside `stress-ng --cpu 2` and the soak on the other worker, the slowest (the fault matrix's
# Paperspace rows, 30 s alone) took 315 s while the simulated GPU ran at nice 19, starved by stress-ng (at nice
# 10 the slowest took 124 s). Twice the worse; the test's own timeout leaves room to print what it had written.
HUNG_AFTER = 600


def quick(module: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks.<module> --quick <options>`, which must exit 0: its output for the checks."""
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--quick", *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=HUNG_AFTER)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done

TABLES = {
    "visitor_throughput": ("Visitor throughput: GET /avatar",
                           "| path | server | req/s | p50 ms | p99 ms | vs bare Starlette | vs nginx | CPU us/req |",
                           ["| fallback (200) | avatargen |", "| fallback (200) | avatargen, 2 workers |",
                            "| If-Modified-Since (304) | nginx |", "| ?s=64, Accept AVIF (200) | avatargen |",
                            "| ?s=64, Accept JPEG (200) | bare Starlette |"]),
    "replicas": ("Storage backends and replicas: GET /avatar",
                 "| storage | replicas | fallback req/s | fallback p99 ms | socket errors | uniques |",
                 ["| files | 1 |", "| files | 2 |", "| redis | 1 |", "| redis | 2 |"]),
    "latency_during_run": ("Visitor latency during a run: GET /avatar (fallback)",
                           "| server | req/s | p50 ms | p99 ms | images stored/s |",
                           ["| idle |", "| during a run |"]),
    "unique_path": ("Unique path: GET /avatar that claims, frames and sends one unique",
                    "| server | requests | median ms | p99 ms |",
                    ["| avatargen (unique) |", "| bare Starlette (same bytes from memory) |"]),
    "variant_cost": ("Avatar variants: bytes and CPU per image",
                     "| size | format | bytes (median) | fallback variant CPU ms (median) |",
                     ["| 32 | avif |", "| 256 | jpg |"]),
    "review_cost": ("Safety gate: cost per image",
                    "| step | images | median ms | p99 ms | CPU ms (median) |",
                    ["| imaging without the gate (512 px PNG -> 256 px WebP) |", "| safety gate (256 px avatar) |"]),
    "gpu_efficiency": ("GPU efficiency and cost per run",
                       "| backend | batch_size | concurrency | images | billed s | SD busy s | busy share |",
                       ["| a1111 | 1 | 1 | 20 |", "| a1111 | 2 | 2 | 20 |", "| comfyui | 1 | 1 | 20 |",
                        "| comfyui | 2 | 2 | 20 |"]),
    "proxy_limits": ("Slow and oversized headers, and the visitor's address, with and without a proxy",
                     "| check | avatargen serve alone | behind the nginx example |",
                     ["| request headers sent one byte a second | still open after 15 s | closed after",
                      "| admin API from 127.0.0.3 with a forged X-Forwarded-For: 127.0.0.2 | 403 | 403 |"]),
    **{f"preview_stream --backend {backend}": ("Event stream while a run generates",
                                               "| event | count | per second | bytes/s | largest bytes |",
                                               ["| preview |", "| progress |", "| all |"])
       for backend in SD_BACKENDS},
    **{f"fault_matrix --api {api}": ("Fault matrix: one fault per run, SIGKILL in each run state",
                                     "| fault | run outcome | machine at end | billed s after the end | images lost |",
                                     [f"| {row}{'' if api == APIS[0] else f' ({api})'} |" for row in (
                                         *(fault for fault in faults_for(api) if fault not in COMFYUI_ONLY),
                                         *(f"SIGKILL while {state}" for state in kill_states(api)))])
       for api in APIS},  # one provider's rows at a time, so each run fits the test timeout
    "fault_matrix --comfyui": ("Fault matrix: one fault per run, SIGKILL in each run state",
                               "| fault | run outcome | machine at end | billed s after the end | images lost |",
                               [f"| {row} (comfyui) |" for row in (*QUICK_COMFYUI, "SIGKILL while generating")]),
    "fault_matrix --storage": ("Fault matrix: one fault per run, SIGKILL in each run state",
                               "| fault | run outcome | machine at end | billed s after the end | images lost |",
                               [f"| {fault} |" for fault in STORAGE_FAULTS]),
    "fault_matrix --money": ("Fault matrix: one fault per run, SIGKILL in each run state",
                             "| fault | run outcome | machine at end | billed s after the end | images lost |",
                             [f"| {row}{' (comfyui)' if 'ComfyUI' in row else ''} |" for row in MONEY_ROWS]),
    "startup": ("Start-up: spawn to the first GET /avatar answered",
                "| buckets | images | median s | max s | server CPU s by then | all framed after s |",
                ["| empty buckets | 0 |", "| 1,000 images, uniques framed |", "| 50 uniques without framed copies |"]),
}


# First in the file: the step's longest test starts first (see QUICK_SECONDS below).
@pytest.mark.timeout(HUNG_AFTER + 60)
def test_the_soak_runs_in_quick_mode_and_every_invariant_holds() -> None:
    """The soak exits 1 when an invariant or a resource does not hold: its quick run is a check of its own."""
    done = quick("soak")
    for title in ("invariants", "what happened", "faults", "resources"):
        assert f"### Soak: {title}\n" in done.stdout
    for row in ("uniques served to two visitors", "held images served", "deleted images served", "5xx to a visitor",
                "billed seconds outside runs", "automatic runs started over the daily budget",
                "ledger s / machine billed s", "faults noticed", "log files at most"):
        assert f"| {row}" in done.stdout, f"no invariant {row!r} in:\n{done.stdout}"
    for fault in (*SIM_FAULTS, *REDIS_FAULTS, "server SIGTERM + restart"):
        assert f" | {fault} | " in done.stdout, f"no fault {fault!r} in:\n{done.stdout}"
    assert "| redis replica-0 (" in done.stdout and "| redis redis-server (storage) | Redis keys |" in done.stdout


def soak_processes(soak: subprocess.Popen[str]) -> list[psutil.Process]:
    """The soak's processes once it has started them all (two simulators, three servers, Redis), or []."""
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(soak.pid).children(recursive=True)
        lines = [" ".join(child.cmdline()) for child in children]
        if (sum(" serve " in line for line in lines) >= 3 and any("redis-server" in line for line in lines)
                and sum("avatargen.simulator" in line for line in lines) >= 2):
            return children
    return []


@pytest.mark.timeout(420)  # its own bounds (the start 240 s, the exit 90 s, its processes' 30 s) and a margin
@pytest.mark.parametrize("moment", ["starting", "running"])
def test_a_killed_soak_stops_every_process_it_started(moment: str) -> None:
    """`kill` (SIGTERM) on an hour-long soak ends it as Ctrl-C does, whether its last server is still starting
    or the traffic runs: no server, simulator or Redis left behind (the harness turns SIGTERM into
    KeyboardInterrupt; the `with` blocks, and a start that is interrupted, stop what they started)."""
    soak = subprocess.Popen([sys.executable, "-m", "benchmarks.soak", "--minutes", "60"], cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert soak.stderr is not None
    try:
        if moment == "running":  # the soak says so on stderr once its traffic and faults have started
            lines = iter(soak.stderr.readline, "")
            assert any(line.startswith("soak: running") for line in lines), f"the soak exited: {soak.wait()}"
        deadline = time.monotonic() + 240  # beside stress-ng and another benchmark, its "running" came at 100 s
        while not (children := soak_processes(soak)):
            assert time.monotonic() < deadline and soak.poll() is None, "the soak did not start its processes"
            time.sleep(0.1)
        soak.send_signal(signal.SIGTERM)
        _, stderr = soak.communicate(timeout=90)
        assert soak.returncode != 0, stderr
        _, alive = psutil.wait_procs(children, timeout=30)  # the servers stopped before the soak exited
        assert not alive, [f"{process.pid} {process.name()}" for process in alive]
    finally:
        soak.kill()
        soak.wait()


@pytest.mark.timeout(360)  # its first row (54 s beside stress-ng), its own bounds (60, 120 and 30 s), a margin
def test_a_killed_fault_matrix_starts_none_of_its_queued_rows() -> None:
    """`kill` on the fault matrix lets the row under way finish and clean up, then ends: the rows still queued
    never start (leaving the pool's block waits for every queued row, all 13 here) and no process is left."""
    matrix = subprocess.Popen([sys.executable, "-m", "benchmarks.fault_matrix", "--quick", "--jobs", "1", "--api",
                               "paperspace"], cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert matrix.stderr is not None
    try:
        first = matrix.stderr.readline()
        assert first.endswith("; holds\n"), first  # the first row is over, the second one starts
        deadline = time.monotonic() + 60
        while not (children := psutil.Process(matrix.pid).children(recursive=True)):
            assert time.monotonic() < deadline and matrix.poll() is None, "the second row did not start"
            time.sleep(0.05)
        matrix.send_signal(signal.SIGTERM)
        _, stderr = matrix.communicate(timeout=120)
        assert matrix.returncode != 0, stderr
        verdicts = [line for line in stderr.splitlines() if line.endswith(("; holds", "; DOES NOT HOLD"))]
        assert len(verdicts) <= 1, stderr  # at most the row under way at the kill
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [f"{process.pid} {process.name()}" for process in alive]
    finally:
        matrix.kill()
        matrix.wait()


@pytest.mark.timeout(HUNG_AFTER + 60)
def test_gpu_efficiency_compares_the_safety_gate_off_and_on() -> None:
    done = quick("gpu_efficiency", "--gate")
    assert "### Safety gate and GPU busy share, shipped defaults\n" in done.stdout
    for backend in ("a1111", "comfyui"):
        assert f"| {backend} | off | 1 | 20 |" in done.stdout and f"| {backend} | on | 1 | 20 |" in done.stdout


# Seconds each script takes in quick mode on 2 busy cores, roughly: xdist hands the tests out in the order they
# are collected, so the longest go first (the soak, then the gate's comparison, then these, longest first) and
# the step does not end waiting on a long one that started last. A script missing here runs last; its figure
# only orders the tests, nothing checks it.
QUICK_SECONDS = {
    "fault_matrix --api paperspace": 41, "fault_matrix --api runpod": 34, "fault_matrix --money": 31,
    "fault_matrix --api runpod_serverless": 27, "replicas": 25, "gpu_efficiency": 23, "visitor_throughput": 22,
    "fault_matrix --storage": 17, "proxy_limits": 17, "startup": 14, "preview_stream --backend comfyui": 14,
    "fault_matrix --comfyui": 13, "preview_stream --backend a1111": 13, "latency_during_run": 7, "unique_path": 6,
    "review_cost": 4, "variant_cost": 1,
}
SCRIPTS = sorted(TABLES, key=lambda script: -QUICK_SECONDS.get(script, 0))


@pytest.mark.timeout(HUNG_AFTER + 60)
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_in_quick_mode_and_prints_its_table(script: str) -> None:
    done = quick(*script.split())
    title, header, rows = TABLES[script]
    assert done.stdout.startswith("machine: ")
    assert f"### {title}\n" in done.stdout
    assert header in done.stdout
    for row in rows:
        assert row in done.stdout, f"no row starting {row!r} in:\n{done.stdout}"
