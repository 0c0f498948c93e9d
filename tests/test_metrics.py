"""`GET /metrics`: Prometheus text with the listed names, every worker's counters summed, behind allow_from
and its own read-only token; the shipped Grafana dashboard and alert rules use only names it serves."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from avatargen.api import AdminClient, NewImage
from avatargen.config import ConfigError, load_settings
from avatargen.testing import avatargen_server
from server.preflight import preflight
from tests.support import serving, write_config

ADMIN_TOKEN = "metrics-test-admin-token"
METRICS_TOKEN = "metrics-test-scrape-token"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
LISTED = ("avatargen_bucket_images", "avatargen_bucket_held", "avatargen_avatars_served_total",
          "avatargen_generator_state", "avatargen_images_generated_total", "avatargen_gpu_billed_seconds_total",
          "avatargen_spend_today", "avatargen_budget_daily", "avatargen_request_duration_seconds_bucket",
          "avatargen_visitor_errors_total", "avatargen_notifications_failed_total")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient, token: str = METRICS_TOKEN) -> str:
    answer = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


async def test_every_worker_counted_behind_the_metrics_token(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"server.workers": 2, "metrics.token": METRICS_TOKEN})
    with avatargen_server(config, tmp_path / "server.log", token=ADMIN_TOKEN) as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).status_code == 401
            refused = await client.get("/admin/api/status", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            assert refused.status_code == 401  # the metrics token opens nothing else
            # New connections each: they land on either worker, and /metrics sums them all.
            for _ in range(20):
                async with httpx.AsyncClient(base_url=service.url, timeout=30) as visitor:
                    assert (await visitor.get("/avatar")).headers["x-avatar-kind"] == "placeholder"
            # Each worker adds its counts to the shared files within a second (server.metrics.FLUSH_EVERY).
            async with asyncio.timeout(30):
                while value(samples(await scrape(client)), "avatargen_avatars_served_total", kind="placeholder") < 20:
                    await asyncio.sleep(0.2)
            pages = [samples(await scrape(client)) for _ in range(6)]
    for page in pages:
        assert value(page, "avatargen_avatars_served_total", kind="placeholder") == 20
        assert value(page, "avatargen_request_duration_seconds_count", route="avatar") == 20
        assert value(page, "avatargen_bucket_images", bucket="fallback") == 0
        # Whichever worker answered, the generator's own state (it runs in one of them).
        assert sum(value(page, "avatargen_generator_state", state=state)
                   for state in ("idle", "booting", "generating", "shutting_down")) == 1
        assert value(page, "avatargen_budget_daily") == load_settings(config).gpu.daily_budget


async def test_a_run_counts_its_images_and_billed_time(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as client:
        before = samples(await scrape(client, ""))  # allow_from is loopback only: no token needed
        async with AdminClient(url, settings.admin_token_file.read_text().strip()) as admin, asyncio.timeout(60):
            await admin.refill(["fallback"])
            await admin.first_event(lambda event: isinstance(event, NewImage), since="0")
            while (await admin.status()).state != "idle":
                await asyncio.sleep(0.1)
        text = await scrape(client, "")
    after = samples(text)
    stored = value(after, "avatargen_images_generated_total", bucket="fallback", outcome="stored")
    assert stored - value(before, "avatargen_images_generated_total", bucket="fallback", outcome="stored") == 6
    assert value(after, "avatargen_bucket_images", bucket="fallback") == 6
    assert value(after, "avatargen_gpu_billed_seconds_total") > value(before, "avatargen_gpu_billed_seconds_total")
    assert value(after, "avatargen_spend_today") > 0
    names = {name for name, _ in after}
    assert set(LISTED) <= names
    deployed_names_exist(names)


def deployed_names_exist(names: set[str]) -> None:
    """Every avatargen_* name the shipped dashboard and alert rules use is one /metrics serves."""
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in expressions for name in re.findall(r"\bavatargen_[a-z_]+", expr)}
    assert len(expressions) >= 8 and used
    assert used <= names, f"not served: {sorted(used - names)}"


async def test_who_may_scrape(tmp_path: Path) -> None:
    wide = load_settings(write_config(tmp_path, {"admin.allow_from": ["0.0.0.0/0", "::/0"]}))
    async with serving(wide) as (url, _), httpx.AsyncClient(base_url=url) as client:
        answer = await client.get("/metrics")
        assert answer.status_code == 401 and "set [metrics] token" in answer.text
    (tmp_path / "elsewhere").mkdir()
    elsewhere = load_settings(write_config(tmp_path / "elsewhere", {"admin.allow_from": ["10.0.0.0/8"],
                                                                     "metrics.token": METRICS_TOKEN}))
    async with serving(elsewhere) as (url, _), httpx.AsyncClient(base_url=url) as client:
        answer = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert answer.status_code == 403


def test_the_metrics_token_must_differ_from_the_admin_token(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"admin.token": "one-token-for-both", "metrics.token":
                                                     "one-token-for-both"}))
    with pytest.raises(ConfigError, match=r"metrics.token: must differ from the admin token"):
        preflight(settings)
