"""The prompt composer follows the seed's recipe and its weights, over 10,000 prompts."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from avatargen.config import PromptSettings
from avatargen.prompts import sample

N = 10_000
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "weights",
    [
        {"film_only": 0.2, "artist_only": 0.7, "both": 0.1},
        {"film_only": 0.0, "artist_only": 0.5, "both": 0.25},
        {"film_only": 0.3, "artist_only": 0.0, "both": 0.0},
    ],
)
def test_category_shares_follow_weights(weights: dict[str, Any]) -> None:
    settings = replace(PromptSettings(), **weights)
    prompts = sample(settings, N, seed=1)
    shares: Counter[str] = Counter(p.reference for p in prompts)
    expected = dict(weights, neither=1 - sum(weights.values()))
    for kind, weight in expected.items():
        assert abs(shares[kind] / N - weight) <= 0.02, (kind, shares[kind] / N, weight)
        if weight == 0:
            assert shares[kind] == 0
    for p in prompts:
        assert ("from the film " in p.text) == (p.film is not None)
        assert ("in the style of " in p.text) == (p.artist is not None)


def test_suffixes_in_range_and_distinct_and_subject_present() -> None:
    settings = replace(PromptSettings(), subject="(((cjs)))", suffix_min=2, suffix_max=5)
    counts: Counter[int] = Counter()
    for p in sample(settings, N, seed=2):
        assert 2 <= len(p.suffixes) <= 5
        assert len(set(p.suffixes)) == len(p.suffixes)
        assert p.text.startswith(f"{p.prefix} of (((cjs)))")
        assert p.text.endswith(p.suffixes[-1])
        counts[len(p.suffixes)] += 1
    assert set(counts) == {2, 3, 4, 5}


def test_zero_weight_word_never_used_and_prefixes_vary() -> None:
    settings = replace(PromptSettings(), film_only=0.0, both=0.0, artist_only=1.0)
    prompts = sample(settings, N, seed=3)
    assert all(p.film is None and p.artist for p in prompts)
    assert {p.prefix for p in prompts} == set(settings.prefixes)


def test_deterministic_for_a_seed() -> None:
    settings = PromptSettings()
    assert [p.text for p in sample(settings, 50, seed=7)] == [p.text for p in sample(settings, 50, seed=7)]
    assert [p.text for p in sample(settings, 50, seed=7)] != [p.text for p in sample(settings, 50, seed=8)]


def test_cli_prints_prompts() -> None:
    run = [sys.executable, "-m", "server.cli", "prompts", "-n", "20", "--seed", "7",
           "--config", str(ROOT / "config.toml")]
    first = subprocess.run(run, capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()
    again = subprocess.run(run, capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()
    assert len(first) == 20 and first == again
    assert all(" of cjs" in line for line in first)
