"""Traffic: visitors from many addresses, panels connecting and leaving, the owner acting now and then.

Visitors come through a trusted proxy (loopback, with X-Forwarded-For): a new address (due a unique), an
address seen before (a fallback), a conditional request with the Last-Modified or ETag it got (304), HEAD,
`?s=` sizes and `Accept` formats. Every answer is checked as it comes: a unique's id never twice, never an
image held back or deleted before the request began, never a 5xx (a unique may come again to its own
visitor: `serving.same_face_for` shows one visitor one face across a page); a visitor turned away by a slot that was
down on purpose is excused, any other failed request is counted.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from benchmarks.soak.setups import AUTH, Setup, Slot

VISITOR_PAUSE = 0.03
REQUEST_TIMEOUT = 10.0
SIZES = ("32", "64", "80", "128", "200", "512", "2000", "abc")  # snapped to serving.sizes, or ignored
ACCEPTS = ("image/avif,image/webp,*/*", "image/webp", "image/jpeg", "image/png,*/*;q=0.1", "*/*")
PANEL_SECONDS = (0.5, 4.0)  # how long a panel stays
OWNER_EVERY = 2.0
PROMPT_EDITS = ({"suffix_max": 6}, {"suffix_max": 10}, {"film_only": 0.25, "artist_only": 0.65})


@dataclass
class Served:
    """What visitors were served, and what must never have been."""

    held: set[str]
    deleted: dict[str, float] = field(default_factory=dict)  # id -> when its deletion was confirmed
    uniques: dict[str, str] = field(default_factory=dict)  # id -> the visitor it was served to
    uniques_twice: list[str] = field(default_factory=list)  # served to a second visitor
    same_face: int = 0  # a unique again to its own visitor (serving.same_face_for: one page, one face)
    held_served: list[str] = field(default_factory=list)
    deleted_served: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 5xx to a visitor
    failures: list[str] = field(default_factory=list)  # no answer, not excused
    excused: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # answers by kind of request and status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, kind: str, address: str, response: httpx.Response, began: float) -> None:
        image_id = response.headers.get("x-avatar-id", "")
        avatar = response.headers.get("x-avatar-kind", "")
        with self.lock:
            self.kinds[f"{kind} {response.status_code}"] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{kind}: {response.status_code} {response.text[:80]}")
            if response.status_code != 200 or not image_id:
                return
            if image_id in self.held:
                self.held_served.append(f"{kind}: {avatar} {image_id}")
            deleted = self.deleted.get(image_id)
            if deleted is not None and deleted < began:
                self.deleted_served.append(f"{kind}: {avatar} {image_id}, {began - deleted:.1f} s after its deletion")
            if avatar == "unique" and kind != "HEAD":
                first = self.uniques.setdefault(image_id, address)
                if first != address:
                    self.uniques_twice.append(f"{image_id} to {first} and to {address}")
                elif kind != "new visitor":
                    self.same_face += 1


class Visitors:
    """One thread of visitors against a setup's slots up, chosen at random, until `stop`."""

    def __init__(self, setup: Setup, served: Served, stop: threading.Event, seed: int) -> None:
        self.setup = setup
        self.served = served
        self.stop = stop
        self.random = random.Random(seed)
        self.seed = seed
        self.count = 0
        self.seen: list[tuple[str, str, str]] = []  # (address, last-modified, etag) of recent visitors
        self.thread = threading.Thread(target=self._loop, name=f"visitors {setup.name}", daemon=True)

    def _address(self) -> str:
        """A new visitor: 10.0.0.0/8, a million addresses per seed."""
        """A new visitor: 10.0.0.0/8, a million addresses per seed."""
        self.count += 1
        return str(ipaddress.IPv4Address(0x0A000000 + ((self.seed & 15) << 20) + (self.count & 0xFFFFF)))
    def _request(self, client: httpx.Client, slot: Slot) -> None:
        roll = self.random.random()
        headers: dict[str, str] = {}
        method, path, kind = "GET", "/avatar", "new visitor"
        if roll < 0.35 or not self.seen:
            address = self._address()
        else:
            address, modified, etag = self.random.choice(self.seen)
            if roll < 0.55:
                kind = "returning visitor"
            elif roll < 0.70:
                kind = "conditional"
                headers["If-None-Match" if etag and roll < 0.62 else "If-Modified-Since"] = etag or modified
            elif roll < 0.80:
                method, kind = "HEAD", "HEAD"
            elif roll < 0.90:
                path, kind = f"/avatar?s={self.random.choice(SIZES)}", "size"
            else:
                headers["Accept"], kind = self.random.choice(ACCEPTS), "format"
        headers["X-Forwarded-For"] = address
        began = time.time()
        try:
            response = client.request(method, slot.url + path, headers=headers, timeout=REQUEST_TIMEOUT)
        except httpx.HTTPError as exc:
            with self.served.lock:
                if slot.excused(began, time.time()):
                    self.served.excused += 1
                else:
                    self.served.failures.append(f"{kind} to {slot.name}: {type(exc).__name__}: {exc}")
            return
        self.served.answer(kind, address, response, began)
        if response.status_code == 200 and len(self.seen) < 5000:
            self.seen.append((address, response.headers.get("last-modified", ""), response.headers.get("etag", "")))

    def _loop(self) -> None:
        with httpx.Client() as client:
            while not self.stop.wait(VISITOR_PAUSE):
                slots = self.setup.serving()
                if slots:
                    self._request(client, self.random.choice(slots))


