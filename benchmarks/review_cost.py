"""Safety gate: what checking one avatar with NudeNet costs the imaging process.

Measured where the generator runs it: in a spawned process of its own, on the stored avatars (the
shipped image_size and webp_quality) made from SD-sized 512 px PNGs, as base64 like the web UI sends
them. The images are real photographs shipped in scikit-image's wheel (a portrait, a cat, ...) and the
simulator's drawings. For scale, the imaging work every image already costs (decode the PNG, resize,
encode WebP) is timed on the same images, and so is the first check in a fresh process, which loads
the detector. Every check must give an answer: a "gate failed" verdict ends the benchmark.

    python -m benchmarks.review_cost [--quick] [--rounds N] [--size PX]
"""

from __future__ import annotations

import argparse
import base64
import io
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from PIL import Image
from skimage import data

from avatargen import review
from avatargen.config import GeneratorSettings, ReviewSettings
from avatargen.imaging import make_avatars
from avatargen.simulator.drawing import draw_avatar
from benchmarks.harness import parse_args
from benchmarks.report import fmt, median, percentile, print_machine, print_table

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "camera", "rocket")
DRAWINGS = 3
SD_EDGE = 512
RULES = ReviewSettings(enabled=True, require_face=True)  # the shipped block rules, and a face required
Timing = tuple[float, float]  # (wall ms, CPU ms of the process)


def options(parser: argparse.ArgumentParser) -> None:
    defaults = GeneratorSettings()
    parser.add_argument("--rounds", type=int, default=20, help="times each image is checked (default 20)")
    parser.add_argument("--size", type=int, default=defaults.image_size,
                        help=f"stored avatar edge, px (default {defaults.image_size}, the shipped image_size)")


def sd_images() -> dict[str, str]:
    """512 px PNGs as base64, as the SD web UI sends them, by name: the photographs and simulator drawings."""
    pictures = {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOGRAPHS}
    pictures |= {f"drawing {n}": draw_avatar(f"A painting of cjs, benchmark {n}", n, SD_EDGE, SD_EDGE)
                 for n in range(DRAWINGS)}
    encoded = {}
    for name, picture in pictures.items():
        out = io.BytesIO()
        picture.resize((SD_EDGE, SD_EDGE), Image.Resampling.LANCZOS).save(out, format="PNG")
        encoded[name] = base64.b64encode(out.getvalue()).decode("ascii")
    return encoded


def timed(call: Callable[..., Any], *args: Any) -> tuple[Any, Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = call(*args)
    return result, ((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000)


def in_imaging_process(sources: list[str], size: int, quality: int, rounds: int) -> dict[str, Any]:
    """Runs in a fresh spawned process, as the generator's imaging process: each image's verdict (the
    first check imports NudeNet and loads its model), then its imaging work and its check, `rounds` times."""
    avatars = [webp for webp, _ in make_avatars(sources, size, quality, None)]
    verdicts, first = zip(*(timed(review.check, avatar, RULES) for avatar in avatars), strict=True)
    imaging: list[Timing] = []
    gate: list[Timing] = []
    for _ in range(rounds):
        for source, avatar in zip(sources, avatars, strict=True):
            imaging.append(timed(make_avatars, [source], size, quality, None)[1])
            gate.append(timed(review.check, avatar, RULES)[1])
    return {"first": first[0], "imaging": imaging, "gate": gate, "verdicts": verdicts}


def row(step: str, timings: list[Timing]) -> list[str]:
    wall = [milliseconds for milliseconds, _ in timings]
    cpu = [milliseconds for _, milliseconds in timings]
    return [step, str(len(timings)), fmt(median(wall), 1), fmt(percentile(wall, 99), 1), fmt(median(cpu), 1)]


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    rounds = 1 if args.quick else args.rounds
    quality = GeneratorSettings().webp_quality
    print_machine()
    sources = sd_images()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(in_imaging_process, list(sources.values()), args.size, quality, rounds).result()
    verdicts = dict(zip(sources, result["verdicts"], strict=True))
    failed = [str(reason) for verdict in verdicts.values() for reason in verdict.reasons
              if reason.kind == "gate_failed"]
    if failed:
        raise SystemExit(f"the gate could not run: {failed[0]}")
    held = ", ".join(f"{name} ({'; '.join(map(str, verdict.reasons))})"
                     for name, verdict in verdicts.items() if verdict.held)
    gate_ms = median([milliseconds for milliseconds, _ in result["gate"]])
    imaging_ms = median([milliseconds for milliseconds, _ in result["imaging"]])
    print_table("Safety gate: cost per image", ["step", "images", "median ms", "p99 ms", "CPU ms (median)"], [
        row(f"imaging without the gate ({SD_EDGE} px PNG -> {args.size} px WebP)", result["imaging"]),
        row(f"safety gate ({args.size} px avatar)", result["gate"]),
        row("first check in a fresh process (imports and loads NudeNet)", [result["first"]]),
    ], [
        f"{len(sources)} images ({len(PHOTOGRAPHS)} scikit-image photographs, {DRAWINGS} simulator drawings), "
        f"{rounds} round(s), in a spawned process like the generator's imaging process",
        f"rules: the shipped block list and require_face; held back: {held or 'none'}",
        f"the gate adds {fmt(gate_ms / imaging_ms * 100, 0)}% to the imaging work of an image "
        f"({fmt(gate_ms, 1)} ms on one core); an SD image takes seconds of GPU time",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
