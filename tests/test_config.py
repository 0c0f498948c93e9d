"""Config loading: every key typed and checked, errors that name the file, key and line."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import get_type_hints

import pytest

from avatargen.config import ConfigError, Secret, Settings, load_settings, update_prompts
from avatargen.config_writer import save_prompts

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return info.value


def test_shipped_config_loads_with_every_contract_key() -> None:
    settings = load_settings(ROOT / "config.toml")
    assert settings.gpu.provider == "simulated"
    assert settings.buckets.unique.dir == ROOT / "data" / "unique"
    assert 8 <= len(settings.prompts.prefixes) <= 12
    assert 60 <= len(settings.prompts.artists) <= 80
    assert len(settings.prompts.films) >= 18 and len(settings.prompts.suffixes) >= 18
    text = (ROOT / "config.toml").read_text()
    for key in ("trusted_proxies", "data_dir", "unique_every", "unique_burst", "unique_per_visitor",
                "cache_max_age", "fallback_retire_every", "allow_from", "check_every", "concurrency",
                "image_size", "webp_quality", "ready_timeout", "hourly_cost", "daily_budget", "api_key_env",
                "machine_id", "password_env", "checkpoint", "batch_size", "sampler", "cfg_scale",
                "negative_prompt", "film_only", "artist_only", "suffix_min", "suffix_max"):
        line = next(line for line in text.splitlines() if line.startswith(f"{key} ="))
        assert "#" in line, f"{key} has no comment"


def test_no_file_gives_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert settings == Settings(
        server=settings.server, buckets=settings.buckets
    )  # everything else is the dataclass default
    assert settings.buckets.unique.min == 1000 and settings.buckets.fallback.max == 2500
    assert settings.serving.unique_every == 600 and settings.serving.cache_max_age == 86400
    assert settings.server.data_dir == tmp_path / "data"


def test_durations_and_relative_paths(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, """
[serving]
unique_every = "90s"
unique_per_visitor = "7d"
cache_max_age = 3600
[server]
data_dir = "state"
"""))
    assert settings.serving.unique_every == 90
    assert settings.serving.unique_per_visitor == 7 * 86400
    assert settings.serving.cache_max_age == 3600
    assert settings.server.data_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("[server]\nhots = \"x\"\n", "server.hots", 2, "did you mean 'host'"),
        ("[serving]\n\nunique_every = \"ten minutes\"\n", "serving.unique_every", 3, "bad duration"),
        ("[server]\nport = \"8080\"\n", "server.port", 2, "expected an integer"),
        ("[buckets.fallback]\nmin = 10\nmax = 5\n", "buckets.fallback.min", 2, "greater than max"),
        ("[prompts]\nfilm_only = 0.5\nartist_only = 0.5\nboth = 0.2\n", "prompts.both", 4, "at most 1"),
        ("[prompts]\nfilm_only = -0.1\n", "prompts.film_only", 2, "at least 0"),
        ("[prompts]\nsuffix_min = 5\nsuffix_max = 2\n", "prompts.suffix_min", 2, "greater than suffix_max"),
        ("[prompts]\nartists = []\n", "prompts.artists", 2, "must not be empty"),
        ("[gpu]\nprovider = \"aws\"\n", "gpu.provider", 2, "must be one of"),
        ("[server]\ntrusted_proxies = [\"10.0.0.300\"]\n", "server.trusted_proxies", 2, "not an IP"),
        ("[server]\ntrusted_proxies = [\"::1\", \"127.0.0.2/8\"]\n", "server.trusted_proxies", 2,
         "'127.0.0.2/8' has host bits set; did you mean '127.0.0.0/8'?"),
        ("[admin]\nallow_from = [\"2001:db8::1/64\"]\n", "admin.allow_from", 2,
         "'2001:db8::1/64' has host bits set; did you mean '2001:db8::/64'?"),
        ("[gpu]\nprovider = \"paperspace\"\n", "gpu.paperspace.machine_id", None, "required"),
        ("[sd]\nwidth = 500\n", "sd.width", 2, "multiple of 8"),
        ("[server]\nport = 8080\n\nport = 8081\n", "server.port", 4, "not valid TOML: set twice"),
        ("[server]\nport = 1\n[gpu]\n[ server ]\nhost = \"x\"\n", "server", 4, "set twice"),
        ("[gpu]\npaperspace.machine_id = \"a\"\n[gpu.paperspace]\n", "gpu.paperspace", 3, "set twice"),
        ("[sd]\nsampler = { name = \"a\", name = \"b\" }\n", "sd.sampler", 2, "set twice"),
        ("[server]\nport = 80 80\n", "server.port", 2, "not valid TOML: Unexpected character: '8'"),
        ("[server]\nhost = \"x\n", "server.host", 2, "not valid TOML"),
        ("[server\nport = 1\n", None, 1, "not valid TOML"),
        ("[prompts]\nfilm_only = 0.9\nartist_only = 0.9\nboth = nan\n", "prompts.both", 4,
         "must be a finite number, got nan"),
        ("[gpu]\nhourly_cost = inf\n", "gpu.hourly_cost", 2, "must be a finite number, got inf"),
        ("[gpu]\ndaily_budget = -inf\n", "gpu.daily_budget", 2, "must be a finite number, got -inf"),
        ("[sd]\ncfg_scale = nan\n", "sd.cfg_scale", 2, "must be a finite number"),
        ("[serving]\nunique_every = inf\n", "serving.unique_every", 2, "must be a finite number of seconds"),
        ("[gpu.simulated]\nstep_time = nan\n", "gpu.simulated.step_time", 2, "must be a finite number of seconds"),
        ("[review]\npause_for = \"10s\"\n", "review.pause_for", 2, "must be from 1m to 30d, got 10s"),
        ("[review]\npause_for = \"31d\"\n", "review.pause_for", 2, "must be from 1m to 30d, got 31d"),
    ],
)
def test_errors_name_file_key_line(tmp_path: Path, text: str, key: str | None, line: int | None, words: str) -> None:
    error = error_for(tmp_path, text)
    assert error.key == key
    assert error.line == line
    assert words in str(error)
    assert str(error).startswith(str(tmp_path / "config.toml"))


def number_keys(cls: type = Settings, prefix: str = "") -> list[str]:
    """Every setting that holds a number with a fraction or a duration, as dotted keys (review.block's
    scores by one of their names)."""
    keys = []
    for spec in fields(cls):
        hint, dotted = get_type_hints(cls)[spec.name], f"{prefix}{spec.name}"
        if isinstance(hint, type) and is_dataclass(hint):
            keys += number_keys(hint, f"{dotted}.")
        elif hint is float:
            keys.append(dotted)
        elif hint == dict[str, float]:
            keys.append(f"{dotted}.{next(iter(getattr(cls(), spec.name)))}")
    return keys


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_number_or_duration_may_be_nan_or_infinite(tmp_path: Path, value: str) -> None:
    keys = number_keys()
    assert {"prompts.both", "gpu.hourly_cost", "serving.unique_every", "review.face_score"} <= set(keys)
    for dotted in keys:
        table, _, name = dotted.rpartition(".")
        error = error_for(tmp_path, f"[{table}]\n{name} = {value}\n")
        assert (error.key, error.line) == (dotted, 2) and "finite" in error.message, dotted


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    assert "not valid TOML" in str(error_for(tmp_path, "[server\nport = 1\n"))


def test_secrets_come_from_env_and_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_PS_KEY", "ps-secret-123")
    monkeypatch.setenv("AVATARGEN_ADMIN_TOKEN", "admin-secret-456")
    settings = load_settings(write(tmp_path, """
