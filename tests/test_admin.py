"""The admin API through real HTTP: auth, status, refill/abort, images, prompts, and the SSE stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from avatargen.config import load_settings
from tests.support import fast_settings, serving

TOKEN = "owner-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    settings = fast_settings(tmp_path, admin__token=TOKEN)
    async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client:
        yield client, tmp_path / "config.toml"


async def read_events(client: httpx.AsyncClient, until: str, headers: dict[str, str] | None = None,
                      connected: asyncio.Event | None = None) -> list[tuple[int, str, dict[str, Any]]]:
    """SSE events (id, type, data) until a `state` event reports `until`."""
    events: list[tuple[int, str, dict[str, Any]]] = []
    async with client.stream("GET", "/admin/api/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith((":", "retry:")):
                if connected is not None:
                    connected.set()  # the server sends these first: we are subscribed
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                data = json.loads(fields["data"])
                events.append((int(fields["id"]), fields["event"], data))
                if fields["event"] == "state" and data["state"] == until:
                    return events
            fields = {}
    return events


async def test_status_has_the_contract_fields(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    response = await client.get("/admin/api/status")
    assert response.status_code == 200
    status = response.json()
    assert status["state"] == "idle" and status["run"] is None and status["last_run"] is None
    assert status["buckets"] == {"unique": {"count": 0, "min": 0, "max": 4, "rejected": 0},
                                 "fallback": {"count": 0, "min": 0, "max": 6, "rejected": 0}}
    assert status["gpu"] == {"provider": "simulated", "machine_state": "off"}
    assert set(status["cost"]) >= {"today", "month", "daily_budget", "billed_seconds_today", "billed_seconds_month"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
async def test_missing_or_wrong_token_is_401(server: tuple[httpx.AsyncClient, Path], headers: dict) -> None:
    client, _ = server
    for method, path in (("GET", "/admin/api/status"), ("POST", "/admin/api/refill"), ("GET", "/admin/api/events")):
        response = await client.request(method, path, headers={"Authorization": "", **headers})
        assert response.status_code == 401
        assert "token" in response.json()["error"]


async def test_disallowed_address_is_403_whatever_the_token(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, admin__token=TOKEN, admin__allow_from=["10.0.0.0/8"])
    async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url) as client:
        for headers in (AUTH, {}):
            response = await client.get("/admin/api/status", headers=headers)
            assert response.status_code == 403 and "allow_from" in response.json()["error"]
        assert (await client.get("/avatar")).status_code == 200  # visitors are not affected


async def test_unknown_admin_route_is_json_404(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    response = await client.get("/admin/api/nope")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = await client.get("/admin/api/images/unique/20260101T000000-deadbeef")
    assert response.status_code == 404 and "no image" in response.json()["error"]
    response = await client.get("/admin/api/images?bucket=secret")
    assert response.status_code == 422 and "unknown bucket" in response.json()["error"]


async def test_refill_streams_states_and_images_then_lists_them(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    connected = asyncio.Event()
    reader = asyncio.create_task(read_events(client, until="idle", connected=connected))
    await asyncio.wait_for(connected.wait(), 10)
    response = await client.post("/admin/api/refill", json={"buckets": ["unique"]})
    assert response.status_code == 202
    run = response.json()["run"]
    assert run["trigger"] == "manual" and run["targets"] == {"unique": 4} and run["total"] == 4
    conflict = await client.post("/admin/api/refill")
    assert conflict.status_code == 409 and "already" in conflict.json()["error"]
    events = await asyncio.wait_for(reader, 30)
    kinds = [kind for _, kind, _ in events]
    states = [data["state"] for _, kind, data in events if kind == "state"]
    assert states[0] == "booting" and "generating" in states and states[-2:] == ["shutting_down", "idle"]
    assert kinds.count("image") == 4 and "progress" in kinds and "log" in kinds
    ids = [event_id for event_id, _, _ in events]
    assert ids == sorted(ids)

    listed = (await client.get("/admin/api/images", params={"bucket": "unique", "limit": 3})).json()["images"]
    assert len(listed) == 3
    assert [img["created_at"] for img in listed] == sorted((img["created_at"] for img in listed), reverse=True)
    first = listed[0]
    assert first["bucket"] == "unique" and " of cjs" in first["prompt"]
    picture = await client.get(first["url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/webp"
    assert picture.content[:4] == b"RIFF" and picture.content[8:12] == b"WEBP"

    status = (await client.get("/admin/api/status")).json()
    assert status["last_run"]["outcome"] == "completed" and status["buckets"]["unique"]["count"] == 4

    # A client that reconnects with Last-Event-ID gets what came after it.
    missed_from = ids[len(ids) // 2]
    replay = await read_events(client, until="idle", headers={"Last-Event-ID": str(missed_from)})
    assert [event_id for event_id, _, _ in replay][: len(ids) - len(ids) // 2 - 1] == ids[len(ids) // 2 + 1:]


async def test_abort_is_202_during_a_run_and_409_when_idle(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    assert (await client.post("/admin/api/abort")).status_code == 409
    connected = asyncio.Event()
    reader = asyncio.create_task(read_events(client, until="idle", connected=connected))
    await asyncio.wait_for(connected.wait(), 10)
    assert (await client.post("/admin/api/refill")).status_code == 202
    response = await client.post("/admin/api/abort")
    assert response.status_code == 202 and response.json()["run"]["state"] in ("booting", "generating")
    await asyncio.wait_for(reader, 30)
    status = (await client.get("/admin/api/status")).json()
    assert status["last_run"]["outcome"] == "aborted" and status["gpu"]["machine_state"] == "off"


async def test_refill_rejects_unknown_buckets(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    response = await client.post("/admin/api/refill", json={"buckets": ["everything"]})
    assert response.status_code == 422 and "everything" in response.json()["error"]
    response = await client.post("/admin/api/refill", content=b"{not json")
    assert response.status_code == 400


async def test_prompt_update_is_saved_to_config_and_used(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, config = server
    before = config.read_text()
    response = await client.put("/admin/api/prompts", json={"subject": "(((cjs)))", "film_only": 0.0,
                                                            "both": 0.0, "artist_only": 1.0})
    assert response.status_code == 200 and response.json()["subject"] == "(((cjs)))"
    saved = load_settings(config)
    assert saved.prompts.subject == "(((cjs)))" and saved.prompts.artist_only == 1.0
    assert before.rstrip() == config.read_text().split("[prompts]")[0].rstrip()  # a new table, appended
    assert (await client.get("/admin/api/prompts")).json()["subject"] == "(((cjs)))"
    samples = (await client.get("/admin/api/prompts/sample", params={"n": 7})).json()["prompts"]
    assert len(samples) == 7 and all("of (((cjs)))" in p and "in the style of" in p for p in samples)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"film_only": 0.6, "artist_only": 0.6}, "both"),
        ({"film_only": -1}, "film_only"),
        ({"suffix_min": 8, "suffix_max": 3}, "suffix_min"),
        ({"artists": []}, "artists"),
        ({"flim_only": 0.1}, "flim_only"),
        ({"subject": 5}, "subject"),
    ],
)
async def test_bad_prompt_update_is_422_and_config_untouched(server: tuple[httpx.AsyncClient, Path],
                                                             body: dict, field: str) -> None:
    client, config = server
    before = config.read_bytes()
    response = await client.put("/admin/api/prompts", json=body)
    assert response.status_code == 422
    assert response.json()["field"] == field and response.json()["error"]
    assert config.read_bytes() == before


async def test_sample_preview_of_unsaved_settings(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, config = server
    before = config.read_bytes()
    response = await client.post("/admin/api/prompts/sample", json={"settings": {"subject": "zz"}, "n": 3})
    assert response.status_code == 200
    assert all(" of zz" in p for p in response.json()["prompts"])
    bad = await client.post("/admin/api/prompts/sample", json={"settings": {"both": 2}})
    assert bad.status_code == 422 and bad.json()["field"] == "both"
    assert config.read_bytes() == before


async def test_healthz(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    response = await client.get("/healthz", headers={"Authorization": ""})
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_generated_token_is_kept_in_a_private_file_and_reused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AVATARGEN_ADMIN_TOKEN", raising=False)
    settings = fast_settings(tmp_path)
    token_file = tmp_path / "data" / "admin_token"
    async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url) as client:
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600 and len(token) >= 32
        response = await client.get("/admin/api/status", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url) as client:
        assert token_file.read_text().strip() == token  # a restart keeps the owner's TUI working
        response = await client.get("/admin/api/status", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


async def test_event_stream_sends_heartbeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.admin.HEARTBEAT_SECONDS", 0.05)
    settings = fast_settings(tmp_path, admin__token=TOKEN)
    async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        async with client.stream("GET", "/admin/api/events") as response:
            pings = 0
            async for line in response.aiter_lines():
                pings += line == ": ping"
                if pings == 2:
                    break
        assert pings == 2
