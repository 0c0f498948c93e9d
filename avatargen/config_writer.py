"""Rewrite the [prompts] table of config.toml, keeping everything else as the owner wrote it.

tomlkit round-trips comments, order and formatting; only the values that changed are replaced. The file
is replaced atomically (temp file in the same folder, fsync, rename), so a crash or a failed write leaves
the old file intact and a reader never sees half a config.
"""

from __future__ import annotations

from pathlib import Path

import tomlkit
from tomlkit.items import Array, Table

from avatargen.config import ConfigError, PromptSettings
from avatargen.files import write_atomically


def _multiline_array(values: tuple[str, ...]) -> Array:
    array = tomlkit.array()
    array.extend(values)
    return array.multiline(True)


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
            # Keep the owner's comment in the same column.
            width = len(old.as_string()) + len(old.trivia.comment_ws) - len(new.as_string())
            new.trivia.comment_ws = " " * max(1, width) if old.trivia.comment else old.trivia.comment_ws
            new.trivia.comment = old.trivia.comment
            new.trivia.indent = old.trivia.indent
            new.trivia.trail = old.trivia.trail
            table[name] = new
        else:
            table[name] = value
    return tomlkit.dumps(document)


def save_prompts(path: Path, prompts: PromptSettings) -> None:
    """Persist [prompts] into the config file at path (created if missing)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    write_atomically(path, render_prompts(text, prompts).encode())
