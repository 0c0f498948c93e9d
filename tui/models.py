"""The admin API's JSON as typed values.

The client parses every answer here, once, so widgets never guess at a dict's shape. Keys the server
adds later are ignored; a key the TUI needs and does not get is a `ProtocolError` that names it, never a
KeyError deep inside a widget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, TypeVar

from avatargen.config import BUCKET_NAMES

State = Literal["idle", "booting", "generating", "shutting_down"]
STATES: tuple[State, ...] = ("idle", "booting", "generating", "shutting_down")
BUCKETS: tuple[str, ...] = BUCKET_NAMES

T = TypeVar("T")


class ProtocolError(Exception):
    """The server answered with something the TUI does not understand (another version, another program)."""


@dataclass(frozen=True)
class BucketLevel:
    """How full one bucket is, against the levels that trigger and end a refill."""

    count: int
    min: int
    max: int


@dataclass(frozen=True)
class Step:
    """The SD web UI's own progress on the image it is sampling now."""

    sampling_step: int
    sampling_steps: int
    progress: float


@dataclass(frozen=True)
class Run:
    """A refill run: booting the machine, generating images, shutting the machine down."""

    id: str
    trigger: str
    started_at: datetime
    targets: Mapping[str, int]
    done: int
    failed: int
    total: int
    eta_seconds: float | None
    images_per_minute: float | None
    current_prompt: str | None
    state: str
    billed_seconds: float
    cost: float
    step: Step | None


@dataclass(frozen=True)
class LastRun:
    """A finished run and how it ended."""

    run: Run
    outcome: str
    error: str | None
    ended_at: datetime | None


@dataclass(frozen=True)
class Cost:
    """GPU spend so far, against the daily budget that stops automatic runs."""

    today: float
    month: float
    daily_budget: float
    billed_seconds_today: float
    billed_seconds_month: float


@dataclass(frozen=True)
class Status:
    """Everything `GET /admin/api/status` says: the picture the TUI starts from after each (re)connect."""

    state: State
    run: Run | None
    last_run: LastRun | None
    buckets: Mapping[str, BucketLevel]
    provider: str
    machine_state: str
    cost: Cost
    next_check_at: datetime | None
    paused_reason: str | None


@dataclass(frozen=True)
class ImageInfo:
    """One stored avatar: where to fetch it and how it was made."""

    id: str
    bucket: str
    prompt: str
    created_at: datetime
    url: str
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class StateChange:
    """The generator moved to another state (a run started, advanced a phase, or ended)."""

    state: State
    run: Run | None
    last_run: LastRun | None
    machine_state: str | None


@dataclass(frozen=True)
class NewImage:
    """A freshly generated image was stored; the bucket levels after it."""

    image: ImageInfo
    buckets: Mapping[str, BucketLevel]


@dataclass(frozen=True)
class BucketsChange:
    """Bucket levels changed without a new image (visitors took some)."""

    buckets: Mapping[str, BucketLevel]


@dataclass(frozen=True)
class LogEntry:
    """One line of the server's log, or one the TUI writes about itself."""

    time: datetime
    level: str
    message: str


ServerEvent = StateChange | Run | NewImage | BucketsChange | LogEntry


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _optional(value: T | None, convert: Callable[[T], Any]) -> Any:
    return None if value is None else convert(value)


def _state(value: str) -> State:
    if value not in STATES:
        raise ValueError(f"unknown generator state {value!r}")
    return value  # type: ignore[return-value]


def _step(data: Mapping[str, Any]) -> Step:
    return Step(int(data["sampling_step"]), int(data["sampling_steps"]), float(data["progress"]))


def _run(data: Mapping[str, Any]) -> Run:
    return Run(
        id=str(data["id"]),
        trigger=str(data["trigger"]),
        started_at=_time(data["started_at"]),
        targets={str(name): int(count) for name, count in data["targets"].items()},
        done=int(data["done"]),
        failed=int(data["failed"]),
        total=int(data["total"]),
        eta_seconds=_optional(data.get("eta_seconds"), float),
        images_per_minute=_optional(data.get("images_per_minute"), float),
        current_prompt=data.get("current_prompt"),
        state=str(data.get("state", "")),
        billed_seconds=float(data.get("billed_seconds") or 0),
        cost=float(data.get("cost") or 0),
        step=_optional(data.get("step"), _step),
    )


