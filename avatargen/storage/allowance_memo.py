"""What one process knows of the unique allowance without asking the shared store, whichever the backend.

The request path must stay cheap: a process remembers when the next token can be due at the earliest,
which visitors it has seen served, and when the fallback retire slot is due, and asks the shared store
(SQLite, `avatargen.storage.files.allowance`, or Redis, `avatargen.storage.redis.allowance`) only when a
grant or the slot might be had. Other processes can only take tokens and slots, never add them, so this
memory errs on the side of asking.
"""

from __future__ import annotations

from collections.abc import Callable

# Visitors a process remembers as served, so their repeat visits skip the store; the oldest are dropped.
REMEMBERED_VISITORS = 10_000


class AllowanceMemo:
    """What one process knows of the allowance without asking the shared store. `clock` is wall-clock
    seconds, the clock the store's times are in."""

    def __init__(self, *, every: float, burst: int, window: float, clock: Callable[[], float]) -> None:
        self.every = every
        self.burst = burst
        self.window = window
        self.clock = clock
        self._next_token_at = float("-inf")
        self._next_retire_at = float("-inf")
        self._served: dict[str, float] = {}

    def token_may_be_due(self) -> bool:
        """False when no unique can be given to anyone yet; no I/O, no visitor needed."""
        return self.burst >= 1 and self.clock() >= self._next_token_at

    def may_grant(self, visitor: str) -> bool:
        """False when a grant would certainly be refused; no I/O, for the request path."""
        if not self.token_may_be_due():
            return False
        granted_at = self._served.get(visitor)
        return granted_at is None or granted_at <= self.clock() - self.window

    def may_retire(self) -> bool:
        """False when the retire slot is certainly not due yet; no I/O."""
        return self.clock() >= self._next_retire_at

    def tokens_left(self, tokens: float, now: float) -> None:
        """The store said `tokens` were left at `now`: none can be due before the next whole one."""
        self._next_token_at = now + (1 - tokens) * self.every if tokens < 1 else now

    def served(self, visitor: str, granted_at: float) -> None:
        """The visitor had a unique at `granted_at` (here or, as the store said, elsewhere)."""
        self._served.pop(visitor, None)
        self._served[visitor] = granted_at
        if len(self._served) > REMEMBERED_VISITORS:
            del self._served[next(iter(self._served))]

    def given_back(self, visitor: str, now: float) -> None:
        """A grant was undone: the token is back and the visitor may try again."""
        self._served.pop(visitor, None)
        self._next_token_at = now

    def retire_due_at(self, due_at: float) -> None:
        self._next_retire_at = due_at
