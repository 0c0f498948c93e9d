"""`avatargen check-config`: sd.url placeholders named when written wrong, and a provider API that does not
answer costs a few seconds, said at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.cli import ASK_PROVIDER_WITHIN, main

ROOT = Path(__file__).resolve().parent.parent
RUNPOD = '[gpu]\nprovider = "runpod"\n[gpu.runpod]\npod_id = "abc123"\napi_key_env = "AVATARGEN_TEST_RUNPOD_KEY"\n'


@pytest.mark.parametrize(("url", "message"), [
    ("http://{public_ip:7860", "sd.url: unbalanced brace in 'http://{public_ip:7860': write a placeholder as "
                               "{public_ip}, {pod_id} or {port:7860}"),
    ("http://{public_ip}}:7860", "sd.url: unbalanced brace"),
    ("http://{public_ip}:{port:abc}", "sd.url: placeholder {port:abc}: the machine's internal port must be a number "
                                      "from 1 to 65535, as in {port:7860}"),
    ("http://{public_ip}:{port:99999}", "sd.url: placeholder {port:99999}: the machine's internal port must be"),
])
def test_a_placeholder_written_wrong_is_named(tmp_path: Path, url: str, message: str,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARGEN_TEST_RUNPOD_KEY", "key")
    config = tmp_path / "config.toml"
    config.write_text(f'[sd]\nurl = "{url}"\n{RUNPOD}')
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "placeholder:placeholder" not in err


def test_a_provider_api_that_never_answers_costs_a_few_seconds_said_at_once(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections (the kernel does), never answers
        api_url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        config.write_text(f'[sd]\nurl = "http://{{public_ip}}:{{port:7860}}"\n{RUNPOD}api_url = "{api_url}"\n')
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config", str(config)],
                                capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
                                env=dict(os.environ, AVATARGEN_TEST_RUNPOD_KEY="key"))
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (f"avatargen: asking the runpod API at {api_url} about the machine "
                                             f"(at most {ASK_PROVIDER_WITHIN:g}s)...")
    assert f"warning: the runpod API did not answer within {ASK_PROVIDER_WITHIN:g}s" in result.stderr
    # The client's own timeout is 30 s a request: bounded well below, with room for a loaded machine's start.
    assert took < 25, took