[admin]
token = "file-token-789"
[gpu.paperspace]
api_key_env = "MY_PS_KEY"
"""))
    assert settings.gpu.paperspace.api_key().reveal() == "ps-secret-123"
    assert settings.admin_token().reveal() == "admin-secret-456"
    text = repr(settings) + str(settings.admin_token()) + str(settings.gpu.paperspace.api_key())
    for secret in ("ps-secret-123", "admin-secret-456", "file-token-789"):
        assert secret not in text
    monkeypatch.delenv("AVATARGEN_ADMIN_TOKEN")
    assert settings.admin_token() == Secret("file-token-789")


def test_prompt_update_is_validated_like_the_file() -> None:
    current = Settings().prompts
    assert update_prompts(current, {"film_only": 0.1}).film_only == 0.1
    with pytest.raises(ConfigError) as info:
        update_prompts(current, {"suffix_max": 99})
    assert info.value.key == "prompts.suffix_max"
    with pytest.raises(ConfigError, match="did you mean 'film_only'"):
        update_prompts(current, {"flim_only": 0.1})
    for number in (math.nan, math.inf, -math.inf):  # JSON from the admin API can hold them too
        with pytest.raises(ConfigError, match="must be a finite number"):
            update_prompts(current, {"both": number})


def test_writer_keeps_comments_and_formatting(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    original = (ROOT / "config.toml").read_text()
    path.write_text(original)
    settings = load_settings(path)
    changed = update_prompts(settings.prompts, {"film_only": 0.15, "films": ["Alien", "Heat"]})
    save_prompts(path, changed)
    new = path.read_text()
    assert load_settings(path).prompts == changed
    before, after = original.split("[prompts]")[0], new.split("[prompts]")[0]
    assert before == after  # every other table byte-identical
    assert "film_only = 0.15              # share of prompts with a film reference only" in new
    assert new.count("#") == original.count("#")
    assert not list(tmp_path.glob(".config.toml.*"))  # no temp file left


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    """A write that fails half-way (here: the file-size limit) leaves the old config byte-identical."""
    path = tmp_path / "config.toml"
    path.write_text((ROOT / "config.toml").read_text())
    before = path.read_bytes()
    script = f"""
