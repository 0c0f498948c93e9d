"""The admin API through real HTTP: auth, status, refill/abort, images, prompts, and the SSE stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from avatargen.api import AdminClient, NewImage, ServerEvent, StateChange, encode_event
from avatargen.config import load_settings
from tests.support import fast_settings, serving

TOKEN = "owner-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    settings = fast_settings(tmp_path, admin__token=TOKEN)
    async with serving(settings) as (url, _app), httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client:
        yield client, tmp_path / "config.toml"


def owner(client: httpx.AsyncClient) -> AdminClient:
    """The admin API client (as the panel and the owner's commands use it) for the server under test."""
    return AdminClient(str(client.base_url), TOKEN)


async def events_until(stream: AsyncIterator[tuple[str | None, ServerEvent]],
                       until: str) -> list[tuple[int, str, ServerEvent]]:
    """Events (id, SSE name, event) until a `state` event reports `until`."""
    events = []
    async for event_id, event in stream:
        assert event_id is not None
        events.append((int(event_id), encode_event(event)[0], event))
        if isinstance(event, StateChange) and event.state == until:
            break
    return events


async def test_status_has_the_contract_fields(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    response = await client.get("/admin/api/status")
    assert response.status_code == 200
    status = response.json()
    assert status["state"] == "idle" and status["run"] is None and status["last_run"] is None
    assert status["buckets"] == {"unique": {"count": 0, "min": 0, "max": 4, "held": 0, "rejected": 0},
                                 "fallback": {"count": 0, "min": 0, "max": 6, "held": 0, "rejected": 0}}
    assert status["gpu"] == {"provider": "simulated", "machine_state": "off", "notes": []}
    assert set(status["cost"]) >= {"today", "month", "daily_budget", "billed_seconds_today", "billed_seconds_month",
                                   "hourly_rate", "rate_source"}
    assert (status["cost"]["hourly_rate"], status["cost"]["rate_source"]) == (3600.0, "config")


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
    response = await client.delete("/admin/api/status")
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}
    response = await client.get("/admin/api/images/unique/20260101T000000-deadbeef")
    assert response.status_code == 404 and "no image" in response.json()["error"]
    response = await client.get("/admin/api/images?bucket=secret")
    assert response.status_code == 422 and "unknown bucket" in response.json()["error"]


async def test_every_admin_path_is_behind_the_owner_check(server: tuple[httpx.AsyncClient, Path]) -> None:
    """The check is middleware on the whole mount: even a path no route answers needs the token first."""
    client, _ = server
    for path in ("/admin/api/nope", "/admin/api/images/unique/x", "/admin/api/"):
        response = await client.get(path, headers={"Authorization": ""})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


async def test_a_huge_image_id_is_not_echoed_back(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    response = await client.get("/admin/api/images/unique/" + "a" * 60_000)
    assert response.status_code == 404 and "no image 'aaa" in response.json()["error"]
    assert len(response.content) < 300 and "60000 characters" in response.json()["error"]


async def test_refill_streams_states_and_images_then_lists_them(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    async with owner(client) as admin, admin.subscribe() as stream:  # subscribed once the stream answers
        response = await client.post("/admin/api/refill", json={"buckets": ["unique"]})
        assert response.status_code == 202
        run = response.json()["run"]
        assert run["trigger"] == "manual" and run["targets"] == {"unique": 4} and run["total"] == 4
        conflict = await client.post("/admin/api/refill")
        assert conflict.status_code == 409 and "already" in conflict.json()["error"]
        events = await asyncio.wait_for(events_until(stream, "idle"), 30)
    kinds = [kind for _, kind, _ in events]
    states = [event.state for _, _, event in events if isinstance(event, StateChange)]
    assert states[0] == "booting" and "generating" in states and states[-2:] == ["shutting_down", "idle"]
    assert kinds.count("image") == 4 and "progress" in kinds and "log" in kinds
    ids = [event_id for event_id, _, _ in events]
    assert ids == sorted(ids)

    listed = (await client.get("/admin/api/images", params={"bucket": "unique", "limit": 3})).json()["images"]
    assert len(listed) == 3
    assert [img["created_at"] for img in listed] == sorted((img["created_at"] for img in listed), reverse=True)
    first = listed[0]
    assert first["bucket"] == "unique" and " of cjs" in first["prompt"]
    assert first["url"] == f"/admin/api/images/unique/{first['id']}"
    picture = await client.get(first["url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/webp"
    assert picture.content[:4] == b"RIFF" and picture.content[8:12] == b"WEBP"
    announced = [event.image for _, _, event in events if isinstance(event, NewImage)]
    async with owner(client) as admin:  # an image event carries bucket and id: the client knows where it is
        assert (await admin.image_bytes(announced[-1]))[8:12] == b"WEBP"

    status = (await client.get("/admin/api/status")).json()
    assert status["last_run"]["outcome"] == "completed" and status["buckets"]["unique"]["count"] == 4

    # A client that reconnects with Last-Event-ID gets what came after it.
    missed_from = ids[len(ids) // 2]
    async with owner(client) as admin, admin.subscribe(str(missed_from)) as stream:
        replay = await asyncio.wait_for(events_until(stream, "idle"), 30)
    assert [event_id for event_id, _, _ in replay][: len(ids) - len(ids) // 2 - 1] == ids[len(ids) // 2 + 1:]


async def test_abort_is_202_during_a_run_and_409_when_idle(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server
    assert (await client.post("/admin/api/abort")).status_code == 409
    async with owner(client) as admin, admin.subscribe() as stream:
        assert (await client.post("/admin/api/refill")).status_code == 202
        response = await client.post("/admin/api/abort")
        assert response.status_code == 202 and response.json()["run"]["state"] in ("booting", "generating")
        await asyncio.wait_for(events_until(stream, "idle"), 30)
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


async def test_whole_number_parameters_say_which_and_why_in_one_wording(
        server: tuple[httpx.AsyncClient, Path]) -> None:
    """`limit`, `n` (query or body) and `days` are read by one parser: 422 naming the parameter and its bounds."""
    client, _ = server
    asked: list[tuple[str, str, dict[str, Any], str]] = [
        ("GET", "/admin/api/images", {"params": {"limit": "many"}}, "limit must be a whole number, got 'many'"),
        ("GET", "/admin/api/images", {"params": {"limit": "0"}}, "limit must be between 1 and 500, got 0"),
        ("GET", "/admin/api/prompts/sample", {"params": {"n": "2.5"}}, "n must be a whole number, got '2.5'"),
        ("POST", "/admin/api/prompts/sample", {"json": {"n": [3]}}, "n must be a whole number, got '[3]'"),
        ("POST", "/admin/api/prompts/sample", {"json": {"n": 101}}, "n must be between 1 and 100, got 101"),
        ("GET", "/admin/api/history", {"params": {"days": "a week"}}, "days must be a whole number, got 'a week'"),
        ("GET", "/admin/api/history", {"params": {"days": "367"}}, "days must be between 1 and 366, got 367"),
    ]
    for method, path, options, error in asked:
        response = await client.request(method, path, **options)
        assert (response.status_code, response.json()) == (422, {"error": error}), path


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


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"film_only": 0.9, "artist_only": 0.9, "both": NaN}', "both"),
    (b'{"both": Infinity}', "both"),
    (b'{"film_only": -Infinity}', "film_only"),
    (b'{"artist_only": 1e999}', "artist_only"),  # a float too large is read as infinity
    (b'{"subject": "a\\ud800b"}', "subject"),  # a lone surrogate: no file can hold it
    (b'{"films": ["Alien", "\\udfff"]}', "films"),
])
async def test_numbers_json_does_not_allow_and_invalid_unicode_are_refused(
        server: tuple[httpx.AsyncClient, Path], raw: bytes, field: str) -> None:
    client, config = server
    before = config.read_bytes()
    response = await client.put("/admin/api/prompts", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == field, response.text
    assert config.read_bytes() == before
    assert (await client.get("/admin/api/prompts")).status_code == 200  # nothing half-applied in memory either
    preview = await client.post("/admin/api/prompts/sample", content=b'{"settings": ' + raw + b"}")
    assert preview.status_code == 422 and preview.json()["field"] == field


@pytest.mark.parametrize("raw", [b'{"subject": ' + b"[" * 100_000, b'{"subject": ' + b"[" * 20 + b"]" * 20 + b"}"])
async def test_deeply_nested_bodies_are_refused_with_a_reason(server: tuple[httpx.AsyncClient, Path],
                                                               raw: bytes) -> None:
    client, config = server
    before = config.read_bytes()
    response = await client.put("/admin/api/prompts", content=raw)
    assert response.status_code == 400 and "nested more than 8 levels" in response.json()["error"]
    assert config.read_bytes() == before


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"subject": "x" * 201}, "subject", "at most 200 characters per entry, got 201"),
    ({"films": ["The Matrix"] * 501}, "films", "at most 500 entries, got 501"),
    ({"artists": ["Andy Warhol", "y" * 300]}, "artists", "at most 200 characters per entry, got 300"),
])
async def test_strings_and_lists_are_bounded(server: tuple[httpx.AsyncClient, Path], body: dict, field: str,
                                             words: str) -> None:
    client, config = server
    before = config.read_bytes()
    response = await client.put("/admin/api/prompts", json=body)
    assert response.status_code == 422 and response.json() == {"error": words, "field": field}
    assert config.read_bytes() == before


async def test_an_oversized_body_is_413_and_the_config_untouched(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, config = server
    before = config.read_bytes()
    response = await client.put("/admin/api/prompts", json={"subject": "x" * 2_000_000})
    assert response.status_code == 413 and "larger than the admin API accepts" in response.json()["error"]
    assert config.read_bytes() == before

    async def trickle() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while the body arrives
        yield b'{"subject": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'"}'

    response = await client.put("/admin/api/prompts", content=trickle())
    assert response.status_code == 413
    assert config.read_bytes() == before


async def test_concurrent_prompt_edits_all_land(server: tuple[httpx.AsyncClient, Path]) -> None:
    """Each PUT is a partial update applied on top of the latest settings, one after the other."""
    client, config = server
    edits: list[dict[str, Any]] = [
        {"subject": "(cjs)"}, {"films": ["Alien", "Heat"]}, {"artists": ["Hokusai"]}, {"prefixes": ["A woodcut"]},
        {"suffixes": [f"suffix {n}" for n in range(12)]}, {"suffix_max": 2}]
    answers = await asyncio.gather(*(client.put("/admin/api/prompts", json=edit) for edit in edits))
    assert [answer.status_code for answer in answers] == [200] * len(edits)
    merged = {name: value for edit in edits for name, value in edit.items()}
    for settings in ((await client.get("/admin/api/prompts")).json(), load_settings(config).prompts.to_dict()):
        assert {name: settings[name] for name in merged} == merged


async def test_a_sidecar_that_is_not_an_object_is_skipped(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, config = server
    async with owner(client) as admin:
        await admin.refill(["unique"])
        await asyncio.wait_for(admin.first_event(lambda event: isinstance(event, StateChange) and
                                                 event.last_run is not None, since="0"), 30)
    bucket = config.parent / "data" / "unique"
    broken = sorted(bucket.glob("*.json"))[0]
    broken.write_text("[]")
    response = await client.get("/admin/api/images", params={"bucket": "unique"})
    assert response.status_code == 200
    assert broken.stem not in [image["id"] for image in response.json()["images"]]
    assert len(response.json()["images"]) == 3


async def test_status_counts_the_event_streams_open_now(server: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = server

    async def listeners() -> int:
        return (await client.get("/admin/api/status")).json()["event_listeners"]

    assert await listeners() == 0
    async with client.stream("GET", "/admin/api/events") as response:
        await anext(response.aiter_lines())  # the stream is open: its first line came
        assert await listeners() == 1
    # The panel left: its listener is let go once the server sees the connection closed.
    for _ in range(200):
        if await listeners() == 0:
            break
        await asyncio.sleep(0.05)
    assert await listeners() == 0
