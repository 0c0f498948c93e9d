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

from avatargen.api import TokenError, find_token, server_url
from avatargen.cli_options import add_version, http_url
from avatargen.config import ConfigError, find_config, load_settings
from tui.app import AvatarApp
from tui.images import IMAGE_STYLES

EXIT_USAGE = 2


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


def panel_for(args: argparse.Namespace) -> AvatarApp:
    """The panel for these arguments, pointed at the server they name or the one found through the config
    (where a running server recorded it listens, else [server] host and port). ConfigError or TokenError
    when there is no config to read or no token."""
    settings = load_settings(find_config(args.config))
    token = find_token(args.token, settings)
    return AvatarApp(args.url or server_url(settings), token, image_style=args.images)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        app = panel_for(args)
    except (ConfigError, TokenError) as exc:
        print(f"avatargen-tui: {exc}", file=sys.stderr)
        return EXIT_USAGE
    app.run()
    return 0
