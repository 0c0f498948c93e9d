"""`avatargen-tui`'s command line: where the URL and the token come from, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatargen.api import TokenError, find_token, server_url
from avatargen.config import load_settings
from tests.support import write_config
from tui.cli import main


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AVATARGEN_ADMIN_TOKEN", raising=False)


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:9000"),
    ("0.0.0.0", "http://127.0.0.1:9000"),
    ("::", "http://127.0.0.1:9000"),
    ("::1", "http://[::1]:9000"),
    ("avatars.example", "http://avatars.example:9000"),
])
def test_the_url_is_where_the_configured_server_listens(tmp_path: Path, host: str, url: str) -> None:
    settings = load_settings(write_config(tmp_path, {"server.host": host, "server.port": 9000}))
    assert server_url(settings) == url


def test_the_default_url_without_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert server_url(load_settings(None)) == "http://127.0.0.1:8080"


def test_the_token_comes_from_the_flag_then_env_then_config_then_the_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_token = load_settings(write_config(tmp_path, {"admin.token": "from-config"}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin_token").write_text("from-file\n")
    assert find_token("from-flag", with_token) == "from-flag"
    assert find_token(None, with_token) == "from-config"
    assert find_token(None, load_settings(write_config(tmp_path))) == "from-file"
    monkeypatch.setenv("AVATARGEN_ADMIN_TOKEN", "from-env")
    assert find_token(None, with_token) == "from-env"


def test_no_token_anywhere_says_where_to_put_one(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    with pytest.raises(TokenError, match=r"pass --token.*" + str(tmp_path / "data" / "admin_token")):
        find_token(None, settings)


def test_a_config_error_is_printed_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"server.prot": 1})
    assert main(["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "server.prot" in error and "did you mean 'port'" in error and "Traceback" not in error


def test_a_missing_token_exits_2_before_the_panel_opens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(write_config(tmp_path))]) == 2
    assert "no admin token" in capsys.readouterr().err
