"""A look at shared state that every caller shares, and that always begins after the caller asked.

A visitor about to get a fallback from memory must know that it was not deleted by another replica before
the visitor came: a look that was already under way when the visitor arrived may have been answered before
the delete, so it does not do. Asking Redis once per visitor would cost a round trip each; instead the
callers that arrive while one look is under way all wait for the next one, which begins as soon as that
one ends. Under load that is one round trip for a whole batch of visitors, and each of them still sees
the state as of a moment after it asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class FreshLook:
    """`await look()` runs `read` (or joins a run of it that has not begun yet) and returns once a run
    begun after the call has ended; its exception, if it raised, is raised to every caller of that run."""

    def __init__(self, read: Callable[[], Awaitable[object]]) -> None:
        self._read = read
        self._under_way: asyncio.Future[None] | None = None
        self._next: asyncio.Future[None] | None = None  # the run that begins once the one under way ends

    async def __call__(self) -> None:
        if self._next is None:
            self._next = asyncio.ensure_future(self._run_after(self._under_way))
            self._next.add_done_callback(_retrieved)
        await asyncio.shield(self._next)  # a visitor who goes away does not cancel the others' look

    async def _run_after(self, before: asyncio.Future[None] | None) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])
        self._under_way, self._next = self._next, None  # from here on, newcomers wait for the next run
        await self._read()


def _retrieved(run: asyncio.Future[None]) -> None:
    """Mark a run's exception as seen: its callers may all have gone away before it ended."""
    if not run.cancelled():
        run.exception()
