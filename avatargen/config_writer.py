"""Rewrite the [prompts] table of config.toml, keeping everything else as the owner wrote it.

tomlkit round-trips comments, order and formatting; only the values that changed are replaced. The file
is replaced atomically (temp file in the same folder, fsync, rename), so a crash or a failed write leaves
the old file intact and a reader never sees half a config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tomlkit
from tomlkit.items import Array, Item, Table

from avatargen.config import ConfigError, PromptSettings

COMMENT_COLUMN_MAX = 80  # a comment further right than this after its value is not in a column anyone chose


def _multiline_array(values: tuple[str, ...]) -> Array:
    array = tomlkit.array()
    array.extend(values)
    return array.multiline(True)


def _comment_gap(old: Item, new: Item) -> str:
    """The spaces before the owner's comment once `old` is replaced by `new`: the comment stays in its column
    when that column is a sane one; after a value too long for any column it moves back to one space, so
    a long value replaced by a short one leaves no trail of spaces behind."""
    column = len(old.as_string()) + len(old.trivia.comment_ws)  # counted from where the value starts
    if column > COMMENT_COLUMN_MAX:
        return " "
    return " " * max(1, column - len(new.as_string()))


def render_prompts(text: str, prompts: PromptSettings) -> str:
    """The config text with [prompts] set to these settings; other tables are untouched."""
    document = tomlkit.parse(text)
    table = document.get("prompts")
    if table is None:
        table = tomlkit.table()
        document["prompts"] = table
    if not isinstance(table, Table):
        raise ConfigError("expected a table", key="prompts")
    for name, value in prompts.to_dict().items():
        if name in table and table[name].unwrap() == value:
            continue  # untouched values keep their exact formatting
        if isinstance(value, list):
            table[name] = _multiline_array(tuple(value))
        elif name in table:
            old = table[name]
            new = tomlkit.item(value)
            new.trivia.comment_ws = _comment_gap(old, new) if old.trivia.comment else old.trivia.comment_ws
            new.trivia.comment = old.trivia.comment
            new.trivia.indent = old.trivia.indent
            new.trivia.trail = old.trivia.trail
            table[name] = new
        else:
            table[name] = value
    return tomlkit.dumps(document)


def atomic_write(path: Path, text: str) -> None:
    """Replace path with text so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_prompts(path: Path, prompts: PromptSettings) -> None:
    """Persist [prompts] into the config file at path (created if missing)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write(path, render_prompts(text, prompts))
