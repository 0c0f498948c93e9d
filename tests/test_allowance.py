"""The unique allowance on a real SQLite file: token bucket, visitor window, sharing, persistence."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from avatargen.config import ServingSettings
from avatargen.storage.files.allowance import Allowance
from server.addresses import SHARED_VISITOR, visitor_key

DAY = 86_400.0


class Clock:
    """Wall-clock seconds that the test moves forward."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def allowance(path: Path, clock: Clock, **serving: Any) -> Allowance:
    values: dict[str, Any] = {"unique_every": 600.0, "unique_burst": 3, "unique_per_visitor": DAY,
                              "fallback_retire_every": 3600.0, **serving}
    settings = ServingSettings(**values)
    return Allowance(path / "visitors.sqlite3", settings, clock=clock)


def test_starts_full_then_refuses(tmp_path: Path) -> None:
    limits = allowance(tmp_path, Clock())
    assert [limits.grant(f"203.0.113.{n}") for n in range(5)] == [True, True, True, False, False]


def test_one_unique_per_visitor_per_window(tmp_path: Path) -> None:
    clock = Clock()
    limits = allowance(tmp_path, clock)
    assert limits.grant("203.0.113.5")
    assert not limits.may_grant("203.0.113.5"), "known without asking SQLite"
    assert not limits.grant("203.0.113.5")
    assert limits.grant("203.0.113.6")
    clock.now += DAY - 1
    assert not limits.grant("203.0.113.5")
    clock.now += 1
    assert limits.may_grant("203.0.113.5")
    assert limits.grant("203.0.113.5")


def test_refills_one_token_per_period(tmp_path: Path) -> None:
    clock = Clock()
    limits = allowance(tmp_path, clock, unique_burst=1)
    assert limits.grant("a")
    assert not limits.grant("b")
    clock.now += 599
    assert not limits.may_grant("b"), "the next token is not due yet: no need to ask SQLite"
    clock.now += 1
    assert limits.may_grant("b")
    assert limits.grant("b")
    clock.now += 10 * 600
    assert limits.grant("c")
    assert not limits.grant("d"), "unused tokens accumulate only up to the burst"


def test_give_back_returns_the_token_and_the_visitors_chance(tmp_path: Path) -> None:
    limits = allowance(tmp_path, Clock(), unique_burst=1)
    assert limits.grant("a")
    limits.give_back("a")
    assert limits.may_grant("a")
    assert limits.grant("a")
    assert not limits.grant("b")


def test_state_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    first = allowance(tmp_path, clock, unique_burst=2)
    assert first.grant("a")
    assert first.retire()
    first.close()
    again = allowance(tmp_path, clock, unique_burst=2)
    assert not again.grant("a"), "the visitor is still marked"
    assert again.grant("b")
    assert not again.grant("c"), "the spent token did not come back with the restart"
    assert not again.retire()


def test_instances_share_one_file(tmp_path: Path) -> None:
    clock = Clock()
    here, there = allowance(tmp_path, clock, unique_burst=1), allowance(tmp_path, clock, unique_burst=1)
    assert there.may_grant("b"), "this process cannot know the other took the last token"
    assert here.grant("a")
    assert not there.grant("b")
    assert not there.may_grant("b"), "now it knows, until the next token is due"
    assert not there.grant("a"), "visitors are shared too"
    assert not there.may_grant("a")


def test_old_visitors_are_expired(tmp_path: Path) -> None:
    clock = Clock()
    limits = allowance(tmp_path, clock, unique_every=0)
    assert limits.grant("old")
    clock.now += DAY + 1
    assert limits.grant("new")
    with sqlite3.connect(tmp_path / "visitors.sqlite3") as db:
        assert db.execute("SELECT visitor FROM visitors").fetchall() == [("new",)]


def test_no_rate_limit_and_no_window(tmp_path: Path) -> None:
    limits = allowance(tmp_path, Clock(), unique_every=0, unique_burst=1, unique_per_visitor=0)
    assert all(limits.grant("same visitor") for _ in range(5))


def test_zero_burst_never_grants(tmp_path: Path) -> None:
    limits = allowance(tmp_path, Clock(), unique_every=0, unique_burst=0)
    assert not limits.may_grant("a")
    assert not limits.grant("a")


def test_retire_slot_once_per_period_across_instances(tmp_path: Path) -> None:
    clock = Clock()
    here, there = allowance(tmp_path, clock), allowance(tmp_path, clock)
    assert here.may_retire() and here.retire()
    assert not here.may_retire()
    assert there.may_retire() and not there.retire()
    assert not there.may_retire()
    clock.now += 3600
    assert there.may_retire() and there.retire()
    assert here.may_retire() and not here.retire()


def _grant_many(path: Path, gate: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue,
                prefix: str) -> None:
    """One process: 4 threads grant for 40 distinct visitors; reports the visitors granted."""
    limits = Allowance(path, ServingSettings(unique_every=600.0, unique_burst=5))
    granted: list[str] = []
    start = threading.Barrier(4)
    gate.wait()

    def worker(n: int) -> None:
        start.wait()
        granted.extend(v for v in (f"{prefix}-{n}-{k}" for k in range(10)) if limits.grant(v))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(granted)


def test_processes_never_spend_more_than_the_burst(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    gate, results = context.Barrier(2), context.Queue()
    path = tmp_path / "visitors.sqlite3"
    processes = [context.Process(target=_grant_many, args=(path, gate, results, name)) for name in "ab"]
    for process in processes:
        process.start()
    granted = [visitor for _ in processes for visitor in results.get(timeout=30)]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    assert len(granted) == 5


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        (None, SHARED_VISITOR),
        ("testclient", "testclient"),
    ],
)
def test_visitor_key(host: str | None, key: str) -> None:
    assert visitor_key(host) == key


def test_visitor_key_of_a_wider_ipv6_network() -> None:
    assert visitor_key("2001:db8:1:2:aaaa::1", 48) == visitor_key("2001:db8:1:ffff::1", 48) == "2001:db8:1::/48"
    assert visitor_key("2001:db8:1:2::1", 56) == "2001:db8:1::/56"
    assert visitor_key("2001:db8:1:1ff::1", 56) == "2001:db8:1:100::/56"
    assert visitor_key("203.0.113.5", 48) == "203.0.113.5", "IPv4 visitors are keyed by their address"
