"""`FreshLook`: a caller is answered only by a look begun after it called, and callers share looks."""

from __future__ import annotations

import asyncio

import pytest

from avatargen.storage.redis.fresh_look import FreshLook


async def test_a_look_under_way_does_not_answer_a_later_caller_and_later_callers_share_the_next() -> None:
    begun: list[int] = []
    release = asyncio.Event()

    async def read() -> None:
        begun.append(len(begun))
        await release.wait()

    look = FreshLook(read)
    first = asyncio.create_task(look())
    while not begun:  # the first look is under way
        await asyncio.sleep(0)
    later = [asyncio.create_task(look()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert begun == [0] and not any(task.done() for task in later)  # they wait for a look of their own
    release.set()
    await asyncio.gather(first, *later)
    assert begun == [0, 1]  # one more look, shared by the five


async def test_a_failed_look_fails_its_callers_and_the_next_call_looks_again() -> None:
    outcomes = iter([ConnectionError("down"), None])

    async def read() -> None:
        if (failure := next(outcomes)) is not None:
            raise failure

    look = FreshLook(read)
    with pytest.raises(ConnectionError):
        await look()
    await look()
