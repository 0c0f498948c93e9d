"""Printing figures: percentiles, Markdown tables (pasted into docs/benchmarks.md as they are), the machine."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (`share` 0-100): a value that was actually measured."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(value: float, digits: int = 2) -> str:
    """A figure for a table: fixed decimals, thousands separated."""
    return f"{value:,.{digits}f}"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]],
                notes: Sequence[str] = ()) -> None:
    """A Markdown table under a `### title`, then notes as a list."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    print(flush=True)


def machine() -> str:
    """Where the figures come from: cores, CPU model, memory, Python, date."""
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    memory_kb = next((int(line.split()[1]) for line in _lines("/proc/meminfo") if line.startswith("MemTotal:")), 0)
    return (f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
            f"{memory_kb / 1024 / 1024:.0f} GiB RAM, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, {datetime.now(UTC):%Y-%m-%d}")


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def print_machine() -> None:
    print(f"machine: {machine()}", flush=True)
