"""The processes a test started, found through the OS (psutil), as the owner would find them with `ps`.

A process that ended but was not reaped yet (a zombie, which init may take its time over) counts as
gone: it holds no memory, no pipe and no lock.
"""

from __future__ import annotations

import os
import time

import psutil

SESSION_ENV = "AVATARGEN_TEST_SESSION"  # marks every process the test session starts (inherited)


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (the same processes: psutil tells a reused pid apart by its start time)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def still_running_after(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those still running once `timeout` seconds have passed (returns as soon as none is).

    Nothing announces another process's end to a non-parent: poll, with a deadline.
    """
    deadline = time.monotonic() + timeout
    while (alive := running(processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"pid {process.pid} (ppid {process.ppid()}): {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return "\n".join(lines)


def left_behind(session: str) -> list[psutil.Process]:
    """Processes this test session started that are no longer below it: orphans (PPID 1 or a subreaper)."""
    ours = {process.pid for process in psutil.Process(os.getpid()).children(recursive=True)} | {os.getpid()}
    orphans = []
    for process in psutil.process_iter():
        if process.pid in ours:
            continue
        try:
            if process.environ().get(SESSION_ENV) == session:
                orphans.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return orphans
