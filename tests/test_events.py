"""The event hub never blocks the generator: slow listeners lose progress first, then get cut off."""

from __future__ import annotations

import asyncio

import pytest

from avatargen.events import EventHub, ListenerTooSlow


async def test_listeners_get_events_in_order_and_replay_after_last_id() -> None:
    hub = EventHub()
    first = hub.publish("state", {"state": "booting"})
    with hub.subscribe() as live:
        hub.publish("image", {"id": "a"})
        assert (await live.next(1)).data == {"id": "a"}
        assert await live.next(0.01) is None  # nothing more: the caller sends a heartbeat
    with hub.subscribe(last_id=first.id) as replay:
        assert (await replay.next(1)).data == {"id": "a"}


async def test_a_slow_listener_drops_progress_but_keeps_what_matters() -> None:
    hub = EventHub(queue_size=4)
    with hub.subscribe() as slow:
        for step in range(3):
            hub.publish("image", {"n": step})
        for step in range(100):
            hub.publish("progress", {"done": step})  # never blocks, whatever the listener does
        received = [await slow.next(1) for _ in range(4)]
    assert [event.type for event in received] == ["image", "image", "image", "progress"]


async def test_a_listener_that_falls_behind_on_images_is_cut_off_and_can_catch_up() -> None:
    hub = EventHub(queue_size=2)
    with hub.subscribe() as slow:
        seen = hub.publish("image", {"n": 0})
        for n in range(1, 5):
            hub.publish("image", {"n": n})
        assert hub.listener_count == 0  # the generator no longer waits for it
        with pytest.raises(ListenerTooSlow):
            await slow.next(1)
    with hub.subscribe(last_id=seen.id) as again:  # what a reconnect with Last-Event-ID gets
        assert [(await again.next(1)).data["n"] for _ in range(4)] == [1, 2, 3, 4]


async def test_publish_wakes_a_waiting_listener() -> None:
    hub = EventHub()
    with hub.subscribe() as listener:
        waiting = asyncio.create_task(listener.next(5))
        await asyncio.sleep(0)
        hub.publish("log", {"message": "hello"})
        assert (await waiting).data == {"message": "hello"}


async def test_a_preview_goes_to_who_listens_now_and_is_never_replayed() -> None:
    hub = EventHub(queue_size=2)
    before = hub.publish("state", {"state": "generating"})
    with hub.subscribe() as live, hub.subscribe() as slow:
        hub.publish("preview", {"step": 5})
        assert (await live.next(1)).data == {"step": 5}
        for step in range(10, 20):
            hub.publish("preview", {"step": step})  # the slow one's queue fills: later previews are dropped
        assert hub.listener_count == 2  # dropping previews cut no one off
        assert [(await slow.next(1)).data["step"] for _ in range(2)] == [5, 10]
        assert await slow.next(0.01) is None
        hub.publish("image", {"id": "a"})
    with hub.subscribe(last_id=before.id) as replay:
        assert (await replay.next(1)).type == "image"  # a reconnect replays what matters, not stale pictures
        assert await replay.next(0.01) is None