import resource, signal
from pathlib import Path
from avatargen.config import load_settings, update_prompts
from avatargen.config_writer import save_prompts
path = Path({str(path)!r})
settings = load_settings(path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    save_prompts(path, update_prompts(settings.prompts, {{"both": 0.05}}))
except OSError as exc:
    print("failed:", exc.strerror)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            check=True)
    assert result.stdout.startswith("failed: File too large")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[generator]\nconcurency = 3\n", ":2: generator.concurency: unknown key; did you mean 'concurrency'?"),
        ("[server]\nport = 8080\nport = 8081\n", ":3: server.port: not valid TOML: set twice"),
    ],
)
def test_cli_config_error_exits_2_without_traceback(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    result = subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}{message}" in result.stderr


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_nan_is_a_config_error(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, '[server]\nport = 0\n[prompts]\nfilm_only = 0.9\nartist_only = 0.9\nboth = nan\n')
    result = subprocess.run([sys.executable, "-m", "server.cli", command, "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:6: prompts.both: must be a finite number, got nan" in result.stderr


@pytest.mark.parametrize("command", ["serve", "check-config", "simulate"])
def test_unknown_simulator_fault_is_a_config_error_with_its_line(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, '[gpu.simulated]\nfaults = ["sd_501"]\n')
    result = subprocess.run([sys.executable, "-m", "server.cli", command, "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:2: gpu.simulated.faults: unknown simulator fault 'sd_501'; did you mean 'sd_500'?" in result.stderr


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_missing_paperspace_key_is_a_config_error(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, '[gpu]\nprovider = "paperspace"\n[gpu.paperspace]\nmachine_id = "ps123"\n'
                           'api_key_env = "AVATARGEN_TEST_NO_SUCH_KEY"\n')
    result = subprocess.run([sys.executable, "-m", "server.cli", command, "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "AVATARGEN_TEST_NO_SUCH_KEY" in result.stderr and "gpu.paperspace.api_key_env" in result.stderr
