"""The soak's resource judgment: every life long enough is judged, not only the longest, so a process the
fault schedule restarts every cycle is judged life by life; a replica is judged as the generator from the
first time it takes it over; Redis's keys are one life across redis-server's restarts."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from avatargen.storage.redis.connection import MAX_CONNECTIONS
from avatargen.testing import running_redis
from benchmarks.soak.resources import Reading, Resources, process_usage

CYCLE = 540.0


def readings(pid: int, start: float, values: list[float], role: str = "generator",
             every: float = 10.0) -> list[Reading]:
    return [Reading(start + n * every, pid, role, value) for n, value in enumerate(values)]


def resources() -> Resources:
    return Resources([], threading.Event(), every=10.0)


def test_a_leak_in_one_restarted_life_of_many_does_not_hold() -> None:
    sampled = resources()
    flat = [100.0] * 54  # a cycle of 540 s, a reading every 10 s
    leaking = [100.0 + n for n in range(54)]  # grows by half over its life
    sampled.readings[("files files", "RSS MiB")] = [*readings(1, 0, flat), *readings(2, CYCLE, leaking),
                                                    *readings(3, 2 * CYCLE, flat)]
    [row] = sampled.growth(quick=False, floor=CYCLE / 2)
    assert row.lives == 3 and not row.holds
    assert row.worst > 0.2  # its first half reached 126, its last quarter 153


def test_a_short_life_is_not_judged_and_flat_lives_hold() -> None:
    sampled = resources()
    sampled.readings[("files files", "open fds")] = [*readings(1, 0, [50.0] * 54),
                                                     *readings(2, CYCLE, [50.0, 80.0, 90.0, 99.0])]
    [row] = sampled.growth(quick=False, floor=CYCLE / 2)
    assert row.lives == 1 and row.holds


def test_a_replica_is_judged_as_the_generator_from_its_first_takeover_on() -> None:
    sampled = resources()
    # 20 readings serving visitors at 80 MiB, then it takes the generator over (modules loaded: 175 MiB) and
    # keeps them when it hands the generator back: one visitors life, one generator life, both flat.
    before = readings(7, 0, [80.0] * 20, role="visitors")
    after = [*readings(7, 300, [175.0] * 30), *readings(7, 600, [176.0] * 30, role="visitors")]
    sampled.readings[("redis replica-1", "RSS MiB")] = [*before, *after]
    rows = {row.process: row for row in sampled.growth(quick=False, floor=CYCLE / 2)}
    assert set(rows) == {"redis replica-1 (generator)"}  # 190 s of visitors: under the floor
    assert rows["redis replica-1 (generator)"].holds and rows["redis replica-1 (generator)"].verdict.samples == 60


def test_redis_keys_are_one_life_across_redis_restarts() -> None:
    sampled = resources()
    sampled.readings[("redis redis-server", "Redis keys")] = [
        reading for n, pid in enumerate(range(10, 20))
        for reading in readings(pid, n * 100.0, [150.0 + 10 * n] * 10, role="storage")]
    [row] = sampled.growth(quick=False, floor=CYCLE / 2)
    assert row.lives == 1 and not row.holds  # 150 to 240 keys over the soak: growth, whoever served them


def test_a_redis_pool_filling_up_to_its_bound_holds_and_a_climb_past_it_does_not() -> None:
    """The 60-minute run's one NO: a replica's pool opened 4 more connections to Redis during "Redis slowed"
    (25 open fds to 29). Counted apart, its connections may grow by the pool's bound; past it is a leak."""
    sampled = resources()
    filled = [4.0] * 20 + [8.0 + MAX_CONNECTIONS] * 34  # the pool fills once (a slow Redis) and stays so
    climbing = [4.0 + n for n in range(54)]  # a connection more every sample: a leak
    sampled.readings[("redis replica-1", "Redis connections")] = readings(1, 0, filled)
    [row] = sampled.growth(quick=False, floor=CYCLE / 2)
    assert row.holds
    sampled.readings[("redis replica-1", "Redis connections")] = readings(1, 0, climbing)
    [row] = sampled.growth(quick=False, floor=CYCLE / 2)
    assert not row.holds


CONNECTING = """
import sys, redis
print("ready", flush=True)
sys.stdin.readline()
clients = [redis.Redis.from_url(sys.argv[1]) for _ in range(3)]
for client in clients:
    client.ping()  # each opens its connection
print("connected", flush=True)
sys.stdin.readline()
"""


def test_connections_to_redis_are_counted_apart_from_the_other_descriptors(tmp_path: Path) -> None:
    """Through /proc and the kernel's socket table, of a real process connecting to a real redis-server."""
    with running_redis(tmp_path / "redis") as server, subprocess.Popen(
            [sys.executable, "-c", CONNECTING, server.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True) as client:
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline() == "ready\n"
        rss, fds, threads, to_redis = process_usage(client.pid, server.port)
        client.stdin.write("connect\n")
        client.stdin.flush()
        assert client.stdout.readline() == "connected\n"
        _, fds_connected, _, to_redis_connected = process_usage(client.pid, server.port)
        client.stdin.close()
    assert rss > 0 and threads >= 1
    assert (to_redis, to_redis_connected) == (0, 3)
    assert fds_connected == fds  # the other descriptors are the same
