"""Credentials in a URL never reach the config's errors, the log file, the owner's live log or a run error."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from avatargen.config import ConfigError, SdSettings, load_settings
from avatargen.sd import SdClient, SdError
from server.logs import PrivateLogFile, configure_logging, log_path
from tests.support import fast_settings, serving, write_config

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "S3cretPW"
URL = f"http://owner:{PASSWORD}@127.0.0.1:7860"


@pytest.mark.parametrize(
    ("setting", "url", "pointer"),
    [
        ("sd.url", URL, "set sd.username, and put the password in the environment variable named by "
                        "sd.password_env (SD_API_PASSWORD)"),
        ("sd.url", "http://owner@127.0.0.1:7860", "set sd.username"),
        ("gpu.paperspace.api_url", f"https://key:{PASSWORD}@api.paperspace.com/v1",
         "the API key comes from the environment variable named by api_key_env (PAPERSPACE_API_KEY)"),
    ],
)
def test_credentials_in_a_service_url_are_a_config_error(tmp_path: Path, setting: str, url: str,
                                                         pointer: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, {setting: url}))
    assert info.value.key == setting
    assert "must not hold a user name or password (got 'http://***@" in str(info.value).replace("https", "http")
    assert pointer in str(info.value) and PASSWORD not in str(info.value)


def test_check_config_refuses_a_password_in_sd_url_without_echoing_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"sd.url": URL})
    result = subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2 and "sd.url: must not hold a user name or password" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


def test_a_public_ip_placeholder_is_still_a_valid_sd_url(tmp_path: Path) -> None:
    assert fast_settings(tmp_path, sd__url="http://{public_ip}:7860").sd.url == "http://{public_ip}:7860"


async def test_an_sd_error_names_the_url_without_its_credentials() -> None:
    with socket.socket() as closed:  # bound, never listening: a connection is refused at once
        closed.bind(("127.0.0.1", 0))
        async with SdClient(SdSettings(), url=f"http://owner:{PASSWORD}@127.0.0.1:{closed.getsockname()[1]}") as sd:
            with pytest.raises(SdError) as info:
                await sd.progress()
            assert "cannot reach the SD web UI at http://***@127.0.0.1:" in str(info.value)
            assert PASSWORD not in str(info.value) + repr(sd)


@contextlib.contextmanager
def product_log(tmp_path: Path) -> Iterator[Path]:
    """The server's log handlers (terminal and file) as `avatargen serve` sets them up; removed after.
    Set up inside the test, so that the terminal handler writes to the stderr that capsys reads."""
    settings = fast_settings(tmp_path)
    settings.server.data_dir.mkdir(parents=True)
    handlers = configure_logging(settings)
    try:
        yield log_path(settings)
    finally:
        for handler in handlers:
            logging.getLogger("avatargen").removeHandler(handler)
            handler.close()


def test_the_log_hides_url_credentials_in_messages_and_tracebacks(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("avatargen.generator")
    with product_log(tmp_path) as path:
        log.warning("run failed: cannot reach the SD web UI at %s/sdapi/v1/txt2img", URL)
        try:
            raise RuntimeError(f"connection to {URL} reset")
        except RuntimeError:
            log.exception("run ended by an error")
    written = path.read_text()
    terminal = capsys.readouterr().err
    for shown in (written, terminal):
        assert "cannot reach the SD web UI at http://***@127.0.0.1:7860/sdapi/v1/txt2img" in shown
        assert "RuntimeError: connection to http://***@127.0.0.1:7860 reset" in shown
        assert PASSWORD not in shown


def test_the_log_file_and_its_rotations_are_private(tmp_path: Path) -> None:
    path = tmp_path / "avatargen.log"
    path.write_text("written by an older version\n")
    path.chmod(0o644)
    handler = PrivateLogFile(path, maxBytes=300, backupCount=2, encoding="utf-8")
    try:
        for number in range(20):
            handler.emit(logging.makeLogRecord({"msg": f"line {number} " + "x" * 50}))
    finally:
        handler.close()
    files = sorted(tmp_path.iterdir())
    assert [file.name for file in files] == ["avatargen.log", "avatargen.log.1", "avatargen.log.2"]
    assert {stat.S_IMODE(file.stat().st_mode) for file in files} == {0o600}


async def test_the_owners_live_log_hides_url_credentials(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, admin__token="redact-token")
    async with serving(settings) as (url, _app):
        logging.getLogger("avatargen.generator").error("cannot reach the SD web UI at %s", URL)
        headers = {"Authorization": "Bearer redact-token", "Last-Event-ID": "0"}  # replay from the start
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client, \
                client.stream("GET", "/admin/api/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and "cannot reach the SD web UI" in line:
                    message = json.loads(line.removeprefix("data: "))["message"]
                    break
    assert message == "cannot reach the SD web UI at http://***@127.0.0.1:7860"
