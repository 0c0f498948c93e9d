"""Waiting between attempts: the wait grows, saturates at its cap, and never overflows."""

from __future__ import annotations

import pytest

from avatargen.retry import backoff_delay, doubling


def test_doubling_grows_then_saturates_at_the_cap() -> None:
    assert [doubling(1.0, attempt, cap=10.0) for attempt in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize("attempt", [1023, 1024, 1025, 10**6])
def test_any_attempt_saturates_at_the_cap_without_overflow(attempt: int) -> None:
    assert doubling(0.5, attempt, cap=60.0) == 60.0
    for _ in range(20):
        assert 30.0 <= backoff_delay(attempt, base=1.0, cap=60.0) <= 60.0
