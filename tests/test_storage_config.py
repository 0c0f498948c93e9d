"""The [storage] table: files by default; a Redis URL checked for what would fail later or leak a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatargen.config import ConfigError, Settings, load_settings


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path)


def test_files_by_default(tmp_path: Path) -> None:
    storage = load(tmp_path, "").storage
    assert (storage.backend, storage.url, storage.key_prefix, storage.timeout) == ("files", "", "avatargen", 0.5)


def test_redis_with_its_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_REDIS_PASSWORD", "s3cret")
    storage = load(tmp_path, '[storage]\nbackend = "redis"\nurl = "redis://10.0.0.5:6379/0"\n'
                             'password_env = "MY_REDIS_PASSWORD"\ntimeout = "250ms"\n').storage
    assert storage.password().reveal() == "s3cret"
    assert storage.timeout == 0.25
    assert "s3cret" not in repr(storage)


@pytest.mark.parametrize(("table", "key", "words"), [
    ('backend = "redis"', "storage.url", 'required when backend = "redis"'),
    ('backend = "redis"\nurl = "http://10.0.0.5:6379"', "storage.url", "must start with redis://"),
    ('backend = "redis"\nurl = "redis://:hunter2@10.0.0.5:6379/0"', "storage.url", "AVATARGEN_REDIS_PASSWORD"),
    ('backend = "redis"\nurl = "redis://owner:hunter2@10.0.0.5:6379/0"', "storage.url", "storage.password_env"),
    ('backend = "redis"\nurl = "redis://10.0.0.5:6379/0?password=hunter2"', "storage.url",
     "environment variable named by storage.password_env (AVATARGEN_REDIS_PASSWORD)"),
    ('backend = "redis"\nurl = "rediss://10.0.0.5/0?ssl_cert_reqs=none&Password=hunter2"', "storage.url",
     "must not hold a user name or password"),
    ('backend = "redis"\nurl = "unix:///run/redis.sock?db=0&password=hunter2"', "storage.url",
     "password=***"),
    ('backend = "memcached"', "storage.backend", "must be one of 'files', 'redis'"),
    ('timeout = 0', "storage.timeout", "must be more than 0"),
    ('key_prefix = ""', "storage.key_prefix", "must not be empty"),
])
def test_mistakes_name_the_key(tmp_path: Path, table: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[storage]\n{table}\n")
    assert info.value.key == key
    assert words in str(info.value)
    assert "hunter2" not in str(info.value)
