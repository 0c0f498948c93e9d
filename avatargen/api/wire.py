"""The admin API's JSON as typed values, encoded and decoded here and nowhere else.

The generator and the server build these and call `to_json()`; the client calls `from_json()` on every
answer, once, so no caller guesses at a dict's shape. Decoding ignores keys a newer server adds; a key
the client needs and does not get is a `ProtocolError` that names it, never a KeyError deep in a widget.

Prompt settings travel as `avatargen.config.PromptSettings.to_dict()` (the [prompts] table under its
config names); the limits a request must keep to are `PROMPT_TEXT_MAX` and `PROMPT_LIST_MAX`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Literal, TypeVar

from avatargen.timestamps import utc_iso

State = Literal["idle", "booting", "generating", "shutting_down"]
STATES: tuple[State, ...] = ("idle", "booting", "generating", "shutting_down")
PROMPT_TEXT_MAX = 200  # characters in `subject` and in each list entry
PROMPT_LIST_MAX = 500  # entries in each prompt word list

T = TypeVar("T")


class ProtocolError(Exception):
    """The other side sent something this one does not understand (another version, another program)."""


def time_json(moment: datetime | None) -> str | None:
    return None if moment is None else utc_iso(moment)


def _time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _optional(value: Any, convert: Callable[[Any], T]) -> T | None:
    return None if value is None else convert(value)


def _state(value: str) -> State:
    if value not in STATES:
        raise ValueError(f"unknown generator state {value!r}")
    return value  # type: ignore[return-value]


def decode(what: str, convert: Callable[[Any], T], data: Any) -> T:
    """Run a converter, turning any shape mismatch into one ProtocolError that says what was wrong."""
    try:
        return convert(data)
    except KeyError as exc:
        raise ProtocolError(f"the server's {what} lacks the key {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"the server's {what} is malformed: {exc}") from None


@dataclass(frozen=True)
class BucketLevel:
    """How full one bucket is, against the levels that trigger and end a refill; `held`: images the safety
    gate held back, waiting for the owner (not counted: no visitor gets them); `rejected`: broken images set aside
    in the bucket's `.rejected/` folder."""

    count: int
    min: int
    max: int
    held: int = 0
    rejected: int = 0
    unknown: str | None = None  # why `count` cannot be trusted now (the store did not answer): the last known

    def to_json(self) -> dict[str, Any]:
        level: dict[str, Any] = {"count": self.count, "min": self.min, "max": self.max, "held": self.held,
                                 "rejected": self.rejected}
        if self.unknown is not None:
            level["unknown"] = self.unknown
        return level

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BucketLevel:
        unknown = data.get("unknown")
        return cls(int(data["count"]), int(data["min"]), int(data["max"]), int(data.get("held") or 0),
                   int(data.get("rejected") or 0), None if unknown is None else str(unknown))


Levels = Mapping[str, BucketLevel]


def levels_json(levels: Levels) -> dict[str, dict[str, Any]]:
    return {name: level.to_json() for name, level in levels.items()}


def _levels(data: Mapping[str, Any]) -> dict[str, BucketLevel]:
    return {str(name): BucketLevel.from_json(level) for name, level in data.items()}


@dataclass(frozen=True)
class Step:
    """The SD server's own progress on the image it is sampling now, and with ComfyUI the node it runs
    (its class_type; sent only when known, so a web UI backend's progress reads as it always did)."""

    sampling_step: int = 0
    sampling_steps: int = 0
    progress: float = 0.0
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps,
                                "progress": self.progress}
        if self.node is not None:
            data["node"] = self.node
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        node = data.get("node")
        return cls(int(data["sampling_step"]), int(data["sampling_steps"]), float(data["progress"]),
                   None if node is None else str(node))


