"""Money as the owner reads it: one rule for the panel, the commands and the messages to the owner.

Amounts are in the owner's currency, with no symbol: whatever `gpu.hourly_cost` (or the pod's own price)
is in. Two decimals ("1.25", "0.10", "0.00"); an amount above zero but under 0.10 keeps three significant
digits instead ("0.0523", "0.00633"; trailing zeros dropped, two decimals kept: "0.05"), so a short run
on a cheap or simulated GPU does not read as free.
"""

from __future__ import annotations

import math

SMALL = 0.1  # below this (and above zero), three significant digits instead of two decimals


def money(amount: float) -> str:
    """`amount` as the owner reads it (the rule is in the module's docstring and in docs/money.md)."""
    if not 0 < amount < SMALL:
        return f"{amount:.2f}"
    text = f"{amount:.{2 - math.floor(math.log10(amount))}f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction:0<2}"
