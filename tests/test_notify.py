"""The owner's messages through Apprise, to a real HTTP receiver behind `json://` URLs: a failed run of a
real `avatargen serve` (two workers) is told once; a URL that fails is retried, counted and shown in the
status; `avatargen notify --test` says which URLs work; money is never held back, other kinds are."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from avatargen.api import AdminClient, Status
from avatargen.config import ConfigError, NotifySettings, load_settings
from avatargen.notify import Notifier, Sender, Watcher
from avatargen.run import Run
from avatargen.tasks import background
from avatargen.testing import Receiver, avatargen_server
from tests.support import wait_until, write_config

TOKEN = "notify-test-token"


async def test_a_failed_run_is_told_once_and_a_broken_url_shows_in_the_status(tmp_path: Path) -> None:
    with Receiver() as receiver:
        config = write_config(tmp_path, {
            "server.workers": 2,
            "gpu.simulated.faults": ["sd_500"],  # every image fails: the run fails
            "notify.urls": [receiver.url("/hook"), receiver.url("/broken")],
        })
        with avatargen_server(config, tmp_path / "server.log", token=TOKEN) as service:
            async with AdminClient(service.url, TOKEN, timeout=30) as admin, asyncio.timeout(120):
                run = await admin.refill(["fallback"])
                message = await asyncio.to_thread(receiver.wait_for, lambda m: run.id in m["title"], 100)
                # Two messages: the empty fallback bucket at start-up, then the failed run. The broken URL is
                # tried after the good one, with retries: once both are given up, the status says so, and any
                # second copy of the message would have arrived by then.
                while (status := await admin.status()).notifications.failed < 2:
                    await asyncio.sleep(0.2)
            assert "failed" in message["title"] and "failed" in message["message"]
            assert "OutOfMemoryError" in message["message"]  # the run's error, as the web UI gave it
            assert status.notifications.sent >= 1
            assert "/broken" in (status.notifications.last_failure or "")
            assert sum(run.id in message.body["title"] for message in receiver.messages) == 1
            assert "not delivered" in service.log_text()
            told = subprocess.run([sys.executable, "-m", "server.cli", "status", "--config", str(config), "--url",
                                   service.url, "--token", TOKEN], capture_output=True, text=True, timeout=60)
            assert "messages to the owner not delivered: 2" in told.stdout, told.stdout + told.stderr


def notify_test(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", "notify", "--test", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def test_notify_test_says_which_urls_worked(tmp_path: Path) -> None:
    with Receiver() as receiver:
        secret = receiver.url("/broken-too").replace("json://", "json://owner:hunter2@")
        config = write_config(tmp_path, {"notify.urls": [receiver.url("/ok"), receiver.url("/broken"), secret]})
        answer = notify_test(config)
        assert answer.returncode == 1, answer.stderr
        lines = answer.stdout.splitlines()
        assert any(line.startswith("OK") and "/ok" in line for line in lines), answer.stdout
        assert any(line.startswith("FAILED") and "/broken" in line for line in lines), answer.stdout
        assert any(line.startswith("FAILED") and "owner:****@" in line for line in lines), answer.stdout
        assert "hunter2" not in answer.stdout + answer.stderr
        assert [message.path for message in receiver.messages] == ["/ok"]
        assert "test" in receiver.messages[0].body["title"]
        (tmp_path / "good").mkdir()
        only_good = write_config(tmp_path / "good", {"notify.urls": [receiver.url("/ok")]})
        assert notify_test(only_good).returncode == 0


def test_check_config_names_a_url_apprise_does_not_understand(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"notify.urls": ["json://127.0.0.1:9/ok", "nosuchservice://somewhere/x"]})
    answer = subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    assert "does not understand nosuchservice://somewhere/x" in answer.stderr
    assert "json://" not in answer.stderr


def test_notify_test_without_urls_says_so(tmp_path: Path) -> None:
    answer = notify_test(write_config(tmp_path))
    assert answer.returncode == 1
    assert "no [notify] urls" in answer.stderr


async def test_money_is_never_held_back_and_other_kinds_are(tmp_path: Path) -> None:
    with Receiver() as receiver:
        settings = NotifySettings(urls=(receiver.url("/hook"),), events=("money", "run_failed", "held"),
                                  min_interval=3600)
        notifier = Notifier(settings, Sender(settings.urls))
        async with background(notifier.sender.run(), "sender"):
            sent = [notifier.notify("run_failed", "first failure", "."), notifier.notify("run_failed", "again", "."),
                    notifier.notify("money", "budget", "."), notifier.notify("money", "budget again", "."),
                    notifier.notify("storage", "not chosen", ".")]
            assert sent == [True, False, True, True, False]
            await wait_until(lambda: len(receiver.messages) == 3)
        assert [message.body["title"] for message in receiver.messages] == ["first failure", "budget", "budget again"]


def test_an_unknown_event_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"notify.events.*did you mean 'money'"):
        load_settings(write_config(tmp_path, {"notify.events": ["mony"]}))


def status(**changes: object) -> Status:
    """A status as the admin API sends it, idle with stocked buckets unless `changes` say otherwise."""
    data: dict[str, object] = {
        "state": "idle", "run": None, "last_run": None, "paused_reason": None,
        "buckets": {"unique": {"count": 3, "min": 1, "max": 4}, "fallback": {"count": 5, "min": 1, "max": 6}},
        "gpu": {"provider": "simulated", "machine_state": "off"},
        "cost": {"today": 0.0, "month": 0.0, "daily_budget": 5.0},
    }
    return Status.from_json({**data, **changes})


def test_the_watcher_tells_what_the_status_shows(tmp_path: Path) -> None:
    told: list[tuple[str, str]] = []
    settings = load_settings(write_config(tmp_path))
    watcher = Watcher(settings, status, lambda kind, title, body: told.append((kind, body)))
    watcher.look(status(state="shutting_down", gpu={"provider": "runpod", "machine_state": "running"}), 0.0)
    assert told.pop()[0] == "money"  # found running at start-up
    watcher.look(status(state="shutting_down"), 11.0)  # the test config's stop_timeout is 10s
    assert told.pop()[0] == "money"
    # Any reason the scheduler gives for a pause is told; the budget is money.
    watcher.look(status(paused_reason="most images of the last runs were held back"), 12.0)
    kind, body = told.pop()
    assert kind == "runs_paused" and "held back" in body
    watcher.look(status(paused_reason="daily budget reached: 5.00 of 5.00 spent today"), 13.0)
    assert told.pop()[0] == "money"
    cut = Run("auto", {"fallback": 6}, 0.76, outcome="aborted", error="daily budget reached: 4.90 of 5.00 spent "
              "today, and going on (about 0.20 more with the stop) would go over it")
    watcher.look(status(last_run=cut.to_dict()), 13.5)
    kind, body = told.pop()
    assert kind == "money" and "going on (about 0.20 more" in body
    held = {"unique": {"count": 3, "min": 1, "max": 4, "held": 2}, "fallback": {"count": 0, "min": 1, "max": 6}}
    watcher.look(status(buckets=held), 14.0)
    assert sorted(kind for kind, _ in told) == ["bucket_empty", "held"]
    told.clear()
    watcher.look(status(buckets=held), 15.0)  # nothing new
    assert told == []


async def test_a_generator_taken_over_by_another_worker_is_told(tmp_path: Path) -> None:
    with Receiver() as receiver:
        config = write_config(tmp_path, {"server.workers": 2, "notify.urls": [receiver.url("/hook")]})
        with avatargen_server(config, tmp_path / "server.log", token=TOKEN) as service:
            async with AdminClient(service.url, TOKEN, timeout=30) as admin:
                await admin.status()  # both workers are up: one of them says where the generator runs
            await wait_until(lambda: "the generator runs in another process (pid " in service.log_text(), 60)
            holder = int(service.log_text().split("the generator runs in another process (pid ")[1].split(")")[0])
            psutil.Process(holder).kill()
            message = await asyncio.to_thread(receiver.wait_for, lambda m: "moved" in m["title"], 100)
    assert "took over" in message["message"]
