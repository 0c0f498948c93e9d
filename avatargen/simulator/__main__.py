"""`python -m avatargen.simulator`: the simulated GPU as a process of its own.

Prints one JSON line (`api`, `api_url`, `sd_url`, `api_key`, `machine_id`, `backend`) once it listens, then
serves until SIGTERM or Ctrl-C. A machine that must outlive an avatargen process (the test of "a
machine found running at start-up is stopped") lives in such a process.
"""

from __future__ import annotations

import argparse
import sys

from avatargen.config import PROVIDER_APIS, SD_BACKENDS, SIMULATED_WEBUIS, SimulatedSettings
from avatargen.durations import parse_duration
from avatargen.simulator.faults import FAULTS
from avatargen.simulator.runner import DEFAULT_PRICE, serve_simulator


def _duration(text: str) -> float:
    try:
        return parse_duration(int(text) if text.isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _price(text: str) -> float:
    try:
        price = float(text)
    except ValueError:
        price = -1.0
    if not 0 <= price < float("inf"):
        raise argparse.ArgumentTypeError(f"an hourly price is a number of 0 or more, got {text!r}")
    return price


def _parser() -> argparse.ArgumentParser:
    defaults = SimulatedSettings()
    parser = argparse.ArgumentParser(prog="python -m avatargen.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api", choices=PROVIDER_APIS, default=defaults.api,
                        help="the cloud API to speak (default: paperspace; runpod_serverless: a serverless endpoint)")
    parser.add_argument("--api-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--sd-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--boot-delay", type=_duration, default=defaults.boot_delay, help="e.g. 8s")
    parser.add_argument("--stop-delay", type=_duration, default=defaults.stop_delay)
    parser.add_argument("--sd-boot-delay", type=_duration, default=defaults.sd_boot_delay)
    parser.add_argument("--step-time", type=_duration, default=defaults.step_time, help="e.g. 50ms")
    parser.add_argument("--backend", default="a1111", choices=SD_BACKENDS, help="the SD server to simulate")
    parser.add_argument("--webui", default=defaults.webui, choices=SIMULATED_WEBUIS,
                        help="with --backend a1111, which web UI (default: automatic1111)")
    parser.add_argument("--hourly-price", type=_price, default=DEFAULT_PRICE,
                        help=f"what the machine's API says an hour costs (default {DEFAULT_PRICE})")
    parser.add_argument("--fault", action="append", default=[], choices=sorted(FAULTS),
                        help="inject a fault (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = SimulatedSettings(api=args.api, boot_delay=args.boot_delay, stop_delay=args.stop_delay,
                                 sd_boot_delay=args.sd_boot_delay, step_time=args.step_time,
                                 faults=tuple(args.fault), webui=args.webui)
    return serve_simulator(settings, args.host, args.api_port, args.sd_port, args.backend, args.hourly_price)


if __name__ == "__main__":
    sys.exit(main())
