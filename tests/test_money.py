"""Money reads the same everywhere (`avatargen.api.money`): the panel, `avatargen status`, the messages."""

from __future__ import annotations

import pytest

from avatargen.api import money


@pytest.mark.parametrize(("amount", "shown"), [
    (0, "0.00"),
    (1.25, "1.25"),
    (3600, "3600.00"),
    (0.1, "0.10"),  # from 0.10 up: two decimals
    (0.1049, "0.10"),
    (12.344, "12.34"),
    (0.0523, "0.0523"),  # under 0.10: three significant digits, so a cheap run does not read as free
    (0.00633, "0.00633"),
    (0.0004567, "0.000457"),
    (0.0999, "0.0999"),
    (0.09996, "0.10"),  # rounds up to 0.10, and then reads as 0.10 does
    (0.05, "0.05"),  # trailing zeros dropped, two decimals kept
    (0.03, "0.03"),
    (0.001, "0.001"),
])
def test_two_decimals_and_three_significant_digits_under_ten_cents(amount: float, shown: str) -> None:
    assert money(amount) == shown
