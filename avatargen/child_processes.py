"""Child processes of the server die with it: `die_with_parent` is their first call.

The imaging process must never outlive the server, however the server ends. After a `kill -9` (or the
OOM killer) nothing runs in the server to shut it down: without this it would stay with PPID 1, and with
it multiprocessing's resource tracker, which ends only once every process holding its pipe is gone.
On Linux the kernel sends the child SIGKILL the moment its parent dies (prctl PR_SET_PDEATHSIG);
elsewhere a watchdog thread in the child notices that its parent changed. Ctrl-C, which the terminal
sends to the whole process group, is left to the server: it aborts the run, stops the machine, and then
shuts its children down itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_EVERY = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid`, which started it, ends; call it first (a pool's initializer).

    It also ignores Ctrl-C (SIGINT), which the server handles for the whole process group.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        # Delivered when the thread that started this process ends: the pool is started from the event
        # loop's thread, which lives as long as the server.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    else:
        threading.Thread(target=_watch, args=(parent_pid,), name="parent-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before this process could ask to follow it
        os._exit(1)


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_EVERY)
    os._exit(1)
