"""Where the generator runs, as one server process knows it: here (this process holds the generator's lease and
its `AvatarGenerator`), or in another worker or replica, which the owner's requests reach through the forwarder.

The place changes in two ways only, each by one method: the generator host reports the generator started or
stopped here (`moved`), and a forwarded request that found nobody to answer it teaches the reason
(`forward`). The handlers ask; they never set it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from avatargen.generator import AvatarGenerator
from avatargen.storage.protocols import GeneratorLease
from server.forwarding import Forwarder, GeneratorUnreachable

# Why this process does not run the generator once it stopped here: another process holds the lease now.
ELSEWHERE = "the generator runs in another process"
# Why, when no reason is known yet (start-up found the lease taken, or no process holds it).
NOT_RUNNING = "the generator is not running"
# Why, while this process still has its generator but no longer the lease (it stalled past it, or Redis did
# not answer for as long): another replica may run the generator now, and this one is about to stand down.
LAPSED = "this process's generator lease lapsed: the generator may run in another replica"


class GeneratorPlace:
    """The generator of this process, or how to reach it elsewhere and why it is not here."""

    def __init__(self, forwarder: Forwarder, lease: GeneratorLease) -> None:
        self.forwarder = forwarder
        self.lease = lease  # the generator's lease, which the generator host holds or waits for
        self._here: AvatarGenerator | None = None
        self._why_elsewhere: str | None = None  # None until something told this process

    @property
    def here(self) -> AvatarGenerator | None:
        """This process's generator, while it holds the lease. Between the lease lapsing (a replica woken from
        a stall) and the host noticing (its renewal refused), the generator is still here but speaks for a
        run that may be another replica's: the owner's requests go to the lease's holder meanwhile."""
        return self._here if self._here is not None and self.lease.held() else None

    @property
    def why_elsewhere(self) -> str | None:
        """What this process last learned of why the generator is not here (None: nothing yet)."""
        return LAPSED if self._here is not None and not self.lease.held() else self._why_elsewhere

    def generator(self) -> AvatarGenerator:
        """The generator of this process; `GeneratorElsewhere` (with the reason) when another one runs it."""
        here = self.here
        if here is None:
            raise GeneratorElsewhere(self.why_elsewhere or NOT_RUNNING)
        return here

    def moved(self, generator: AvatarGenerator | None) -> None:
        """The generator host's news: the generator started here, or (None) stopped here."""
        self._here = generator
        if generator is None:
            self._why_elsewhere = ELSEWHERE

    def forwards(self, *, stream: bool = False) -> bool:
        """Whether an owner's request goes to the generator's process: it runs elsewhere, and for the event
        stream the forwarder can stream (else each process relays the events into its own hub)."""
        return self.here is None and (not stream or self.forwarder.streams)

    async def forward(self, request: Request, *, stream: bool = False) -> Response:
        """The answer of the generator's process; when it cannot be reached, remember why (the status and the
        503s say so) and raise `GeneratorUnreachable`."""
        try:
            return await self.forwarder.forward(request, stream=stream)
        except GeneratorUnreachable as exc:
            self._why_elsewhere = str(exc)
            raise


class GeneratorElsewhere(Exception):
    """This process does not run the generator; the message says why, as far as it knows."""
