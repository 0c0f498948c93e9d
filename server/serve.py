"""`avatargen serve`: uvicorn running the app, with proxy headers trusted only from trusted_proxies.

The listening socket is bound first: a second server on a taken port stops there, before it touches the
data folder (start-up recovery) or the machine (the orphan check), with one clear line. The preflight
comes next, then the app. uvicorn turns Ctrl-C and SIGTERM into a graceful shutdown; the lifespan then
aborts an active run and waits until its machine is confirmed off before the process exits.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from avatargen import review
from avatargen.config import ServerSettings, Settings
from avatargen.sockets import bound_socket
from avatargen.storage.files.lock import DataFolderLock
from server.app import create_app
from server.first_screen import first_screen, settings_in_force
from server.listening import recorded_address
from server.logs import configure_logging, redact_uvicorn_logs
from server.metrics import MULTIPROCESS_ENV
from server.preflight import preflight

METRICS_DIR = "metrics"  # in data_dir: the workers' counters (prometheus_client's multiprocess files)
EXIT_STARTUP_FAILED = 3  # the app's start-up failed (uvicorn's own status for it); the log says why


class CannotListen(Exception):
    """The server's address cannot be had: the port is in use, the address is not this machine's, ..."""


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """How `avatargen serve` runs uvicorn; the benchmarks' reference servers use the same options."""
    return {
        "proxy_headers": True,
        "forwarded_allow_ips": list(server.trusted_proxies),  # X-Forwarded-For believed only from these
        "timeout_graceful_shutdown": 3,  # event streams never end by themselves
        "access_log": False,
    }


def _cannot_listen(host: str, port: int, exc: OSError) -> CannotListen:
    if exc.errno == errno.EADDRINUSE:
        return CannotListen(f"port {port} is already in use on {host} (is another avatargen serve running?)")
    return CannotListen(f"cannot listen on {host} port {port}: {exc.strerror or exc}")


def _implementations(config: uvicorn.Config) -> str:
    """The HTTP parser and event loop uvicorn picked: httptools and uvloop where installed (faster), else
    h11 and asyncio. The owner may need to know: their limits on request headers differ (docs/deployment.md)."""
    config.load()
    http = config.http_protocol_class.__module__.rpartition(".")[2].removesuffix("_impl")
    factory = config.get_loop_factory()
    loop = factory.__module__.partition(".")[0] if factory is not None else "asyncio"
    return f"{http} and {loop}"


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    server_settings = replace(settings.server, host=host or settings.server.host,
                              port=settings.server.port if port is None else port)
    settings = settings_in_force(replace(settings, server=server_settings))
    try:
        sock = bound_socket(server_settings.host, server_settings.port)
    except OSError as exc:
        raise _cannot_listen(server_settings.host, server_settings.port, exc) from None
    with sock:  # closed whatever happens below, the preflight's refusal included
        preflight(settings)
        in_use = DataFolderLock(settings.server.data_dir)
        in_use.share()  # refused while `avatargen migrate` moves the buckets; held until the server ends
        try:
            return _serve(settings, sock)
        finally:
            in_use.release()


def _serve(settings: Settings, sock: socket.socket) -> int:
    """The server on its bound socket, once the preflight passed, while it shares the data folder."""
    server_settings = settings.server
    configure_logging(settings)
    log = logging.getLogger("avatargen.server")
    warnings, notes = first_screen(settings)
    for line in warnings:
        log.warning(line)
    for line in notes:
        log.info(line)
    if problem := review.missing_extra(settings.review):
        log.warning(problem)
    with recorded_address(settings, server_settings.host, sock.getsockname()[1]):
        if server_settings.workers > 1:
            return _run_workers(settings, sock, log)
        config = uvicorn.Config(create_app(settings), log_level="info", **uvicorn_options(server_settings))
        redact_uvicorn_logs()
        log.info("listening on http://%s:%d (config: %s; uvicorn with %s)", server_settings.host,
                 sock.getsockname()[1], settings.path or "built-in defaults", _implementations(config))
        server = uvicorn.Server(config)
        signal.signal(signal.SIGTERM, _stopped)
        server.run(sockets=[sock])
    return 0 if server.started else EXIT_STARTUP_FAILED


def worker_app(settings: Settings) -> Starlette:
    """The app of one of several worker processes: spawned, each sets up its own logging."""
    configure_logging(settings)
    redact_uvicorn_logs()
    return create_app(settings)


def _run_workers(settings: Settings, sock: socket.socket, log: logging.Logger) -> int:
    """`server.workers` uvicorn processes accepting on the one socket; uvicorn's supervisor replaces one that
    dies. They share the buckets and the allowance (folders and SQLite, or Redis), one of them runs the
    generator and the others forward the owner's requests to it (server.forwarding)."""
    server = settings.server
    share_counters(server.data_dir / METRICS_DIR)
    config = uvicorn.Config(partial(worker_app, settings), factory=True, workers=server.workers, log_level="info",
                            **uvicorn_options(server))
    redact_uvicorn_logs()
    # Asked of a stand-in: loading the real config would build the app here, and the workers get a copy of it.
    implementations = _implementations(uvicorn.Config(Starlette(), **uvicorn_options(server)))
    log.info("listening on http://%s:%d with %d worker processes (config: %s; uvicorn with %s)", server.host,
             sock.getsockname()[1], server.workers, settings.path or "built-in defaults", implementations)
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return EXIT_STARTUP_FAILED if failed else 0


def share_counters(folder: Path) -> None:
    """The workers (spawned: they import prometheus_client afresh and inherit the environment) keep their
    counters in files in `folder`, which /metrics sums; emptied first, so a restart starts from zero as a
    single process does."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROCESS_ENV] = str(folder)


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handling: before it listens (nothing to stop yet), or the signal it
    raises again once it has shut down gracefully (the run aborted, the machine confirmed off). Either
    way the server stopped as asked: exit 0, not "killed by SIGTERM"."""
    raise SystemExit(0)