@dataclass(frozen=True)
class RunView:
    """A refill run as the admin API carries it: what one moment of a run looks like to the owner.

    The generator's own `avatargen.run.Run` (billing times, the hourly rate, images per minute) builds it
    with `Run.view()`; the panel, the commands and the events read only this.
    """

    id: str
    trigger: str
    state: str
    started_at: datetime
    targets: Mapping[str, int]
    done: int
    failed: int
    total: int
    eta_seconds: float | None = None
    images_per_minute: float | None = None
    current_prompt: str | None = None
    step: Step | None = None
    machine_state: str | None = None
    billed_seconds: float = 0.0
    cost: float = 0.0
    held: int = 0  # images made and held back by the safety gate (not in `done`)
    held_cost: float = 0.0  # the share of the run's cost those images took

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trigger": self.trigger,
            "state": self.state,
            "started_at": time_json(self.started_at),
            "targets": dict(self.targets),
            "done": self.done,
            "failed": self.failed,
            "total": self.total,
            "eta_seconds": self.eta_seconds,
            "images_per_minute": self.images_per_minute,
            "current_prompt": self.current_prompt,
            "step": None if self.step is None else self.step.to_json(),
            "machine_state": self.machine_state,
            "billed_seconds": self.billed_seconds,
            "cost": self.cost,
            "held": self.held,
            "held_cost": self.held_cost,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunView:
        return cls(
            id=str(data["id"]),
            trigger=str(data["trigger"]),
            state=str(data.get("state", "")),
            started_at=_time(data["started_at"]),
            targets={str(name): int(count) for name, count in data["targets"].items()},
            done=int(data["done"]),
            failed=int(data["failed"]),
            total=int(data["total"]),
            eta_seconds=_optional(data.get("eta_seconds"), float),
            images_per_minute=_optional(data.get("images_per_minute"), float),
            current_prompt=data.get("current_prompt"),
            step=_optional(data.get("step"), Step.from_json),
            machine_state=data.get("machine_state"),
            billed_seconds=float(data.get("billed_seconds") or 0),
            cost=float(data.get("cost") or 0),
            held=int(data.get("held") or 0),
            held_cost=float(data.get("held_cost") or 0),
        )


