"""`avatargen-tui [--url URL] [--token TOKEN] [--config PATH]`: open the control panel.

The config is found the way the server finds it, so on the server's own machine the panel needs no
arguments: the URL comes from [server] host and port, the token from the same places the server reads
it, ending with the token file the server generates.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avatargen.cli_options import add_version, http_url
from avatargen.config import ConfigError, Settings, find_config, load_settings
from tui.app import AvatarApp
from tui.images import IMAGE_STYLES

EXIT_USAGE = 2
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class TokenError(Exception):
    """No admin token anywhere the panel looks, or the token file cannot be read."""


def server_url(settings: Settings) -> str:
    """Where the configured server listens, as seen from this machine (a wildcard address means loopback)."""
    host = settings.server.host
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


def find_token(explicit: str | None, settings: Settings) -> str:
    """--token, else AVATARGEN_ADMIN_TOKEN, else [admin] token, else the server's generated token file."""
    if explicit:
        return explicit
    configured = settings.admin_token().reveal()
    if configured:
        return configured
    path = settings.admin_token_file
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TokenError(
            f"no admin token: pass --token, set AVATARGEN_ADMIN_TOKEN, set [admin] token in the config, "
            f"or start the server once so that it writes {path}"
        ) from None
    except OSError as exc:
        raise TokenError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"the admin token file {path} is empty")
    return token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatargen-tui", description="The avatargen control panel.")
    add_version(parser)
    parser.add_argument("--url", type=http_url, help="the server's address (default: from the config, else http://127.0.0.1:8080)")
    parser.add_argument("--token", help="the admin token (default: AVATARGEN_ADMIN_TOKEN, the config, the "
                                        "server's token file)")
    parser.add_argument("--config", type=Path, default=None,
                        help="config file (default: ./config.toml if present, else built-in defaults)")
    parser.add_argument("--images", choices=IMAGE_STYLES, default="auto",
                        help="how thumbnails are drawn: auto (Kitty/Sixel where supported), halfcell, unicode")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(find_config(args.config))
        token = find_token(args.token, settings)
    except (ConfigError, TokenError) as exc:
        print(f"avatargen-tui: {exc}", file=sys.stderr)
        return EXIT_USAGE
    AvatarApp(args.url or server_url(settings), token, image_style=args.images).run()
    return 0
