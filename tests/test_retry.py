"""Waiting between attempts: the wait grows, saturates at its cap, and never overflows; the panel reconnects
with the same doubling."""

from __future__ import annotations

import pytest

from avatargen.retry import Backoff, backoff_delay, doubling


def test_doubling_grows_then_saturates_at_the_cap() -> None:
    assert [doubling(1.0, attempt, cap=10.0) for attempt in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize("attempt", [1023, 1024, 1025, 10**6])
def test_any_attempt_saturates_at_the_cap_without_overflow(attempt: int) -> None:
    assert doubling(0.5, attempt, cap=60.0) == 60.0
    for _ in range(20):
        assert 30.0 <= backoff_delay(attempt, base=1.0, cap=60.0) <= 60.0


def test_a_reconnect_policy_doubles_up_to_its_maximum_and_says_what_it_waits() -> None:
    backoff = Backoff(initial=0.5, maximum=4)
    assert [backoff.delay(failures) for failures in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert Backoff(initial=1.0, maximum=60.0).delay(1_000_000) == 60.0
