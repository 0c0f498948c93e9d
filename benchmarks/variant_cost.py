"""Avatar variants: what each size and format weighs, and what making them costs in CPU.

Avatars drawn by the simulator's painter and stored as the generator stores them (256 px WebP). For each
size of `serving.sizes` and each format, the median bytes of the variant and the CPU a fallback's variant
costs when a serving process makes it on first use; then, per unique, the CPU of making every framed
variant at publish time (in the imaging process) and the disk its archive takes beside the image.
CPU time is the process's (all threads: libavif encodes on several).

    python -m benchmarks.variant_cost [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial

from avatargen.config import Settings
from avatargen.variants import FORMATS, framed_variants, variant
from benchmarks.harness import parse_args, sample_avatars
from benchmarks.report import fmt, median, print_machine, print_table


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=40, help="avatars measured (default 40)")


def cpu_ms(work: Callable[[], bytes]) -> tuple[float, bytes]:
    """The CPU milliseconds `work` took in this process, and what it made."""
    started = time.process_time()
    made = work()
    return (time.process_time() - started) * 1000, made


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    count = 3 if args.quick else args.images
    settings = Settings()
    quality, sizes = settings.generator.webp_quality, settings.sizes
    print_machine()
    avatars = sample_avatars(count, settings.generator.image_size, quality)
    rows = []
    for size in sizes:
        for form in FORMATS:
            measured = [cpu_ms(partial(variant, webp, size, form, quality)) for webp in avatars]
            rows.append([str(size), form.name, fmt(median([len(made) for _, made in measured]), 0),
                         fmt(median([ms for ms, _ in measured]), 1)])
    archives = [cpu_ms(partial(framed_variants, webp, quality, sizes)) for webp in avatars]
    stored = median([len(webp) for webp in avatars])
    print_table("Avatar variants: bytes and CPU per image", [
        "size", "format", "bytes (median)", "fallback variant CPU ms (median)"], rows, [
        f"{count} avatars drawn by the simulator's painter, stored as {settings.generator.image_size} px WebP "
        f"(median {fmt(stored, 0)} bytes); sizes {list(sizes)}; AVIF q50 speed 8, WebP q{quality}, JPEG q75",
        f"a unique at publish time, every size and format framed: {fmt(median([ms for ms, _ in archives]), 1)} ms "
        f"CPU (median), its archive {fmt(median([len(made) for _, made in archives]), 0)} bytes on disk or in "
        f"Redis beside the {fmt(stored, 0)}-byte image",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
