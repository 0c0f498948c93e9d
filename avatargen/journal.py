"""A journal of our jobs on a remote queue, in a file of the data folder, kept across a crash.

A job is written down before it is sent and struck off once it has ended, so a server killed mid-run leaves
behind the ids of the jobs it sent and never saw end: the next start deals with them (the serverless
provider cancels them and purges the queue; the ComfyUI client takes them off ComfyUI's queue). Written
atomically and private to the owner (the ids are no secret, but the data folder's files all are).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from avatargen.files import write_atomically

log = logging.getLogger("avatargen.journal")

PENDING = "pending"  # a job being sent: its id is not known yet


class JobJournal:
    """Our jobs not known to have ended, in a file of the data folder (written atomically, owner only)."""

    def __init__(self, path: Path, *, unreadable: str = "its jobs are left to run") -> None:
        self.path = path
        self._unreadable = unreadable  # what becomes of the jobs of a journal that cannot be read, for the log
        self._entries: dict[str, float] = self._read()  # job id (or a pending key) -> when it was sent

    def reload(self) -> None:
        """Read the file again (at start-up, before anything is sent: what the last process left)."""
        self._entries = self._read()

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("the job journal %s cannot be read (%s): %s", self.path, exc, self._unreadable)
            return {f"{PENDING}-unreadable": time.time()}
        jobs = data.get("jobs") if isinstance(data, dict) else None
        return {str(key): float(value) for key, value in jobs.items()} if isinstance(jobs, dict) else {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps({"jobs": self._entries}, indent=1).encode(), mode=0o600)

    @property
    def changed_at(self) -> float | None:
        """When the file was last written (a job sent or ended), None when there is none."""
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    @property
    def job_ids(self) -> list[str]:
        """The ids of jobs that may still be queued or running (pending placeholders left out)."""
        return [key for key in self._entries if not key.startswith(PENDING)]

    @property
    def has_unknown(self) -> bool:
        """Whether a job was being sent when the server stopped: its id never came back, only a purge of the
        queue can reach it."""
        return any(key.startswith(PENDING) for key in self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def sending(self, key: str) -> None:
        """A job is about to be sent (written first: the server may die before its id comes back)."""
        self._entries[f"{PENDING}-{key}"] = time.time()
        self._write()

    def sent(self, key: str, job_id: str | None) -> None:
        """The job was queued as `job_id` (None: it was not queued after all)."""
        since = self._entries.pop(f"{PENDING}-{key}", time.time())
        if job_id is not None:
            self._entries[job_id] = since
        self._write()

    def add(self, job_id: str) -> None:
        """A job whose id we chose ourselves is about to be sent (written first: the server may die meanwhile)."""
        self._entries[job_id] = time.time()
        self._write()

    def ended(self, *job_ids: str) -> None:
        for job_id in job_ids:
            self._entries.pop(job_id, None)
        self._write()

    def forget_unknown(self) -> None:
        """The queue was purged: jobs whose id never came back are gone (or ran; nothing can tell)."""
        self._entries = {key: since for key, since in self._entries.items() if not key.startswith(PENDING)}
        self._write()
