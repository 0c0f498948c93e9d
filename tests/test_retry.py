"""Waiting between attempts: one backoff for the generator's retries and the panel's reconnects."""

from __future__ import annotations

from avatargen.retry import Backoff, backoff_delay


def test_a_reconnect_policy_doubles_up_to_its_maximum_and_says_what_it_waits() -> None:
    backoff = Backoff(initial=0.5, maximum=4)
    assert [backoff.delay(failures) for failures in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]


def test_retries_keep_a_random_half_to_all_of_the_doubled_wait() -> None:
    for attempt in range(8):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert all(ceiling / 2 <= backoff_delay(attempt, base=0.5, cap=30.0) <= ceiling for _ in range(20))


def test_a_thousand_failed_attempts_still_wait_the_cap() -> None:
    """The machine-stop loop retries for as long as it takes: its thousandth wait must not overflow."""
    assert backoff_delay(1024, base=1.0, cap=60.0, jitter=False) == 60.0
    assert Backoff(initial=1.0, maximum=60.0).delay(1_000_000) == 60.0