class Panels:
    """Panels connecting to the event stream of a slot, staying a while, leaving (some mid-event)."""

    def __init__(self, setup: Setup, stop: threading.Event, seed: int) -> None:
        self.setup = setup
        self.stop = stop
        self.random = random.Random(seed)
        self.visits = 0
        self.events = 0
        self.thread = threading.Thread(target=self._loop, name=f"panels {setup.name}", daemon=True)

    def _loop(self) -> None:
        with httpx.Client(headers=AUTH, timeout=httpx.Timeout(5.0, read=2.0)) as client:
            while not self.stop.is_set():
                slots = self.setup.serving()
                if not slots:
                    self.stop.wait(0.5)
                    continue
                leave_at = time.monotonic() + self.random.uniform(*PANEL_SECONDS)
                self.visits += 1
                try:
                    with client.stream("GET", self.random.choice(slots).url + "/admin/api/events") as stream:
                        for line in stream.iter_lines():
                            self.events += line.startswith("event:")
                            if time.monotonic() > leave_at or self.stop.is_set():
                                break
                except httpx.HTTPError:
                    pass  # a quiet stream past the read timeout, or a slot going down: the panel leaves
                self.stop.wait(self.random.uniform(0.1, 1.0))


class Owner:
    """The owner, every few seconds: deletes a unique or a fallback, keeps or lets go a fallback, edits prompts."""

    def __init__(self, setup: Setup, served: Served, stop: threading.Event, seed: int) -> None:
        self.setup = setup
        self.served = served
        self.stop = stop
        self.random = random.Random(seed)
        self.actions: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._loop, name=f"owner {setup.name}", daemon=True)

    def _act(self, client: httpx.Client, url: str) -> None:
        roll = self.random.random()
        if roll < 0.2:
            edit = self.random.choice(PROMPT_EDITS)
            response = client.put(url + "/admin/api/prompts", json=edit)
            self.actions[f"prompt edit {response.status_code}"] += 1
            return
        bucket = "unique" if roll < 0.55 else "fallback"
        listed = client.get(url + "/admin/api/images", params={"bucket": bucket, "limit": "24"})
        images = listed.json().get("images", []) if listed.status_code == 200 else []
        if not images:
            self.actions[f"list {bucket} {listed.status_code} (none)"] += 1
            return
        image_id = self.random.choice(images)["id"]
        if bucket == "fallback" and roll > 0.8:
            method = "POST" if self.random.random() < 0.5 else "DELETE"
            response = client.request(method, f"{url}/admin/api/images/fallback/{image_id}/keep")
            self.actions[f"keep {method} {response.status_code}"] += 1
            return
        response = client.delete(f"{url}/admin/api/images/{bucket}/{image_id}")
        if response.status_code == 204:
            with self.served.lock:
                self.served.deleted[image_id] = time.time()
        self.actions[f"delete {bucket} {response.status_code}"] += 1

    def _loop(self) -> None:
        with httpx.Client(headers=AUTH, timeout=10) as client:
            while not self.stop.wait(OWNER_EVERY):
                slots = self.setup.serving()
                if not slots:
                    continue
                try:
                    self._act(client, self.random.choice(slots).url)
                except (httpx.HTTPError, ValueError) as exc:
                    self.actions[f"failed: {type(exc).__name__}"] += 1
