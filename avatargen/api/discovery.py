"""Where the admin API is and which token opens it, found from the config as the server finds its own.

On the server's machine a client needs no arguments: the URL is where the running server says it listens
(`<data_dir>/server.json`, so `avatargen serve --port P` is found too), else [server] host and port; the
token comes from the places the server reads it (AVATARGEN_ADMIN_TOKEN, [admin] token), ending with the
token file the server generates in its data folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from avatargen.config import Secret, Settings

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class TokenError(Exception):
    """No admin token anywhere a client looks, or the token file cannot be read."""


LISTENING_FILE = "server.json"  # in the data folder: {"url", "pid"} of the server running on it


def local_url(host: str, port: int) -> str:
    """A server's address as seen from this machine (a wildcard address means loopback)."""
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def listening_file(settings: Settings) -> Path:
    """Where `avatargen serve` records the address it listens on, for the clients that share its config."""
    return settings.server.data_dir / LISTENING_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def recorded_url(settings: Settings) -> str | None:
    """The URL the server running on this config's data folder recorded; None when there is no record, it
    cannot be read, or the process that wrote it is gone (killed before it could remove its record)."""
    try:
        record = json.loads(listening_file(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    url, pid = record.get("url"), record.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int) or not _alive(pid):
        return None
    return url


def server_url(settings: Settings) -> str:
    """Where the server of this config listens: where a running one recorded it listens (it may have been
    started with --host or --port), else [server] host and port."""
    return recorded_url(settings) or local_url(settings.server.host, settings.server.port)


def read_token_file(path: Path) -> Secret | None:
    """The token a server saved at path; None when there is no such file or it is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    return Secret(token) if token else None


def find_token(explicit: str | None, settings: Settings) -> str:
    """--token, else AVATARGEN_ADMIN_TOKEN, else [admin] token, else the server's generated token file."""
    if explicit:
        return explicit
    token = settings.admin_token() or read_token_file(settings.admin_token_file)
    if not token:
        raise TokenError(
            f"no admin token: pass --token, set AVATARGEN_ADMIN_TOKEN, set [admin] token in the config, "
            f"or start the server once so that it writes {settings.admin_token_file}"
        )
    return token.reveal()
