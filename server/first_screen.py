"""What `avatargen serve` says before anything else: which config is in force and what the server will do.

Started in a folder without config.toml (and without --config), the server runs on the built-in
defaults. Those are the real-use ones (buckets of 1000 to 2500 images); on the simulated GPU, which is
all the built-in defaults can run, they would start a 4,500-image run at once. So without a config file
the buckets take the demo sizes of the shipped config.toml instead, and the first lines say so loudly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from avatargen.api import money
from avatargen.config import Settings
from avatargen.durations import format_duration

# The shipped config.toml's demo buckets (min, max); tests/test_serve_discovery.py keeps them equal.
DEMO_BUCKETS = {"unique": (10, 30), "fallback": (20, 40)}


def settings_in_force(settings: Settings) -> Settings:
    """The settings to serve: those loaded, except that without a config file the simulated demo gets
    demo-sized buckets (the rest of the built-in defaults stay as they are)."""
    if settings.path is not None or settings.gpu.provider != "simulated":
        return settings
    buckets = settings.buckets
    for name, (low, high) in DEMO_BUCKETS.items():
        buckets = replace(buckets, **{name: replace(getattr(buckets, name), min=low, max=high)})
    return replace(settings, buckets=buckets)


def first_screen(settings: Settings) -> tuple[list[str], list[str]]:
    """(warnings, notes): the lines that open the server's log."""
    warnings = []
    if settings.path is None:
        warnings.append(f"no config file: neither --config nor a config.toml in {Path.cwd()}; running the built-in "
                        "defaults, a demo on the simulated GPU with small buckets. Copy the shipped config.toml "
                        "here (or pass --config) to choose your own settings")
        config = "built-in defaults"
    else:
        config = str(settings.path.resolve())
    provider = settings.gpu.provider
    machine = ("a simulated GPU (nothing is rented or billed)" if provider == "simulated"
               else f"the {provider} machine (billed while it runs; daily budget {money(settings.gpu.daily_budget)})")
    levels = ", ".join(f"{name} {bucket.min} to {bucket.max}" for name, bucket in settings.buckets.items())
    most = sum(bucket.max for _, bucket in settings.buckets.items() if bucket.min > 0)
    notes = [f"config: {config}",
             f"buckets: {levels} images (refilled from min to max; up to {most} images in a run from empty), "
             f"checked now and every {format_duration(settings.generator.check_every)} on {machine}"]
    return warnings, notes
