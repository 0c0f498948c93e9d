"""The `avatargen` command: serve, prompts, check-config, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from avatargen import prompts
from avatargen.config import ConfigError, Settings, find_config, load_settings

EXIT_CONFIG = 2


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(find_config(args.config))


def cmd_prompts(args: argparse.Namespace) -> int:
    settings = _load(args)
    for prompt in prompts.sample(settings.prompts, args.n, args.seed):
        print(prompt.text)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from server.serve import preflight

    path = find_config(args.config)
    settings = load_settings(path)
    preflight(settings)
    where = path if path is not None else "built-in defaults (no config.toml here)"
    print(f"{where}: OK (provider {settings.gpu.provider}, data in {settings.server.data_dir})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from server.serve import serve

    settings = _load(args)
    return serve(settings, host=args.host, port=args.port)


def cmd_simulate(args: argparse.Namespace) -> int:
    from avatargen.simulator.runner import run_simulator

    settings = _load(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulator(settings.gpu.simulated, args.host, args.paperspace_port, args.sd_port))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatargen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", type=Path, default=None,
                             help="config file (default: ./config.toml if present, else built-in defaults)")
        command.set_defaults(func=func)
        return command

    serve = add("serve", cmd_serve, "run the visitor server, the admin API and the generator")
    serve.add_argument("--host", default=None, help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default: server.port)")

    sample = add("prompts", cmd_prompts, "print sample prompts")
    sample.add_argument("-n", type=int, default=10, help="how many (default 10)")
    sample.add_argument("--seed", type=int, default=None, help="random seed, for repeatable output")

    add("check-config", cmd_check_config, "validate the configuration and exit")

    simulate = add("simulate", cmd_simulate, "run the simulated Paperspace and SD web UI on loopback")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--paperspace-port", type=int, default=0)
    simulate.add_argument("--sd-port", type=int, default=0)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"avatargen: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        return 130


if __name__ == "__main__":
    sys.exit(main())