def _last_run(data: Mapping[str, Any]) -> LastRun:
    return LastRun(_run(data), str(data["outcome"]), data.get("error"), _optional(data.get("ended_at"), _time))


def _buckets(data: Mapping[str, Any]) -> dict[str, BucketLevel]:
    return {
        str(name): BucketLevel(int(level["count"]), int(level["min"]), int(level["max"]))
        for name, level in data.items()
    }


def _cost(data: Mapping[str, Any]) -> Cost:
    return Cost(
        today=float(data["today"]),
        month=float(data["month"]),
        daily_budget=float(data["daily_budget"]),
        billed_seconds_today=float(data.get("billed_seconds_today") or 0),
        billed_seconds_month=float(data.get("billed_seconds_month") or 0),
    )


def _status(data: Mapping[str, Any]) -> Status:
    gpu = data.get("gpu") or {}
    return Status(
        state=_state(data["state"]),
        run=_optional(data.get("run"), _run),
        last_run=_optional(data.get("last_run"), _last_run),
        buckets=_buckets(data["buckets"]),
        provider=str(gpu.get("provider", "")),
        machine_state=str(gpu.get("machine_state") or "unknown"),
        cost=_cost(data["cost"]),
        next_check_at=_optional(data.get("next_check_at"), _time),
        paused_reason=data.get("paused_reason"),
    )


def _image(data: Mapping[str, Any]) -> ImageInfo:
    return ImageInfo(
        id=str(data["id"]),
        bucket=str(data["bucket"]),
        prompt=str(data["prompt"]),
        created_at=_time(data["created_at"]),
        url=str(data["url"]),
        metadata=dict(data.get("metadata") or {}),
    )


def _log(data: Mapping[str, Any]) -> LogEntry:
    return LogEntry(_time(data["time"]), str(data["level"]), str(data["message"]))


def _state_change(data: Mapping[str, Any]) -> StateChange:
    return StateChange(
        state=_state(data["state"]),
        run=_optional(data.get("run"), _run),
        last_run=_optional(data.get("last_run"), _last_run),
        machine_state=data.get("machine_state"),
    )


def _parse(what: str, convert: Callable[[Any], T], data: Any) -> T:
    """Run a converter, turning any shape mismatch into one ProtocolError that says what was wrong."""
    try:
        return convert(data)
    except KeyError as exc:
        raise ProtocolError(f"the server's {what} lacks the key {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"the server's {what} is malformed: {exc}") from None


def parse_status(data: Any) -> Status:
    return _parse("status", _status, data)


def parse_run(data: Any) -> Run:
    return _parse("run", _run, data)


def parse_images(data: Any) -> list[ImageInfo]:
    return _parse("image list", lambda body: [_image(item) for item in body["images"]], data)


_EVENTS: dict[str, Callable[[Any], ServerEvent]] = {
    "state": _state_change,
    "progress": _run,
    "image": lambda data: NewImage(_image(data), _buckets(data["buckets"])),
    "buckets": lambda data: BucketsChange(_buckets(data)),
    "log": _log,
}


def parse_event(kind: str, data: Any) -> ServerEvent | None:
    """The typed event for an SSE event type; None for types this TUI does not know (a newer server)."""
    convert = _EVENTS.get(kind)
    return None if convert is None else _parse(f"{kind!r} event", convert, data)


def apply_event(status: Status, event: ServerEvent) -> Status:
    """The status after a live event, as far as events tell (spend needs a fetch)."""
    if isinstance(event, StateChange):
        return replace(status, state=event.state, run=event.run, last_run=event.last_run,
                       machine_state=event.machine_state or status.machine_state)
    if isinstance(event, Run):
        # A progress event that arrives after its run ended must not bring the run back.
        current = status.run
        return replace(status, run=event) if current is not None and current.id == event.id else status
    if isinstance(event, NewImage | BucketsChange):
        return replace(status, buckets={**status.buckets, **event.buckets})
    return status
