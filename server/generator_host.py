"""Runs the generator in this process while it holds the generator's lease, and stands by otherwise.

Every worker and every replica starts one of these; exactly one holds the lease (a lock file among the
workers of one machine, a lease in Redis among replicas) and runs the generator. The others wait for
the lease: when its holder dies, one of them takes over, and the generator's start-up stops a machine
the dead holder left on. A holder that loses a lease (Redis unreachable for its whole ttl, or a replica
that took over after this one stalled) stops its generator at once, "lost the generator lease": the run
is aborted, and it stands by again. The machine is stopped only if the lease is still confirmed (see
`GeneratorLease.confirm`): otherwise it belongs to the new holder, which stopped it when it took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from avatargen.generator import AvatarGenerator
from avatargen.storage.errors import LeaseLost, StorageUnavailable
from avatargen.storage.protocols import GeneratorLease
from avatargen.tasks import background

log = logging.getLogger("avatargen.server")

# The generator with what it needs (a simulated GPU, say), started on entry and closed on exit; its argument
# says whether the generator came here from another process (the lease was taken when this one started).
GeneratorFactory = Callable[[bool], AbstractAsyncContextManager[AvatarGenerator]]


class GeneratorHost:
    """`on_change` hears of the generator when it starts here and of None when it stops."""

    def __init__(self, lease: GeneratorLease, factory: GeneratorFactory, *,
                 on_change: Callable[[AvatarGenerator | None], None] = lambda generator: None) -> None:
        self.lease = lease
        self.factory = factory
        self.on_change = on_change
        # Set once start-up knows where the generator runs: started here, or the lease found taken.
        self.settled = asyncio.Event()
        # Whether the generator came here from another process (the lease was taken when this one started).
        self.took_over = False

    async def run(self) -> None:
        """Hold the lease and run the generator, for ever (cancel it at shutdown: the run is aborted and the
        machine stopped, then the lease given up for the next holder)."""
        try:
            held = await self.lease.acquire()
            dead = self.lease.inherited() if held else None
            if dead is not None:
                log.warning("the generator's last process (%s) died holding it: this one takes over", dead)
                self.took_over = True
        except StorageUnavailable as exc:
            log.warning("%s; the generator starts once it answers", exc)
            held = False
        while True:
            if not held:
                self.settled.set()
                await self.lease.wait_acquire()
                self.took_over = True
            try:
                await self._serve()
            except LeaseLost as exc:
                log.error("lost the generator lease (%s): this replica stopped its generator and stands by", exc)
            held = False

    async def _serve(self) -> None:
        try:
            async with self.factory(self.took_over) as generator:
                self.on_change(generator)
                self.settled.set()
                try:
                    await self.lease.keep()
                except LeaseLost as exc:
                    generator.stand_down(f"lost the generator lease ({exc})")
                    raise
                finally:
                    self.on_change(None)
        finally:
            await self.lease.release()


@contextlib.asynccontextmanager
async def hosting(host: GeneratorHost) -> AsyncIterator[GeneratorHost]:
    """The host running as a task while the block runs, which starts once the generator has started here or
    is known to run elsewhere; at its end the generator is closed (its machine off)."""
    async with background(host.run(), "generator host") as task:
        settled = asyncio.ensure_future(host.settled.wait())
        try:
            await asyncio.wait((task, settled), return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
        if task.done():
            task.result()  # the generator could not start: the server does not either
        yield host
