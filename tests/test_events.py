"""The event hub never blocks the generator: slow listeners lose progress first, then get cut off."""

from __future__ import annotations

import asyncio

import pytest

from avatargen.events import Event, EventHub, ListenerTooSlow, Subscription


async def arrived(subscription: Subscription) -> Event:
    """The next event, which is already published: it must come at once (within a second)."""
    event = await subscription.next(1)
    assert event is not None, "no event came"
    return event


async def test_listeners_get_events_in_order_and_replay_after_last_id() -> None:
    hub = EventHub()
    first = hub.publish("state", {"state": "booting"})
    with hub.subscribe() as live:
        hub.publish("image", {"id": "a"})
        assert (await arrived(live)).data == {"id": "a"}
        assert await live.next(0.01) is None  # nothing more: the caller sends a heartbeat
    with hub.subscribe(last_id=first.id) as replay:
        assert (await arrived(replay)).data == {"id": "a"}


async def test_a_slow_listener_drops_progress_but_keeps_what_matters() -> None:
    hub = EventHub(queue_size=4)
    with hub.subscribe(last_id=hub.last_id) as slow:
        for step in range(3):
            hub.publish("image", {"n": step})
        for step in range(100):
            hub.publish("progress", {"done": step})  # never blocks, whatever the listener does
        received = [await arrived(slow) for _ in range(4)]
    assert [event.type for event in received] == ["image", "image", "image", "progress"]


async def test_a_listener_that_falls_behind_on_images_is_cut_off_and_can_catch_up() -> None:
    hub = EventHub(queue_size=2)
    with hub.subscribe(last_id=hub.last_id) as slow:
        seen = hub.publish("image", {"n": 0})
        for n in range(1, 5):
            hub.publish("image", {"n": n})
        assert hub.listener_count == 0  # the generator no longer waits for it
        with pytest.raises(ListenerTooSlow):
            await slow.next(1)
    with hub.subscribe(last_id=seen.id) as again:  # what a reconnect with Last-Event-ID gets
        assert [(await arrived(again)).data["n"] for _ in range(4)] == [1, 2, 3, 4]


async def test_publish_wakes_a_waiting_listener() -> None:
    hub = EventHub()
    with hub.subscribe() as listener:
        waiting = asyncio.create_task(listener.next(5))
        await asyncio.sleep(0)
        hub.publish("log", {"message": "hello"})
        event = await waiting
        assert event is not None and event.data == {"message": "hello"}


async def test_a_preview_goes_to_who_listens_now_and_is_never_replayed() -> None:
    hub = EventHub(queue_size=2)
    before = hub.publish("state", {"state": "generating"})
    with hub.subscribe() as live, hub.subscribe() as slow:
        hub.publish("preview", {"step": 5})
        assert (await arrived(live)).data == {"step": 5}
        for step in range(10, 20):
            hub.publish("preview", {"step": step})  # the slow one's queue fills: later previews are dropped
        assert hub.listener_count == 2  # dropping previews cut no one off
        assert [(await arrived(slow)).data["step"] for _ in range(2)] == [5, 10]
        assert await slow.next(0.01) is None
        hub.publish("image", {"id": "a"})
    with hub.subscribe(last_id=before.id) as replay:
        assert (await arrived(replay)).type == "image"  # a reconnect replays what matters, not stale pictures
        assert await replay.next(0.01) is None


async def test_a_new_listener_gets_the_recent_log_first_and_a_reconnecting_one_only_what_it_missed() -> None:
    hub = EventHub(recent_logs=3)
    for n in range(5):
        hub.publish("log", {"n": n})
        hub.publish("progress", {"done": n})  # not replayed: the status says where a run is
    with hub.subscribe() as new:
        assert [(await arrived(new)).data for _ in range(3)] == [{"n": 2}, {"n": 3}, {"n": 4}]
        assert await new.next(0.01) is None
    with hub.subscribe(last_id=hub.last_id) as reconnecting:
        assert await reconnecting.next(0.01) is None
    with hub.subscribe(last_id=hub.last_id + 100) as from_before_a_restart:
        assert (await arrived(from_before_a_restart)).data == {"n": 2}


async def test_a_client_whose_last_event_was_a_preview_gets_no_log_again() -> None:
    hub = EventHub()
    hub.publish("log", {"n": 1})
    preview = hub.publish("preview", {"step": 5})
    with hub.subscribe(last_id=preview.id) as reconnecting:  # not taken for an id from before a restart
        assert await reconnecting.next(0.01) is None


async def test_a_stream_of_events_ends_when_told_to_stop_or_when_cut_off() -> None:
    hub = EventHub(queue_size=2)
    stop = asyncio.Event()
    with hub.subscribe() as listener:
        hub.publish("log", {"n": 1})
        stream = listener.until(stop)
        assert (await anext(stream)).data == {"n": 1}
        waiting = asyncio.ensure_future(anext(stream))
        stop.set()  # the server shuts down while the stream waits
        with pytest.raises(StopAsyncIteration):
            await waiting
    with hub.subscribe(last_id=hub.last_id) as slow:
        for n in range(5):
            hub.publish("image", {"n": n})
        assert [event.data async for event in slow.until(asyncio.Event())] == []  # cut off: it reconnects
