"""What `avatargen` and `avatargen-tui` share on their command lines: option types and `--version`.

An option that sets a config key is checked by the config's own rules, so `--port 99999` gets the same
message as `port = 99999` in config.toml; argparse turns the message into a usage error (exit status 2,
no traceback).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from avatargen.config import ConfigError, check_http_url, option_value


def setting(dotted: str) -> Callable[[str], Any]:
    """An argparse type for an option that stands in for the config key `dotted`."""

    def parse(text: str) -> Any:
        try:
            return option_value(dotted, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    parse.__name__ = dotted  # argparse names the type in some of its messages
    return parse


def refuse(args: argparse.Namespace, message: str) -> NoReturn:
    """A usage error found after parsing (two options that contradict each other): said the way argparse
    says its own, with the command's usage, and exit status 2. The command's parser is in `args.parser`."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def integer(text: str) -> int:
    """Any integer (a random seed), refused in the words the config's own integers are."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def count(text: str) -> int:
    """A number of things to make or show: an integer, at least 1."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def http_url(text: str) -> str:
    """A server address such as http://127.0.0.1:8080."""
    try:
        return check_http_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None



def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version`: the installed distribution's version, one number for the server and the panel."""
    try:
        installed = version("avatargen")
    except PackageNotFoundError:  # a source tree that was never installed
        installed = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed}")
