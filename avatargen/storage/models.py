"""What storage holds, whichever the backend: image ids, the records of stored images, a claimed unique,
what start-up recovery did, a visitor's face and the unique allowance's state.

Plain values only: the backends (`avatargen.storage.files`, `avatargen.storage.redis`) store and return
them, the protocols (`avatargen.storage.protocols`) name them, and nothing here reads a disk or a network.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avatargen.imaging import sniff_format
from avatargen.timestamps import utc_iso

ID = re.compile(r"[A-Za-z0-9_-]{1,100}")  # used with fullmatch: `$` would also accept a trailing newline
# How much of a rejected id an error message quotes: ids come from URLs, and a 60 kB one must not be echoed.
_QUOTED_ID = 40


def check_id(image_id: str) -> str:
    """Return the id if it is safe to use in a file name (no path traversal); else raise ValueError."""
    if not isinstance(image_id, str) or not ID.fullmatch(image_id):
        quoted = repr(image_id)
        if len(quoted) > _QUOTED_ID:
            quoted = quoted[:_QUOTED_ID] + "..."
        raise ValueError(f"invalid image id {quoted}: expected 1-100 letters, digits, '-' or '_'")
    return image_id


def new_id(now: datetime | None = None) -> str:
    """A fresh image id that sorts by creation time: `20261124T235959-123456-1a2b3c4d` (UTC, µs, random)."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S-%f}-{secrets.token_hex(4)}"


def stamped(bucket: str, image: bytes, metadata: dict[str, Any],
            image_id: str | None = None) -> tuple[str, dict[str, Any], datetime]:
    """What publishing an image into `bucket` stores, whatever the backend: its id (new unless given), its
    metadata with `created_at` (now, unless given) and that moment. ValueError when the image is not WebP or
    the metadata is not JSON with an ISO 8601 `created_at`."""
    if sniff_format(image) != "WEBP":
        raise ValueError(f"the {bucket} bucket stores WebP images; got data starting {image[:12]!r}")
    now = datetime.now(UTC)
    image_id = check_id(image_id) if image_id is not None else new_id(now)
    metadata = {**metadata, "created_at": metadata.get("created_at") or utc_iso(now)}
    try:
        created_at = datetime.fromisoformat(metadata["created_at"])
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image metadata must be JSON with an ISO 8601 created_at: {exc}") from None
    return image_id, metadata, created_at


@dataclass(frozen=True)
class ImageRecord:
    """One stored image: where it is (None in a bucket that lives in Redis) and what its sidecar says."""

    id: str
    bucket: str
    path: Path | None
    metadata: dict[str, Any]
    created_at: datetime
    kept: bool = False  # the owner keeps it for good: never retired
    held: bool = False  # held back by the safety gate, waiting in the review folder: never served


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery did to a bucket."""

    released: int = 0  # claimed uniques never sent, put back
    temp_removed: int = 0  # work files left in .tmp/
    orphans_removed: int = 0  # sidecars and framed copies whose image is gone

    def summary(self) -> dict[str, int]:
        """The counts, for the log (empty when there was nothing to do)."""
        counts = {"released": self.released, "temp_removed": self.temp_removed, "orphans_removed": self.orphans_removed}
        return {name: count for name, count in counts.items() if count}


@dataclass(frozen=True)
class Claim:
    """A unique taken out of its bucket: `image` is what the visitor gets (framed when the bucket frames)."""

    id: str
    image: bytes
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Face:
    """What a visitor got: a unique (with its variants archive, for them alone) or a fallback, until when."""

    kind: str  # "unique" | "fallback"
    id: str
    until: float  # wall-clock seconds
    variants: bytes | None = None  # a unique's variants archive; None for a fallback (read from its bucket)


@dataclass(frozen=True)
class AllowanceState:
    """The whole allowance, as `avatargen migrate` carries it between the folders and Redis: the global
    tokens (with when they were counted), when the fallback retire slot is due, and each visitor still
    inside the per-visitor window with when it got its unique (wall-clock seconds)."""

    tokens: float
    tokens_at: float
    next_retire_at: float
    visitors: dict[str, float] = field(default_factory=dict)
