"""The `avatargen` command: the server and generator (`serve`), and the owner's tools around it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from avatargen import prompts, review
from avatargen.api import (
    AdminClient,
    AdminError,
    History,
    ProtocolError,
    RunView,
    TokenError,
    Unreachable,
    find_token,
    money,
    server_url,
)
from avatargen.cli_options import add_version, count, http_url, integer, refuse, setting
from avatargen.config import BUCKET_NAMES, ConfigError, Settings, find_config, load_settings
from avatargen.durations import format_duration

EXIT_CONFIG = 2  # a config or command-line error (argparse's usage errors are 2 as well)
EXIT_CANNOT_LISTEN = 4  # serve: the port is in use or the address is not this machine's
EXIT_REFUSED = 1  # migrate: a server runs; serve: a migration runs (each refuses the other)
ASK_PROVIDER_WITHIN = 5.0  # check-config: seconds for the provider's API to answer, retries included
UNREACHABLE_HINT = ("Is `avatargen serve` running with the same --config? A server on another machine, or one "
                    "started with another data folder, is reached with --url http://HOST:PORT")


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(find_config(args.config))


def bucket_name(text: str) -> str:
    """A bucket named on the command line (not argparse `choices`: with nargs="*" it rejects naming none)."""
    if text not in BUCKET_NAMES:
        raise argparse.ArgumentTypeError(f"no bucket {text!r}; buckets are {', '.join(BUCKET_NAMES)}")
    return text


def cmd_prompts(args: argparse.Namespace) -> int:
    settings = _load(args)
    for prompt in prompts.sample(settings.prompts, args.n, args.seed):
        print(prompt.text)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config, then ask the provider's API about the machine as the generator would at start-up."""
    from avatargen.gpu import MachineError, ask_provider, settings_warnings
    from server.preflight import preflight

    path = find_config(args.config)
    settings = load_settings(path)
    notes = preflight(settings)
    warnings = settings_warnings(settings)
    if problem := review.missing_extra(settings.review):
        warnings.append(problem)
    if urls := settings.notify.all_urls():
        from avatargen.notify import not_understood

        warnings += [f"[notify] urls: Apprise does not understand {url} (see `avatargen notify --test`)"
                     for url in not_understood(urls)]
    if (provider := settings.gpu.provider) in ("paperspace", "runpod", "runpod_serverless"):  # preflight: the key
        vendor = getattr(settings.gpu, provider)
        print(f"avatargen: asking the {provider} API at {vendor.api_url} about the machine "
              f"(at most {ASK_PROVIDER_WITHIN:g}s)...", file=sys.stderr, flush=True)
        try:
            warnings += asyncio.run(asyncio.wait_for(ask_provider(settings), ASK_PROVIDER_WITHIN))
        except TimeoutError:
            warnings.append(f"the {provider} API did not answer within {ASK_PROVIDER_WITHIN:g}s: the machine was "
                            "not checked (the server retries for longer when it starts)")
        except MachineError as exc:
            warnings.append(f"could not ask the {provider} API about the machine: {exc}")
    if settings.gpu.provider == "always_on" and settings.sd.backend == "a1111":  # its web UI answers now
        from avatargen.sd import ask_sd_server

        sd_notes, sd_warnings = asyncio.run(ask_sd_server(settings))
        notes += sd_notes
        warnings += sd_warnings
    if settings.storage.backend == "redis":
        from avatargen.storage.redis.connection import ask_redis

        if problem := asyncio.run(ask_redis(settings.storage)):
            warnings.append(problem)
    for warning in warnings:
        print(f"avatargen: warning: {warning}", file=sys.stderr)
    where = path if path is not None else "built-in defaults (no config.toml here)"
    print(f"{where}: OK (provider {settings.gpu.provider}, data in {settings.server.data_dir})")
    for note in notes:
        print(note)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from avatargen.storage.files.lock import DataFolderInUse
    from server.serve import CannotListen, serve

    settings = _load(args)
    try:
        return serve(settings, host=args.host, port=args.port)
    except CannotListen as exc:
        print(f"avatargen: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    except DataFolderInUse as exc:
        print(f"avatargen: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def cmd_migrate(args: argparse.Namespace) -> int:
    from avatargen.storage.migrate import MigrationRefused, migrate

    settings = _load(args)
    try:
        moved = asyncio.run(migrate(settings, args.to))
    except MigrationRefused as exc:
        print(f"avatargen: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if moved.set_aside:
        print(f"{moved.set_aside} broken image(s) were not moved: they stay in the folders' .rejected/")
    print(f'done: set [storage] backend = "{args.to}" in {settings.path or "config.toml"} and start the servers')
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from avatargen.backup import BackupRefused, backup

    settings = _load(args)
    try:
        copied = backup(settings, args.dest)
    except BackupRefused as exc:
        print(f"avatargen: {exc}", file=sys.stderr)
        return 1
    print(f"backup in {args.dest}: {copied.describe()}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from avatargen.backup import BackupRefused, restore

    settings = _load(args)
    try:
        copied = restore(settings, args.source, replace=args.replace)
    except BackupRefused as exc:
        print(f"avatargen: {exc}", file=sys.stderr)
        return 1
    print(f"restored from {args.source}: {copied.describe()}")
    print(f"the backup's config is {args.source / 'config.toml'}; this restore used "
          f"{settings.path or 'the built-in defaults'}. Start the server: avatargen serve")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    """Send one test message through every [notify] URL and say which ones worked (1 if any did not)."""
    from avatargen.notify import Message, try_urls

    settings = _load(args)
    urls = settings.notify.all_urls()
    if not urls:
        print(f"avatargen: no [notify] urls in {settings.path or 'the config'} (nor in ${settings.notify.urls_env}): "
              "nothing to test", file=sys.stderr)
        return 1
    message = Message("test", "avatargen: test message",
                      f"A test from avatargen on {socket.gethostname()}: the owner's messages reach you here.")
    results = asyncio.run(try_urls(urls, message))
    for url, reason in results.items():
        print(f"OK      {url}" if reason is None else f"FAILED  {url}: {reason}")
    return 1 if any(reason is not None for reason in results.values()) else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from avatargen.gpu.providing import serve_simulated

    if args.api_port and args.api_port == args.sd_port:
        refuse(args, f"--api-port and --sd-port are both {args.api_port}: the machine API and the SD server "
                     "need a port each")
    return serve_simulated(_load(args), args.host, args.api_port, args.sd_port)


def _as_owner(args: argparse.Namespace, action: Callable[[AdminClient], Awaitable[str]]) -> int:
    """Run one admin API call through the admin API client (URL and token found as the TUI finds them) and
    print its answer."""
    settings = _load(args)
    try:
        token = find_token(args.token, settings)
    except TokenError as exc:
        print(f"avatargen: {exc}", file=sys.stderr)
        return 1

    async def call() -> str:
        async with AdminClient(args.url or server_url(settings), token) as client:
            return await action(client)

    try:
        print(asyncio.run(call()))
    except Unreachable as exc:
        print(f"avatargen: {exc}\n{UNREACHABLE_HINT}", file=sys.stderr)
        return 1
    except (AdminError, ProtocolError) as exc:
        print(f"avatargen: {exc}", file=sys.stderr)
        return 1
    return 0


def _describe_run(run: RunView) -> str:
    targets = ", ".join(f"{count} {name}" for name, count in run.targets.items())
    held = f", {run.held} held back" if run.held else ""
    counts = f"{run.done}/{run.total} done{held}, {run.failed} failed"
    step = run.step
    making = f"; SD step {step.sampling_step}/{step.sampling_steps}" if step and step.sampling_steps else ""
    return f"run {run.id} ({run.trigger}, {run.state}): {counts}; {targets}{making}"


def history_lines(history: History) -> list[str]:
    """The panel's charts as text: the run minute by minute, the days' totals and each day with a run."""
    lines = []
    if (run := history.run) is not None:
        which = "this run" if run.outcome is None else "last run"
        per_minute = " ".join(str(minute.images) for minute in run.minutes)
        spent = run.minutes[-1].spend if run.minutes else 0.0
        lines.append(f"{which} {run.id}, images per minute: {per_minute}; spent {money(spent)}")
    days = history.days
    busy = [day for day in days if day.billed_seconds > 0 or day.images > 0]
    lines.append(f"last {len(days)} days: {sum(day.images for day in days)} images, "
                 f"{format_duration(sum(day.billed_seconds for day in days))} billed, "
                 f"{money(sum(day.spend for day in days))} spent ({len(busy)} day{'s' if len(busy) != 1 else ''} "
                 "with runs)")
    lines += [f"  {day.date}: {day.images} images, {format_duration(day.billed_seconds)} billed, {money(day.spend)}"
              for day in busy]
    return lines


async def _status(client: AdminClient) -> str:
    status = await client.status()
    machine = status.machine_state or "unknown"
    lines = [f"state: {status.state.replace('_', ' ')} (machine {machine}, {status.provider})"]
    lines += [f"{name}: {level.count} (min {level.min}, max {level.max})"
              + (f"; {level.held} held back for review" if level.held else "")
              for name, level in status.buckets.items()]
    if status.run is not None:
        lines.append(_describe_run(status.run))
    if status.last_run is not None:
        last = status.last_run
        lines.append(f"last run {last.run.id}: {last.outcome}" + (f" ({last.error})" if last.error else ""))
    cost = status.cost
    rate = "" if cost.hourly_rate is None else f"; billed at {money(cost.hourly_rate)} an hour ({cost.rate_source})"
    lines.append(f"spent today {money(cost.today)} of {money(cost.daily_budget)}, this month {money(cost.month)}{rate}")
    if status.paused_reason:
        lines.append(f"automatic refills paused: {status.paused_reason}")
    lines += [f"note: {note}" for note in status.machine_notes]
    if (notes := status.notifications).failed:
        lines.append(f"messages to the owner not delivered: {notes.failed} (of {notes.sent + notes.failed}); "
                     f"last: {notes.last_failure} (avatargen notify --test)")
    visitors = status.visitors
    if visitors.errors and visitors.last_error_at is not None:
        lines.append(f"visitors given another avatar because of an error: {visitors.errors}; "
                     f"last at {visitors.last_error_at:%Y-%m-%d %H:%M:%S} UTC: {visitors.last_error}")
    try:
        lines += history_lines(await client.history(30))
    except AdminError as exc:
        if exc.status != 503:  # another process runs the generator: it holds the run's chart
            raise
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    return _as_owner(args, _status)


def cmd_refill(args: argparse.Namespace) -> int:
    async def refill(client: AdminClient) -> str:
        return "started " + _describe_run(await client.refill(args.buckets))

    return _as_owner(args, refill)


def cmd_abort(args: argparse.Namespace) -> int:
    async def abort(client: AdminClient) -> str:
        return "aborting " + _describe_run(await client.abort())

    return _as_owner(args, abort)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatargen", description=__doc__)
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", type=Path, default=None,
                             help="config file (default: ./config.toml if present, else built-in defaults)")
        command.set_defaults(func=func, parser=command)
        return command

    serve = add("serve", cmd_serve, "run the visitor server, the admin API and the generator")
    serve.add_argument("--host", default=None, help="listen address (default: server.host)")
    serve.add_argument("--port", type=setting("server.port"), default=None, help="listen port (default: server.port)")

    sample = add("prompts", cmd_prompts, "print sample prompts")
    sample.add_argument("-n", type=count, default=10, help="how many (default 10)")
    sample.add_argument("--seed", type=integer, default=None, help="random seed, for repeatable output")

    add("check-config", cmd_check_config, "validate the configuration and exit")

    move = add("migrate", cmd_migrate, "move the buckets (and copy the cost ledger) between the folders and Redis; "
                                       "every avatargen serve must be stopped")
    move.add_argument("--to", required=True, choices=("redis", "files"), help="where the buckets go")

    save = add("backup", cmd_backup, "copy the ledger, visitor allowances, buckets and config into a new folder "
                                     "while the server runs")
    save.add_argument("dest", type=Path, metavar="DEST", help="the folder to create (must not exist, or be empty)")
    back = add("restore", cmd_restore, "bring a backup back into the configured data and bucket folders; every "
                                       "avatargen serve must be stopped")
    back.add_argument("source", type=Path, metavar="BACKUP", help="a folder made by avatargen backup")
    back.add_argument("--replace", action="store_true",
                      help="replace the ledger, allowances and images there are (default: refuse to overwrite)")

    notify = add("notify", cmd_notify, "send the owner's messages ([notify] urls)")
    notify.add_argument("--test", action="store_true", required=True,
                        help="send one test message through every URL and say which ones worked")

    simulate = add("simulate", cmd_simulate,
                   "run the simulated GPU (the machine API of gpu.simulated.api and the SD server of sd.backend) "
                   "on loopback")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--api-port", type=setting("server.port"), default=0, help="default: any free port")
    simulate.add_argument("--sd-port", type=setting("server.port"), default=0, help="default: any free port")

    for name, func, help_text in (
        ("status", cmd_status, "show the running server's state, buckets, runs and spend"),
        ("refill", cmd_refill, "start a refill now (all buckets, or the ones named)"),
        ("abort", cmd_abort, "abort the active run; its machine is stopped"),
    ):
        owner = add(name, func, help_text)
        owner.add_argument("--url", type=http_url, default=None, help="server URL (default: from the config)")
        owner.add_argument("--token", default=None, help="admin token (default: env, config, then token file)")
        if name == "refill":
            owner.add_argument("buckets", nargs="*", type=bucket_name, metavar="BUCKET",
                               help="unique and/or fallback (default: every bucket)")
    parser.description = f"{__doc__} Commands: {', '.join(sub.choices)}."  # never missing a command
    return parser


def _reader_gone() -> int:
    """The reader of our output went away (`avatargen prompts | head -1`): stop quietly, as Unix tools
    do. What is still buffered goes nowhere, so the interpreter's last flush cannot complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE  # the status a shell reports for a tool that SIGPIPE ended


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # output still buffered meets a closed pipe here, not after main returned
        return status
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as exc:
        print(f"avatargen: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        return 130


if __name__ == "__main__":
    sys.exit(main())