@dataclass(frozen=True)
class LastRun:
    """A finished run and how it ended; on the wire, the run's own fields plus these three."""

    run: RunView
    outcome: str
    error: str | None
    ended_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {**self.run.to_json(), "outcome": self.outcome, "error": self.error,
                "ended_at": time_json(self.ended_at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LastRun:
        return cls(RunView.from_json(data), str(data["outcome"]), data.get("error"),
                   _optional(data.get("ended_at"), _time))


@dataclass(frozen=True)
class Cost:
    """GPU spend so far, against the daily budget that stops automatic runs."""

    today: float
    month: float
    daily_budget: float
    billed_seconds_today: float = 0.0
    billed_seconds_month: float = 0.0
    hourly_cost: float | None = None
    ledger_problem: str | None = None  # why the ledger on disk may lag behind these figures
    hourly_rate: float | None = None  # what runs are billed at...
    rate_source: str | None = None  # ...and who says so: "provider" (the machine's own price) or "config"

    def to_json(self) -> dict[str, Any]:
        return {"today": self.today, "month": self.month, "daily_budget": self.daily_budget,
                "hourly_cost": self.hourly_cost, "hourly_rate": self.hourly_rate, "rate_source": self.rate_source,
                "billed_seconds_today": self.billed_seconds_today, "billed_seconds_month": self.billed_seconds_month,
                "ledger_problem": self.ledger_problem}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cost:
        return cls(
            today=float(data["today"]),
            month=float(data["month"]),
            daily_budget=float(data["daily_budget"]),
            billed_seconds_today=float(data.get("billed_seconds_today") or 0),
            billed_seconds_month=float(data.get("billed_seconds_month") or 0),
            hourly_cost=_optional(data.get("hourly_cost"), float),
            ledger_problem=data.get("ledger_problem"),
            hourly_rate=_optional(data.get("hourly_rate"), float),
            rate_source=data.get("rate_source"),
        )


@dataclass(frozen=True)
class VisitorErrors:
    """How many visitors got another avatar (a fallback, the placeholder) because something failed on their
    path, and the last cause: a read-only bucket or a full disk is the owner's to fix, so it is shown."""

    errors: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"errors": self.errors, "last_error": self.last_error, "last_error_at": time_json(self.last_error_at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VisitorErrors:
        return cls(int(data.get("errors") or 0), data.get("last_error"),
                   _optional(data.get("last_error_at"), _time))


@dataclass(frozen=True)
class Notifications:
    """How the owner's messages ([notify]) went: a failure to deliver is shown, or the owner would never know."""

    sent: int = 0
    failed: int = 0
    last_failure: str | None = None
    last_failure_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "last_failure": self.last_failure,
                "last_failure_at": time_json(self.last_failure_at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Notifications:
        return cls(int(data.get("sent") or 0), int(data.get("failed") or 0), data.get("last_failure"),
                   _optional(data.get("last_failure_at"), _time))


@dataclass(frozen=True)
class Status:
    """Everything `GET /admin/api/status` says: the picture a client starts from after each (re)connect."""

    state: State
    run: RunView | None
    last_run: LastRun | None
    buckets: Levels
    provider: str
    machine_state: str | None
    cost: Cost
    next_check_at: datetime | None = None
    paused_reason: str | None = None  # why automatic runs do not start now, for the owner
    # What paused them, for whatever reacts to it (a notification): "machine" (it can never run as configured),
    # "safety_gate" (a run's images were mostly held back) or "daily_budget"; None otherwise.
    paused_by: str | None = None
    machine_notes: tuple[str, ...] = ()  # what the owner should know about the machine (a backstop off, ...)
    visitors: VisitorErrors = VisitorErrors()  # the visitor path's failures, told by the serving process
    notifications: Notifications = Notifications()  # the owner's messages, sent by the generator's process
    gate_on: bool | None = None  # whether the safety gate ([review] enabled) checks new images; None: not told
    endpoint: Mapping[str, Any] | None = None  # a serverless provider's phase, health and billing basis

    def to_json(self) -> dict[str, Any]:
        gpu: dict[str, Any] = {"provider": self.provider, "machine_state": self.machine_state,
                               "notes": list(self.machine_notes)}
        if self.endpoint is not None:
            gpu["endpoint"] = dict(self.endpoint)
        return {
            "state": self.state,
            "run": None if self.run is None else self.run.to_json(),
            "last_run": None if self.last_run is None else self.last_run.to_json(),
            "buckets": levels_json(self.buckets),
            "gpu": gpu,
            "cost": self.cost.to_json(),
            "next_check_at": time_json(self.next_check_at),
            "paused_reason": self.paused_reason,
            "paused_by": self.paused_by,
            "visitors": self.visitors.to_json(),
            "notifications": self.notifications.to_json(),
            **({} if self.gate_on is None else {"review": {"enabled": self.gate_on}}),
        }

    @classmethod
    def from_json(cls, data: Any) -> Status:
        def convert(data: Mapping[str, Any]) -> Status:
            gpu = data.get("gpu") or {}
            return cls(
                state=_state(data["state"]),
                run=_optional(data.get("run"), RunView.from_json),
                last_run=_optional(data.get("last_run"), LastRun.from_json),
                buckets=_levels(data["buckets"]),
                provider=str(gpu.get("provider", "")),
                machine_state=gpu.get("machine_state"),
                machine_notes=tuple(str(note) for note in gpu.get("notes") or ()),
                cost=Cost.from_json(data["cost"]),
                next_check_at=_optional(data.get("next_check_at"), _time),
                paused_reason=data.get("paused_reason"),
                paused_by=data.get("paused_by"),
                visitors=VisitorErrors.from_json(data.get("visitors") or {}),
                notifications=Notifications.from_json(data.get("notifications") or {}),
                gate_on=_optional((data.get("review") or {}).get("enabled"), bool),
                endpoint=gpu.get("endpoint") if isinstance(gpu.get("endpoint"), dict) else None,
            )

        return decode("status", convert, data)

    def apply(self, event: ServerEvent) -> Status:
        """The status after a live event, as far as events tell (spend needs a fetch)."""
        if isinstance(event, StateChange):
            return replace(self, state=event.state, run=event.run, last_run=event.last_run,
                           machine_state=event.machine_state or self.machine_state)
        if isinstance(event, RunView):
            # A progress event that arrives after its run ended must not bring the run back.
            return replace(self, run=event) if self.run is not None and self.run.id == event.id else self
        if isinstance(event, ImageEvent | ImageRemoved | BucketsChange):
            return replace(self, buckets={**self.buckets, **event.buckets})
        return self

    def keeping_live_parts_of(self, newer: Status) -> Status:
        """This (fetched) status with what events tell taken from `newer`: a fetch answered before an
        event arrived must not take the state, run or levels back to what they were."""
        return replace(self, state=newer.state, run=newer.run, last_run=newer.last_run, buckets=newer.buckets,
                       machine_state=newer.machine_state)


@dataclass(frozen=True)
class ImageInfo:
    """One stored avatar and how it was made. Its address is the server's to give (the image list's `url`)
    or the client's to derive from bucket and id; the generator's events carry no URL.

    `kept`: the owner keeps it for good (a fallback never retired). `held`: the safety gate held it back;
    it waits for the owner's review, and `metadata["review"]` says why."""

    id: str
    bucket: str
    prompt: str
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    kept: bool = False
    held: bool = False

    @classmethod
    def of(cls, image_id: str, bucket: str, metadata: Mapping[str, Any], created_at: datetime, *,
           kept: bool = False, held: bool = False) -> ImageInfo:
        """From what a bucket knows of an image: its sidecar, and when it was made."""
        return cls(image_id, bucket, str(metadata.get("prompt") or ""), created_at, dict(metadata), kept, held)

    @property
    def held_because(self) -> list[str]:
        """Why the gate held it back, in words (`no face`, `FEMALE_BREAST_EXPOSED 0.87`); empty if it did not."""
        review = self.metadata.get("review")
        reasons = review.get("reasons") if isinstance(review, Mapping) else None
        if not isinstance(reasons, list):
            return []
        return [str(reason.get("text", "")) for reason in reasons if isinstance(reason, Mapping)]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "bucket": self.bucket, "prompt": self.prompt,
                "created_at": time_json(self.created_at), "metadata": dict(self.metadata),
                "kept": self.kept, "held": self.held}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageInfo:
        return cls(str(data["id"]), str(data["bucket"]), str(data["prompt"]), _time(data["created_at"]),
                   dict(data.get("metadata") or {}), bool(data.get("kept")), bool(data.get("held")))

    @staticmethod
    def one_from_json(data: Any) -> ImageInfo:
        """The image an owner's action answers with (`{"image": {...}}`)."""
        return decode("image", lambda body: ImageInfo.from_json(body["image"]), data)

    @staticmethod
    def list_from_json(data: Any) -> list[ImageInfo]:
        return decode("image list", lambda body: [ImageInfo.from_json(item) for item in body["images"]], data)


# --- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateChange:
    """The generator moved to another state (a run started, advanced a phase, or ended)."""

    state: State
    run: RunView | None
    last_run: LastRun | None
    machine_state: str | None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "run": None if self.run is None else self.run.to_json(),
                "last_run": None if self.last_run is None else self.last_run.to_json(),
                "machine_state": self.machine_state}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StateChange:
        return cls(_state(data["state"]), _optional(data.get("run"), RunView.from_json),
                   _optional(data.get("last_run"), LastRun.from_json), data.get("machine_state"))


@dataclass(frozen=True)
class ImageEvent:
    """Something happened to one image; the bucket levels after it. On the wire: the image's own fields
    (where it is now) plus `buckets`."""

    image: ImageInfo
    buckets: Levels

    def to_json(self) -> dict[str, Any]:
        return {**self.image.to_json(), "buckets": levels_json(self.buckets)}

    @classmethod
    def from_json(cls: type[E], data: Mapping[str, Any]) -> E:
        return cls(ImageInfo.from_json(data), _levels(data["buckets"]))


E = TypeVar("E", bound=ImageEvent)


class NewImage(ImageEvent):
    """A freshly generated image passed the safety gate (or there is none) and was published."""


class ImageHeld(ImageEvent):
    """A freshly generated image was held back by the safety gate: it waits in its bucket's review folder."""


class ImageApproved(ImageEvent):
    """The owner approved a held image: it is published now, as a new image would be."""


class ImageKept(ImageEvent):
    """The owner kept a fallback for good, or undid that (`image.kept` says which)."""


@dataclass(frozen=True)
class ImageMoved(ImageEvent):
    """The owner moved an image into another bucket (same id); `image` is where it is now."""

    from_bucket: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "from_bucket": self.from_bucket}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageMoved:  # type: ignore[override]
        return cls(ImageInfo.from_json(data), _levels(data["buckets"]), str(data["from_bucket"]))


@dataclass(frozen=True)
class ImageRemoved:
    """The owner deleted an image (a published one, or a held one when `held`): every panel drops it."""

    bucket: str
    id: str
    held: bool
    buckets: Levels

    def to_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "id": self.id, "held": self.held, "buckets": levels_json(self.buckets)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRemoved:
        return cls(str(data["bucket"]), str(data["id"]), bool(data.get("held")), _levels(data["buckets"]))


@dataclass(frozen=True)
class BucketsChange:
    """Bucket levels changed without a new image (visitors took some, a fallback was retired)."""

    buckets: Levels

    def to_json(self) -> dict[str, Any]:
        return levels_json(self.buckets)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BucketsChange:
        return cls(_levels(data))


@dataclass(frozen=True)
class LogEntry:
    """One line of the server's log (or one a client writes about itself)."""

    time: datetime
    level: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"time": time_json(self.time), "level": self.level, "message": self.message}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogEntry:
        return cls(_time(data["time"]), str(data["level"]), str(data["message"]))


