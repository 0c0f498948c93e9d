"""Compressed days for the soak benchmark: AVATARGEN_DAY_SECONDS makes "today" (today's spend, the daily
budget, the history) start again every N seconds, so an hour's soak sees many midnights; unset, days are UTC
days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from avatargen.storage.spend import DAY, DAY_SECONDS_ENV, Entry, Spend, daily, day_length, day_start

NOON = datetime(2026, 12, 10, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 10, tzinfo=UTC).timestamp()


def test_without_the_variable_a_day_is_a_utc_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DAY_SECONDS_ENV, raising=False)
    assert (day_length(), day_start(NOON)) == (DAY, MIDNIGHT)


def test_a_compressed_day_resets_todays_spend_at_each_of_its_midnights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DAY_SECONDS_ENV, "60")
    now = NOON + 30  # half a minute into a one-minute "day"
    assert day_start(now) == NOON
    entries = [Entry("yesterday", NOON - 50, NOON - 20, 3.6), Entry("across", NOON - 10, NOON + 20, 3.6)]
    spend = Spend.of(entries, now)
    assert spend.billed_seconds_today == 20  # the part after the compressed midnight only
    assert spend.today == pytest.approx(20 / 1000)
    assert spend.billed_seconds_month == 30 + 30  # months stay calendar months
    days = daily(entries, 2, now)
    assert [day.billed_seconds for day in days] == [30 + 10, 20]


@pytest.mark.parametrize("raw", ["0", "-5", "ten", "nan", str(2 * DAY)])
def test_a_day_length_out_of_range_is_an_error_that_names_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                                       raw: str) -> None:
    monkeypatch.setenv(DAY_SECONDS_ENV, raw)
    with pytest.raises(ValueError, match=f"{DAY_SECONDS_ENV} must be a number of seconds.*{raw}"):
        day_start(NOON)
