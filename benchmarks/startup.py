"""Start-up: how long `avatargen serve` takes to answer its first visitor, by how much is in the buckets.

Each row starts a real `avatargen serve` process on the same folders `--rounds` times and times it from
the spawn to the first `GET /avatar` answered with 200 (uvicorn opens the port only once the app's
start-up is done, so this is also how long the port stays closed). It also reads the CPU time the
server process had used by then: on a machine shared with other work the wall time varies a lot, the
CPU time hardly. The buckets are filled the way an
owner restoring a backup fills them: a few avatars published with `Bucket.images.publish`, then copied under
fresh ids (hard links: the same bytes, and the fill takes seconds, not minutes). Rows:
- empty buckets: the floor (interpreter, imports, SQLite, the simulated GPU);
- half uniques, half fallbacks, every unique with its framed copy, as the generator leaves them;
- uniques without their framed copies (a backup restored without `.framed/`): the server must answer at
  once and frame them in the background; the table also gives how long that took.
Target: the first answer within 2 s of the spawn with 100,000 images.

    python -m benchmarks.startup [--quick] [--rounds N] [--images N] [--unframed N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from avatargen.config import load_settings
from avatargen.storage.files.bucket import Bucket, open_buckets
from avatargen.storage.models import new_id
from benchmarks.harness import avatargen_server, parse_args, publish, sample_avatars, scratch, write_config
from benchmarks.report import fmt, median, print_machine, print_table, verdict

TARGET_S = 2.0
TEMPLATES = 20  # distinct avatars the copies are made from
FRAMING_TIMEOUT = 900.0


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="starts per row (default 3)")
    parser.add_argument("--images", type=int, default=100_000, help="images in the full row (default 100,000)")
    parser.add_argument("--unframed", type=int, default=15_000, help="uniques without framed copies (default 15,000)")


def restore(bucket: Bucket, count: int, *, framed: bool) -> None:
    """`count` images in the bucket, copied (hard-linked) from a few published ones under fresh ids."""
    templates = publish(bucket, sample_avatars(TEMPLATES))
    folder = bucket.directory
    for n in range(count - TEMPLATES):
        source, image_id = templates[n % TEMPLATES], new_id()
        os.link(folder / f"{source}.json", folder / f"{image_id}.json")
        if framed and bucket.prepare is not None:
            os.link(folder / ".framed" / f"{source}.webp", folder / ".framed" / f"{image_id}.webp")
        os.link(folder / f"{source}.webp", folder / f"{image_id}.webp")
    if not framed:
        for path in (folder / ".framed").iterdir():
            path.unlink()


def time_to_first_avatar(config: Path, log: Path) -> tuple[float, float]:
    """Seconds from the spawn of `avatargen serve` to its first `GET /avatar` answered with 200, and the CPU
    seconds the server had used by then; stopped after."""
    server = avatargen_server(config, log)
    server.health_path = "/avatar"
    started = time.monotonic()
    with server:
        return time.monotonic() - started, server.cpu_seconds()


def framing_seconds(config: Path, log: Path, count: int) -> tuple[float, float, float]:
    """Start the server on uniques lacking framed copies: seconds to the first avatar, CPU seconds used by
    then, and seconds until all are framed."""
    framed = load_settings(config).buckets.unique.dir / ".framed"
    server = avatargen_server(config, log)
    server.health_path = "/avatar"
    started = time.monotonic()
    with server:
        answered, cpu = time.monotonic() - started, server.cpu_seconds()
        while sum(1 for _ in os.scandir(framed)) < count:
            if time.monotonic() - started > FRAMING_TIMEOUT:
                raise SystemExit(f"not every unique was framed within {FRAMING_TIMEOUT:g}s")
            time.sleep(0.1)  # nothing announces the end of background framing to another process
        return answered, cpu, time.monotonic() - started


def row_config(work: Path, name: str, unique: int, fallback: int) -> Path:
    folder = work / name
    folder.mkdir()
    config = write_config(folder, {"buckets": {"unique": {"max": unique}, "fallback": {"max": fallback}},
                                   "server": {"data_dir": "data"}})
    (folder / "data").mkdir()
    return config


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    rounds, images, unframed = (1, 1_000, 50) if args.quick else (args.rounds, args.images, args.unframed)
    print_machine()
    rows, notes = [], []
    with scratch() as work:
        empty = row_config(work, "empty", 0, 0)
        full = row_config(work, "full", images // 2, images - images // 2)
        buckets = open_buckets(load_settings(full))
        restore(buckets["unique"], images // 2, framed=True)
        restore(buckets["fallback"], images - images // 2, framed=True)
        bare = row_config(work, "unframed", unframed, 0)
        restore(open_buckets(load_settings(bare))["unique"], unframed, framed=False)
        time.sleep(1.5)  # let the folders' mtimes age, as a restored backup's have: no rescan forced
        for name, config, count in (("empty buckets", empty, 0), (f"{images:,} images, uniques framed", full, images)):
            starts = [time_to_first_avatar(config, config.parent / "server.log") for _ in range(rounds)]
            seconds, cpu = [wall for wall, _ in starts], [used for _, used in starts]
            rows.append([name, f"{count:,}", fmt(median(seconds)), fmt(max(seconds)), fmt(median(cpu)), "-"])
            if count:
                notes.append(f"target: first avatar within {TARGET_S:g} s with {images:,} images: "
                             f"{fmt(median(seconds))} s, {verdict(median(seconds) <= TARGET_S)}")
        answered, cpu_used, all_framed = framing_seconds(bare, bare.parent / "server.log", unframed)
        rows.append([f"{unframed:,} uniques without framed copies", f"{unframed:,}", fmt(answered), fmt(answered),
                     fmt(cpu_used), fmt(all_framed)])
    print_table("Start-up: spawn to the first GET /avatar answered", [
        "buckets", "images", "median s", "max s", "server CPU s by then", "all framed after s"], rows, [
        f"{rounds} start(s) per row (the unframed row: one, its framing is done after it); a fresh "
        "`avatargen serve` process each time, images copied from published ones as a restored backup is",
        *notes,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
