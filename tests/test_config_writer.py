"""Rewriting [prompts] in config.toml: the owner's comments stay where a person would keep them."""

from __future__ import annotations

from pathlib import Path

from avatargen.config import load_settings, update_prompts
from avatargen.config_writer import save_prompts

ROOT = Path(__file__).resolve().parent.parent


def subject_line(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith("subject ="))


def test_a_long_value_replaced_by_a_short_one_leaves_no_trail_of_spaces(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text((ROOT / "config.toml").read_text())
    original = subject_line(path)
    comment = original[original.index("#"):]
    settings = load_settings(path).prompts
    for subject in ("x" * 200, "cjs"):
        settings = update_prompts(settings, {"subject": subject})
        save_prompts(path, settings)
        assert subject_line(path) == f'subject = "{subject}" {comment}'
    assert load_settings(path).prompts.subject == "cjs"
    assert path.stat().st_size < len((ROOT / "config.toml").read_text()) + 10


def test_a_short_value_keeps_its_comment_in_the_column(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text((ROOT / "config.toml").read_text())
    original = subject_line(path)
    save_prompts(path, update_prompts(load_settings(path).prompts, {"subject": "(((cjs)))"}))
    line = subject_line(path)
    assert line.index("#") == original.index("#") and line.startswith('subject = "(((cjs)))" ')
