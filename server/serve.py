"""`avatargen serve`: uvicorn running the app, with proxy headers trusted only from trusted_proxies.

uvicorn turns Ctrl-C and SIGTERM into a graceful shutdown; the lifespan then aborts an active run and
waits until its machine is confirmed off before the process exits.
"""

from __future__ import annotations

import logging
import logging.handlers
from dataclasses import replace
from typing import Any

import uvicorn

from avatargen import review
from avatargen.config import ServerSettings, Settings
from avatargen.gpu import paperspace_api_key
from avatargen.sd import check_backend
from server.app import create_app

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def preflight(settings: Settings) -> list[str]:
    """Problems that would only surface once the generator starts, reported now as config errors; what
    the owner may want to know otherwise (where the workflow takes each setting) comes back as notes."""
    if settings.gpu.provider == "paperspace":
        paperspace_api_key(settings)
    return check_backend(settings)


def configure_logging(settings: Settings) -> None:
    """Log to the terminal and to <data_dir>/avatargen.log (rotated)."""
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("avatargen")
    root.setLevel(logging.INFO)
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler()
    logfile = logging.handlers.RotatingFileHandler(settings.server.data_dir / "avatargen.log",
                                                   maxBytes=5_000_000, backupCount=3)
    for handler in (console, logfile):
        handler.setFormatter(formatter)
        root.addHandler(handler)


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """How `avatargen serve` runs uvicorn; the benchmarks' reference servers use the same options."""
    return {
        "proxy_headers": True,
        "forwarded_allow_ips": list(server.trusted_proxies),  # X-Forwarded-For believed only from these
        "timeout_graceful_shutdown": 3,  # event streams never end by themselves
        "access_log": False,
    }


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    server_settings = replace(settings.server, host=host or settings.server.host,
                              port=settings.server.port if port is None else port)
    settings = replace(settings, server=server_settings)
    preflight(settings)
    configure_logging(settings)
    log = logging.getLogger("avatargen.server")
    if problem := review.missing_extra(settings.review):
        log.warning(problem)
    log.info(
        "listening on http://%s:%d (config: %s)", server_settings.host, server_settings.port,
        settings.path or "built-in defaults")
    config = uvicorn.Config(create_app(settings), host=server_settings.host, port=server_settings.port,
                            log_level="info", **uvicorn_options(server_settings))
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
