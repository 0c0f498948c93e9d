"""The admin API's JSON as typed values: checked at the edge, the same both ways, updated by live events."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest

from avatargen.api import (
    BucketLevel,
    DayTotal,
    History,
    NewImage,
    Preview,
    ProtocolError,
    RunChart,
    RunMinute,
    RunView,
    StateChange,
    Status,
    decode_event,
    encode_event,
)

RUN: dict[str, Any] = {
    "id": "r1", "trigger": "manual", "started_at": "2025-01-01T12:00:00Z", "targets": {"unique": 2},
    "done": 1, "failed": 0, "total": 2, "eta_seconds": 3.5, "images_per_minute": 20.0,
    "current_prompt": "A sketch of cjs", "state": "generating", "billed_seconds": 12.0, "cost": 0.0025,
    "step": {"sampling_step": 4, "sampling_steps": 10, "progress": 0.4},
}
STATUS: dict[str, Any] = {
    "state": "generating", "run": RUN, "last_run": None,
    "buckets": {"unique": {"count": 1, "min": 0, "max": 2}, "fallback": {"count": 3, "min": 1, "max": 3}},
    "gpu": {"provider": "runpod", "machine_state": "ready", "notes": ["pod p1 keeps its 50 GB volume while stopped"]},
    "cost": {"today": 0.01, "month": 0.2, "daily_budget": 5.0, "billed_seconds_today": 40,
             "billed_seconds_month": 900, "hourly_rate": 0.69, "rate_source": "provider"},
    "next_check_at": None, "paused_reason": None, "a_key_from_a_newer_server": True,
}


def test_a_status_is_parsed_into_typed_values() -> None:
    status = Status.from_json(STATUS)
    assert status.run is not None and status.run.step is not None
    assert (status.run.done, status.run.total, status.run.step.sampling_step) == (1, 2, 4)
    assert status.run.started_at.utcoffset() is not None
    assert status.buckets["fallback"] == BucketLevel(count=3, min=1, max=3)
    assert (status.machine_state, status.cost.month) == ("ready", 0.2)
    assert status.machine_notes == ("pod p1 keeps its 50 GB volume while stopped",)
    assert (status.cost.hourly_rate, status.cost.rate_source) == (0.69, "provider")


def test_what_the_server_encodes_the_client_decodes_to_the_same_values() -> None:
    status = Status.from_json(STATUS)
    assert Status.from_json(status.to_json()) == status
    ended = StateChange("idle", None, None, "off")
    name, data = encode_event(ended)
    assert name == "state" and decode_event(name, data) == ended


def test_the_comfyui_node_travels_with_the_step_and_only_when_known() -> None:
    """The node running (ComfyUI) goes both ways; a web UI's step, with none, is encoded as it always was."""
    with_node = {**RUN, "step": {**RUN["step"], "node": "KSampler"}}
    run = RunView.from_json(with_node)
    assert run.step is not None and run.step.node == "KSampler"
    assert run.to_json()["step"] == with_node["step"] and RunView.from_json(run.to_json()) == run
    web_ui = RunView.from_json(RUN)
    assert web_ui.step is not None and web_ui.step.node is None
    assert web_ui.to_json()["step"] == {"sampling_step": 4, "sampling_steps": 10, "progress": 0.4}


@pytest.mark.parametrize(("broken", "message"), [
    ({**STATUS, "cost": {}}, "the server's status lacks the key 'today'"),
    ({**STATUS, "state": "dancing"}, "unknown generator state 'dancing'"),
    ({**STATUS, "run": {**RUN, "done": "lots"}}, "the server's status is malformed"),
    ([], "the server's status is malformed"),
])
def test_a_status_the_client_cannot_read_says_what_is_wrong(broken: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Status.from_json(broken)


def test_events_update_the_status_they_concern() -> None:
    status = Status.from_json(STATUS)
    progress = decode_event("progress", {**RUN, "done": 2})
    assert isinstance(progress, RunView)
    assert status.apply(progress).run == progress

    image = decode_event("image", {"id": "i1", "bucket": "unique", "prompt": "p", "created_at": "2025-01-01T12:00:00Z",
                                   "buckets": {"unique": {"count": 2, "min": 0, "max": 2}}})
    assert isinstance(image, NewImage)
    after = status.apply(image)
    assert after.buckets["unique"].count == 2 and after.buckets["fallback"] == status.buckets["fallback"]

    ended = decode_event("state", {"state": "idle", "run": None, "machine_state": "off",
                                   "last_run": {**RUN, "outcome": "completed", "error": None,
                                                "ended_at": "2025-01-01T12:01:00Z"}})
    assert isinstance(ended, StateChange)
    idle = status.apply(ended)
    assert (idle.state, idle.run, idle.machine_state) == ("idle", None, "off")
    assert idle.last_run is not None and idle.last_run.outcome == "completed"


def test_a_late_progress_event_does_not_bring_an_ended_run_back() -> None:
    idle = replace(Status.from_json(STATUS), state="idle", run=None)
    late = decode_event("progress", RUN)
    assert late is not None
    assert idle.apply(late) == idle


def test_event_types_from_a_newer_server_are_ignored() -> None:
    assert decode_event("weather", {"sunny": True}) is None


def test_a_malformed_event_names_its_kind() -> None:
    with pytest.raises(ProtocolError, match="'image' event lacks the key 'buckets'"):
        decode_event("image", {"id": "i1", "bucket": "unique", "prompt": "p", "created_at": "2025-01-01T12:00:00Z"})


def test_a_preview_and_the_history_travel_both_ways() -> None:
    preview = Preview("r1", "unique", "A sketch of cjs", 8, 20, "image/webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ")
    name, data = encode_event(preview)
    assert name == "preview" and isinstance(data["image"], str)
    assert decode_event(name, json.loads(json.dumps(data))) == preview
    status = Status.from_json(STATUS)
    assert status.apply(preview) is status  # a picture changes no figure
    with pytest.raises(ProtocolError, match="'preview' event is malformed"):
        decode_event("preview", {**data, "image": "not base64!"})
    history = History([DayTotal(date(2026, 12, 1), 61.5, 0.013, 4)],
                      RunChart("r1", datetime(2026, 12, 1, 12, tzinfo=UTC), None, [RunMinute(0, 0.001)]))
    assert History.from_json(json.loads(json.dumps(history.to_json()))) == history
    with pytest.raises(ProtocolError, match="history lacks the key 'days'"):
        History.from_json({"run": None})
