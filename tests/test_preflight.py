"""`check-config` and `serve` create and write-test every folder the server needs, before anything listens."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import write_config

ROOT = Path(__file__).resolve().parent.parent


def avatargen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)


def test_check_config_creates_every_folder_and_a_private_log_file(tmp_path: Path) -> None:
    result = avatargen("check-config", "--config", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    folders = {path.relative_to(data).as_posix() for path in data.rglob("*") if path.is_dir()}
    work = {".tmp", ".claimed", ".review", ".kept"}
    assert folders == {"unique", "fallback", "unique/.framed", *(f"{bucket}/{name}" for bucket in ("unique", "fallback")
                                                                for name in work)}
    files = [path for path in data.rglob("*") if path.is_file()]
    assert files == [data / "avatargen.log"]  # no write-test file left behind
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(
    ("setting", "where", "key", "problem"),
    [
        ("buckets.unique.dir", "a-file/unique", "buckets.unique.dir", "a-file/unique: Not a directory"),
        ("server.data_dir", "a-file/data", "server.data_dir", "a-file/data: Not a directory"),
        ("buckets.fallback.dir", "a-file", "buckets.fallback.dir", "a-file: a file of that name is in the way"),
        ("buckets.fallback.dir", "work-file-in-the-way", "buckets.fallback.dir",
         "work-file-in-the-way/.tmp: a file of that name is in the way"),
        ("server.data_dir", "log-is-a-folder", "server.data_dir",
         "cannot write the log file {tmp}/log-is-a-folder/avatargen.log: Is a directory"),
    ],
)
def test_a_folder_that_cannot_be_written_is_a_config_error(tmp_path: Path, command: str, setting: str, where: str,
                                                           key: str, problem: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "work-file-in-the-way").mkdir()
    (tmp_path / "work-file-in-the-way" / ".tmp").write_text("not a folder")
    (tmp_path / "log-is-a-folder" / "avatargen.log").mkdir(parents=True)
    config = write_config(tmp_path, {setting: str(tmp_path / where)})
    result = avatargen(command, "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stderr
    line = next(number for number, text in enumerate(config.read_text().splitlines(), start=1)
                if text.startswith(f"{setting.rpartition('.')[2]} = ") and str(tmp_path / where) in text)
    assert f"{config}:{line}: {key}: " in result.stderr
    assert problem.format(tmp=tmp_path) in result.stderr
