"""`die_with_parent`: a child process of the server ends when the server does, even after `kill -9`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.processes import still_running_after

# The child: follows the parent whose pid it is given, says so, then waits to be ended.
CHILD = """
import sys, time
from avatargen.child_processes import die_with_parent
die_with_parent(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(600)
"""
# The parent: starts the child, waits until it follows, prints its pid and waits to be killed.
PARENT = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline() == "ready\\n"
print(child.pid, flush=True)
time.sleep(600)
"""


def ignores_sigint(pid: int) -> bool:
    """Whether the process ignores SIGINT, from the kernel's own record of it (Linux's /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    raise AssertionError(f"no SigIgn line for pid {pid}")


def test_the_child_ends_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert ignores_sigint(child.pid), "Ctrl-C is the server's to handle, not its children's"
    finally:
        parent.kill()
        parent.wait()
    left = still_running_after([child], timeout=10)
    assert not left, f"the child (pid {child.pid}) outlived its parent"


def test_a_child_whose_parent_is_already_gone_ends_at_once() -> None:
    """The parent may die between starting the child and the child's first call: the child ends then."""
    not_the_parent = os.getppid()  # the child's parent is this test's process, not the one above it
    ended = subprocess.run([sys.executable, "-c", CHILD, str(not_the_parent)], capture_output=True, text=True,
                           timeout=60)
    assert ended.returncode == 1 and "ready" not in ended.stdout, ended
