"""The one atomic write (bucket images and config.toml) and the one timestamp form, on real files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from avatargen.files import write_atomically
from avatargen.run import Run, iso
from avatargen.timestamps import utc_iso


def test_a_replaced_file_keeps_its_permissions_and_nothing_is_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("old")
    path.chmod(0o600)
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600, "the owner's file stays private"
    write_atomically(tmp_path / "fresh", b"x", mode=0o640)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "fresh"]


def test_a_failed_write_leaves_no_work_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError):  # the work file is written, then the rename fails
        write_atomically(tmp_path / "taken", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_every_timestamp_is_utc_with_a_z() -> None:
    moment = datetime(2026, 11, 24, 23, 59, 59, 123456, tzinfo=UTC)
    assert utc_iso(moment) == "2026-11-24T23:59:59Z"
    assert utc_iso(moment.timestamp(), timespec="milliseconds") == "2026-11-24T23:59:59.123Z"
    assert iso(moment.timestamp()) == "2026-11-24T23:59:59Z"
    started = Run("manual", {"unique": 1}, 0.76).to_dict()["started_at"]
    assert started.endswith("Z") and datetime.fromisoformat(started).tzinfo is not None
