"""What the server and the generator need from storage, whichever the backend.

The folders (`avatargen.storage.files`: the bucket folders and the SQLite files) and Redis
(`avatargen.storage.redis`) both provide these. What happens on every visit (counting, picking a
random id, the allowance's "certainly not" answers) is plain and answers from memory; whatever touches
the disk or the network is a coroutine, so the event loop never waits on either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self

from avatargen.storage.models import Claim, Face, ImageRecord
from avatargen.storage.spend import Entry, Spend


class StoredBucket(Protocol):
    """One bucket of avatars (see `avatargen.storage.files.bucket.Bucket` for the rules every backend keeps)."""

    name: str

    @property
    def prepare(self) -> Callable[[bytes], bytes] | None:
        """What a unique's claimer receives, made from the stored image at publish time (None: the image)."""
        ...

    def count(self) -> int: ...
    def ids(self) -> list[str]: ...
    def random_id(self) -> str | None: ...
    def forget(self, image_id: str) -> None:
        """Drop an id found gone from the in-memory index, until the next look at the bucket (which brings
        back an id dropped by mistake). Never called because a read failed: see `unknown`."""
        ...

    async def servable(self, image_id: str) -> bool:
        """Whether this image may be served now: it is in the bucket as every process and replica sees it
        at a moment after this call (deleted, retired, moved, claimed or held is gone everywhere at once).
        The one check before anything kept in memory (the image's bytes, or anything made from them) is
        served. Cheap: a stat of its file; one Redis round trip shared by the visitors asking meanwhile.
        StorageUnavailable when that cannot be known now."""
        ...

    def unknown(self) -> str | None:
        """Why `count` cannot be trusted now (the store could not be read at the last look); None when it
        can. A level that is unknown is never taken for 0: no run starts on it."""
        ...
    async def read(self, image_id: str) -> bytes: ...
    async def metadata(self, image_id: str) -> dict[str, Any]: ...
    async def newest(self, n: int) -> list[ImageRecord]: ...
    async def publish(self, image: bytes, metadata: dict[str, Any], *, prepared: bytes | None = None,
                      image_id: str | None = None) -> ImageRecord:
        """Store an image (under `image_id` when it keeps the one it has: moved or migrated)."""
        ...

    async def delete(self, image_id: str) -> bool: ...
    async def retire(self, image_id: str) -> bool:
        """Delete a served fallback to make room for new ones, unless the owner keeps it; whether it went."""
        ...

    # --- the owner's word, and what the safety gate held back (see `avatargen.owner_actions`) ---
    def is_kept(self, image_id: str) -> bool:
        """Whether the owner keeps this image for good (asked on the visitor path when a retirement is due)."""
        ...

    async def keep(self, image_id: str, kept: bool = True) -> ImageRecord: ...
    async def move(self, image_id: str, target: Self) -> ImageRecord:
        """Into `target` under the same id; taken out first, so a visitor's claim and the move never both
        get it. ImageNotFound when it is not in this bucket."""
        ...

    def held_count(self) -> int: ...
    def rejected(self) -> int:
        """How many images were found broken and set aside (none, where nothing can break)."""
        ...

    async def hold(self, image: bytes, metadata: dict[str, Any], *, image_id: str | None = None) -> ImageRecord:
        """Store an image the safety gate held back, out of the bucket until the owner approves it."""
        ...

    async def held(self, n: int) -> list[ImageRecord]: ...
    async def read_held(self, image_id: str) -> bytes: ...
    async def delete_held(self, image_id: str) -> bool: ...
    async def approve(self, image_id: str) -> ImageRecord: ...

    async def follow(self) -> None:
        """Upkeep for as long as the server runs (a lifespan task): what keeps `count` and `random_id`
        current, and what returns uniques a dead process claimed but never sent."""
        ...


class UniqueAllowance(Protocol):
    """Who may have a unique now (a global token bucket, one per visitor per window), and the claim itself.
    A failure to reach the store is raised (after undoing what was done); the visitor gets a fallback."""

    def token_may_be_due(self) -> bool: ...
    def may_grant(self, visitor: str) -> bool: ...
    async def claim(self, visitor: str) -> Claim | None:
        """A unique for this visitor, if the allowance grants one and one is left; the token is spent only
        for a unique actually claimed."""
        ...
    async def sent(self, claim: Claim) -> None:
        """The claimed unique went out: it is gone for good."""
        ...
    def may_retire(self) -> bool: ...
    async def retire(self) -> bool: ...
    async def aclose(self) -> None: ...


class FaceStore(Protocol):
    """Where every process finds the faces visitors got (expired ones are never returned); see
    `avatargen.storage.face_memo`."""

    async def get(self, visitor: str, now: float) -> Face | None: ...
    async def put(self, visitor: str, face: Face, now: float) -> None: ...
    async def aclose(self) -> None: ...


class Ledger(Protocol):
    """The cost ledger (see `avatargen.storage.spend` and `avatargen.generator.billing`)."""

    location: str  # where it is, for the owner's messages

    async def reopen_if_lost(self) -> str | None: ...
    async def is_empty(self) -> bool: ...
    async def entries(self, since: float) -> list[Entry]: ...
    async def record(self, entries: Iterable[Entry]) -> None: ...
    async def spend(self, now: float | None = None) -> Spend: ...
    async def aclose(self) -> None: ...


class GeneratorLease(Protocol):
    """The generator's lease: only one process runs the generator, among the workers of one machine (a lock
    file, `avatargen.storage.files.lock.FileLease`) or among the replicas (a lease in Redis with a fencing
    token, `avatargen.storage.redis.lease.RedisLease`)."""

    @property
    def takeover(self) -> float:
        """At most how long after its holder dies another process holds the lease (and the generator's start-up
        stops the machine the dead holder left on): the daily budget keeps it in reserve."""
        ...

    async def acquire(self) -> bool:
        """True when this process now holds the lease; False when another one does."""
        ...

    async def wait_acquire(self) -> None:
        """Return once this process holds the lease (the holder died or let go)."""
        ...

    async def keep(self) -> None:
        """Hold on for as long as possible; raise LeaseLost when the lease was lost. Cancel to let go."""
        ...

    async def confirm(self, duration: float) -> None:
        """Return only when this process holds the lease for `duration` seconds more; raise LeaseLost otherwise.
        Awaited right before every provider call that changes the machine (see avatargen.gpu.api.Fence)."""
        ...

    def held(self) -> bool:
        """Whether this process holds the lease on its own clock, now: False once it may have lapsed (the
        process stalled past the lease, or Redis did not answer for as long), before `keep` has noticed. What
        the process says of the generator must not outlive the lease (see server.generator_place)."""
        ...

    async def holder(self) -> str | None:
        """Who holds the lease, for the owner; None when nobody does."""
        ...

    def inherited(self) -> str | None:
        """After an `acquire` that returned True: the holder that died holding the lease (this process takes
        over from it), or None when the lease was free (never held, or let go)."""
        ...

    async def release(self) -> None: ...