@dataclass(frozen=True)
class Preview:
    """A small picture of the image the SD server is making now, at its step (a `preview` event): the
    run, the bucket and prompt of that job, and the image file (WebP, at most 96 px a side)."""

    run_id: str
    bucket: str
    prompt: str
    step: int
    steps: int
    media_type: str
    image: bytes

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "bucket": self.bucket, "prompt": self.prompt, "step": self.step,
                "steps": self.steps, "media_type": self.media_type,
                "image": base64.b64encode(self.image).decode("ascii")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preview:
        return cls(str(data["run_id"]), str(data["bucket"]), str(data["prompt"]), int(data["step"]),
                   int(data["steps"]), str(data["media_type"]), base64.b64decode(data["image"], validate=True))


ServerEvent = StateChange | RunView | ImageEvent | ImageRemoved | BucketsChange | LogEntry | Preview

EventKind = (type[StateChange] | type[RunView] | type[ImageEvent] | type[ImageRemoved] | type[BucketsChange]
             | type[LogEntry] | type[Preview])
# Each SSE event name and the kind of event it carries (`progress` is a `RunView`).
EVENT_KINDS: dict[str, EventKind] = {"state": StateChange, "progress": RunView, "image": NewImage,
                                     "buckets": BucketsChange, "log": LogEntry, "held": ImageHeld,
                                     "approved": ImageApproved, "kept": ImageKept, "moved": ImageMoved,
                                     "removed": ImageRemoved, "preview": Preview}
