"""Where the admin API is and which token opens it, found from the config as the server finds its own.

On the server's machine a client needs no arguments: the URL comes from [server] host and port, the
token from the places the server reads it (AVATARGEN_ADMIN_TOKEN, [admin] token), ending with the token
file the server generates in its data folder.
"""

from __future__ import annotations

from pathlib import Path

from avatargen.config import Secret, Settings

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class TokenError(Exception):
    """No admin token anywhere a client looks, or the token file cannot be read."""


def server_url(settings: Settings) -> str:
    """Where the configured server listens, as seen from this machine (a wildcard address means loopback)."""
    host = settings.server.host
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


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
