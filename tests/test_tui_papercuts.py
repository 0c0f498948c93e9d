"""The panel's papercuts, driven with Pilot against a real `avatargen serve`: the countdown to the next
automatic check, the step shown beside the preview, the Review tab with the safety gate off."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from tests.tui_support import footer_keys, panel, refill_everything, running_server, wait_for
from tui.widgets.live_preview import LivePreview
from tui.widgets.spend import SpendSummary

SIZE = (100, 30)


async def test_the_countdown_follows_checks_that_start_nothing(tmp_path: Path) -> None:
    """Buckets with min 0: each automatic check starts nothing and sends no event; the countdown still
    moves on to the next one instead of standing at 0 s."""
    with running_server(tmp_path, {"generator.check_every": "3s"}) as server:
        app = panel(server.url)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.main.status is not None, "the first status")
            status = app.main.status
            assert status is not None and status.next_check_at is not None
            first = status.next_check_at
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.next_check_at is not None
                           and (s.next_check_at - first).total_seconds() >= 2.5, "a later check's time", timeout=40)
            spend = str(app.main.query_one(SpendSummary).render())
            assert "next automatic check in " in spend or "automatic check due now" in spend



async def test_the_step_bar_and_the_preview_caption_say_the_same_step(tmp_path: Path) -> None:
    """A run whose previews come once a second while the step moves every 0.1 s: whenever a preview stands
    beside the step bar, the bar says the step of the picture's caption."""
    paced = {"buckets.unique.max": 3, "buckets.fallback.max": 3, "sd.steps": 20, "gpu.simulated.step_time": "100ms"}
    with running_server(tmp_path, paced) as server:
        app = panel(server.url)
        async with app.run_test(size=SIZE) as pilot:
            await refill_everything(pilot, app)
            preview = app.main.query_one(LivePreview)
            await wait_for(pilot, lambda: preview.live, "a live preview", timeout=60)
            seen = []
            for _ in range(12):
                if preview.live:
                    caption = str(preview.query_one(".live-preview-caption", Static).render())
                    seen.append((caption, str(app.main.query_one("#step-counts", Static).render())))
                await pilot.pause(0.25)
            assert seen and all(caption == f"step {bar}" for caption, bar in seen), seen


async def test_the_review_tab_says_when_the_gate_is_off_and_offers_no_key_that_does_nothing(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:  # [review] enabled = false, as shipped
        app = panel(server.url)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.main.status is not None, "the first status")
            await pilot.press("v")
            grid = app.main.review_grid
            await wait_for(pilot, lambda: "safety gate is off" in str(grid.border_title), "the gate's word")
            assert str(grid.border_title) == ("the safety gate is off (review.enabled = false): no image is held "
                                              "back for review")
            await pilot.pause()
            keys = footer_keys(app).keys()
            assert "q" in keys and not keys & {"y", "d", "space"}, " ".join(sorted(keys))