EVENT_NAMES: dict[EventKind, str] = {kind: name for name, kind in EVENT_KINDS.items()}


def encode_event(event: ServerEvent) -> tuple[str, dict[str, Any]]:
    """The SSE event name and JSON data of an event."""
    return EVENT_NAMES[type(event)], event.to_json()


def decode_event(name: str, data: Any) -> ServerEvent | None:
    """The typed event for an SSE event name; None for names this client does not know (a newer server)."""
    kind = EVENT_KINDS.get(name)
    if kind is None:
        return None
    convert: Callable[[Any], ServerEvent] = kind.from_json
    return decode(f"{name!r} event", convert, data)


def decode_run(data: Any) -> RunView:
    return decode("run", RunView.from_json, data)


# --- charts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayTotal:
    """One UTC day of the cost ledger: billed GPU time, its cost, and the images of the runs that ended."""

    date: date
    billed_seconds: float
    spend: float
    images: int

    def to_json(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "billed_seconds": self.billed_seconds, "spend": self.spend,
                "images": self.images}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DayTotal:
        return cls(date.fromisoformat(data["date"]), float(data["billed_seconds"]), float(data["spend"]),
                   int(data["images"]))


@dataclass(frozen=True)
class RunMinute:
    """One minute of a run since its start: the images stored in it, and the run's spend by its end."""

    images: int
    spend: float

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "spend": self.spend}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunMinute:
        return cls(int(data["images"]), float(data["spend"]))


@dataclass(frozen=True)
class RunChart:
    """A run minute by minute (the run under way, else the last one); `outcome` None while it goes on."""

    id: str
    started_at: datetime
    outcome: str | None
    minutes: Sequence[RunMinute]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "started_at": time_json(self.started_at), "outcome": self.outcome,
                "minutes": [minute.to_json() for minute in self.minutes]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunChart:
        return cls(str(data["id"]), _time(data["started_at"]), data.get("outcome"),
                   [RunMinute.from_json(minute) for minute in data["minutes"]])


@dataclass(frozen=True)
class History:
    """`GET /admin/api/history`: the owner's charts. `days` oldest first, today last."""

    days: Sequence[DayTotal]
    run: RunChart | None

    def to_json(self) -> dict[str, Any]:
        return {"days": [day.to_json() for day in self.days], "run": None if self.run is None else self.run.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> History:
        def convert(data: Mapping[str, Any]) -> History:
            return cls([DayTotal.from_json(day) for day in data["days"]],
                       _optional(data.get("run"), RunChart.from_json))

        return decode("history", convert, data)
