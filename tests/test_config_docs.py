"""The configuration reference page is generated from the settings schema and the shipped config.toml's
comments, and CI fails when the committed page disagrees with either (a new key, a changed default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from avatargen.config_docs import REGENERATE, reference, render

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (ROOT / "config.toml").read_text()


def _generate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avatargen.config_docs", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_committed_reference_page_is_what_the_schema_and_config_toml_give() -> None:
    result = _generate("--check")
    assert result.returncode == 0, f"{result.stderr}(regenerate with: {REGENERATE})"


def test_a_stale_page_is_caught_and_named_with_the_command_that_regenerates_it(tmp_path: Path) -> None:
    stale = tmp_path / "reference.md"
    stale.write_text(render(SHIPPED).replace("`8080`", "`8081`"))
    result = _generate("--check", "--output", stale)
    assert result.returncode == 1
    assert str(stale) in result.stderr and REGENERATE in result.stderr

    assert _generate("--output", stale).returncode == 0
    assert _generate("--check", "--output", stale).returncode == 0


def test_a_schema_key_without_a_comment_in_config_toml_is_an_error_naming_it(tmp_path: Path) -> None:
    line = next(line for line in SHIPPED.splitlines() if line.startswith("webp_quality ="))
    config = tmp_path / "config.toml"
    config.write_text(SHIPPED.replace(line, "webp_quality = 60"))
    with pytest.raises(ValueError, match=r"generator\.webp_quality"):
        reference(config.read_text())
    result = _generate("--config", config, "--output", tmp_path / "page.md")
    assert result.returncode == 2
    assert "generator.webp_quality" in result.stderr and not (tmp_path / "page.md").exists()


def test_the_page_shows_each_tables_own_defaults_and_joins_continued_comments() -> None:
    keys = {f"{key.table}.{key.name}": key for key in reference(SHIPPED)}
    assert keys["buckets.fallback.dir"].default == '`"data/fallback"`'  # not the unique bucket's class default
    assert keys["buckets.fallback.max"].default == "`2500`"
    assert keys["serving.unique_per_visitor"].default == '`"24h"`'
    assert keys["storage.timeout"].default == '`"500ms"`'
    assert keys["serving.unique_per_network"].meaning.endswith('(/32../64; default "/64")')
    assert keys["prompts.artists"].default.startswith("70 entries")
    page = render(SHIPPED)
    assert '`"paperspace"`, `"runpod"`' in page and "\\|" in page  # a | in a comment does not split the table
