"""The product's log file: rotated at server.log_max_bytes, server.log_backups old files kept, so the log
never takes more than (log_backups + 1) x log_max_bytes of the data folder, however long the server runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from avatargen.config import ConfigError, load_settings
from server.logs import configure_logging, log_path
from tests.support import fast_settings


def test_the_log_is_rotated_at_the_configured_size_and_keeps_the_configured_files(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, server__log_max_bytes=10_000, server__log_backups=2)
    settings.server.data_dir.mkdir(parents=True)
    handlers = configure_logging(settings)
    try:
        for n in range(1000):  # about 100 kB: ten files' worth
            logging.getLogger("avatargen.generator").info("line %d of a long soak %s", n, "x" * 20)
    finally:
        for handler in handlers:
            logging.getLogger("avatargen").removeHandler(handler)
            handler.close()
    log = log_path(settings)
    files = sorted(log.parent.glob(log.name + "*"))
    assert [path.name for path in files] == ["avatargen.log", "avatargen.log.1", "avatargen.log.2"]
    assert all(path.stat().st_size <= 10_000 for path in files)
    assert "line 999 of a long soak" in log.read_text()  # the newest lines are in the current file


@pytest.mark.parametrize(("key", "value"), [("log_max_bytes", 100), ("log_backups", -1)])
def test_a_log_size_or_count_out_of_bounds_is_refused_naming_the_key(tmp_path: Path, key: str, value: int) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"server.{key}"):
        load_settings(config)
