"""What the owner sees, screen by screen, as SVG snapshots (`pytest --snapshot-update` to accept changes).

The live screens come from a real server whose every shown value holds still: seeded images with fixed
times and pixels, prompt lists of one entry each (so samples cannot vary), checks a week apart, no run.
A run in progress cannot hold still on a real server, so the mid-run overview is rendered from a fixed
status instead, at the smallest supported terminal and at a large one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input

import tui.app
from avatargen.api import DayTotal, History, LogEntry, Preview, RunChart, RunMinute, Status
from avatargen.imaging import preview_webp
from avatargen.simulator.drawing import preview_png
from tests.tui_support import ServerProcess, panel, running_server, seed_images, wait_for
from tui.connection import Backoff
from tui.screens.confirm_abort import ConfirmAbortScreen
from tui.screens.main import MainScreen
from tui.screens.problem import ProblemScreen
from tui.widgets.event_log import EventLog
from tui.widgets.history_charts import HistoryCharts
from tui.widgets.link_indicator import LinkIndicator
from tui.widgets.prompt_editor import PromptEditor

SIZE = (100, 30)
Snap = Callable[..., bool]
STEADY_PROMPTS = {
    "prompts.film_only": 0.0, "prompts.artist_only": 0.0, "prompts.both": 1.0,
    "prompts.suffix_min": 1, "prompts.suffix_max": 1,
    "prompts.prefixes": ["A watercolour"], "prompts.artists": ["Hokusai"], "prompts.films": ["Akira"],
    "prompts.suffixes": ["soft light"],
}

SEEDED_PROMPTS = [
    "A watercolour of cjs, in the style of Hokusai, soft light",
    "A watercolour of cjs from the film Akira, in the style of Hokusai, soft light, bokeh",
    "A sketch of cjs, film grain, 8K",
]


@pytest.fixture(scope="module", autouse=True)
def local_time_is_utc() -> Iterator[None]:
    """Times are shown in local time; snapshots must not depend on the machine's time zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("snapshots")
    seed_images(directory / "data" / "fallback", 3, SEEDED_PROMPTS)
    seed_images(directory / "data" / "unique", 2, SEEDED_PROMPTS[:2], held_because="no face (best: FACE_MALE 0.21)")
    with running_server(directory, STEADY_PROMPTS) as process:
        yield process


async def tabs_drawn(pilot: Pilot[Any]) -> None:
    """Until the tab bar's underline marks the active tab: it is placed after the tabs are laid out, and a
    snapshot taken before that (a busy machine) shows a bar with no tab marked."""
    await wait_for(pilot, lambda: any(getattr(line, "highlight_end", 0) > 0  # Textual's Tabs' Underline
                                      for line in pilot.app.screen.query("Underline")), "the active tab's underline")


async def settled(pilot: Pilot[Any]) -> None:
    """Connected, thumbnails and the last image drawn, the charts and sample prompts shown: nothing left in
    flight."""
    app = pilot.app
    assert isinstance(app, tui.app.AvatarApp)
    main = app.main
    # Queries, not query_one: this runs while the screen may still be composing.
    await wait_for(pilot, lambda: main.query("LinkIndicator.-live"), "the connection")
    await wait_for(pilot, lambda: len(main.query("#thumbnails Thumbnail")) == 3, "the seeded thumbnails")
    await wait_for(pilot, lambda: len(main.query("#review-grid Thumbnail")) == 2, "the held images")
    await wait_for(pilot, lambda: "1. " in str(main.query_one("#samples").render()), "the sample prompts")
    await wait_for(pilot, lambda: main.newest is not None, "the last image beside the step bar")
    await wait_for(pilot, lambda: main.query_one(HistoryCharts).history is not None, "the history charts")
    for field in main.query(Input):
        field.cursor_blink = False
    await tabs_drawn(pilot)


def test_overview(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), terminal_size=SIZE, run_before=settled)


def test_thumbnails(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["i"], terminal_size=SIZE, run_before=settled)


def test_image_detail(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["i", "right", "enter"], terminal_size=SIZE, run_before=settled)


def test_thumbnails_marked_for_an_action_on_several(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["i", "space", "space"], terminal_size=SIZE, run_before=settled)


def test_delete_confirmation(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["i", "space", "space", "d"], terminal_size=SIZE,
                        run_before=settled)


def test_review_view(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["v"], terminal_size=SIZE, run_before=settled)


def test_image_detail_of_a_held_image(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["v", "enter"], terminal_size=SIZE, run_before=settled)


def test_prompt_editor(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["p"], terminal_size=SIZE, run_before=settled)


def test_prompt_editor_shows_the_servers_message_by_its_field(snap_compare: Snap, server: ServerProcess) -> None:
    async def reject(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        await pilot.press("p")
        editor = pilot.app.query_one(PromptEditor)
        editor.query_one("#suffix_max", Input).focus()
        await pilot.press("end", "backspace", "4")
        await wait_for(pilot, lambda: editor.query_one("#error-suffix_max").display, "the server's message")

    assert snap_compare(panel(server.url), terminal_size=SIZE, run_before=reject)


def test_prompt_editor_marks_mistakes_and_stale_samples(snap_compare: Snap, server: ServerProcess) -> None:
    async def mistype(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        await pilot.press("p", "tab", "tab", "end", "backspace", "backspace", "backspace", *"0.5")  # film only
        await pilot.press("tab", "end", "x")  # artist only: "0.0x"
        editor = pilot.app.query_one(PromptEditor)
        await wait_for(pilot, lambda: editor.query_one("#error-artist_only").display, "the field's message")
        await wait_for(pilot, lambda: editor.query_one("#error-weights").display, "the weights' message")

    assert snap_compare(panel(server.url), terminal_size=SIZE, run_before=mistype)


def test_refill_dialog(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["r"], terminal_size=SIZE, run_before=settled)


def test_unreachable_server(snap_compare: Snap) -> None:
    async def refused(pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ProblemScreen), "the problem screen")

    # Port 9 (discard) has no listener; a long first wait keeps the retry countdown still.
    app = panel("http://127.0.0.1:9", backoff=Backoff(initial=600, maximum=600))
    assert snap_compare(app, terminal_size=SIZE, run_before=refused)


MID_RUN: dict[str, Any] = {
    "state": "generating",
    "run": {
        "id": "20250101T120000-7f3a", "trigger": "manual", "started_at": "2025-01-01T12:00:00+00:00",
        "targets": {"unique": 18, "fallback": 35}, "done": 21, "failed": 1, "total": 53, "eta_seconds": 94.0,
        "images_per_minute": 20.4, "state": "generating", "billed_seconds": 83.0, "cost": 0.0175,
        "current_prompt": "An oil painting of cjs from the film Akira, in the style of Hokusai, soft light, bokeh",
        "step": {"sampling_step": 12, "sampling_steps": 20, "progress": 0.6},
    },
    "last_run": {
        "id": "20241231T230000-6e21", "trigger": "auto", "started_at": "2024-12-31T23:00:00+00:00",
        "targets": {"unique": 30}, "done": 12, "failed": 5, "total": 30, "eta_seconds": 0,
        "billed_seconds": 140.0, "cost": 0.0296, "outcome": "failed",
        "error": "5 images failed in a row; last: the SD web UI answered 500", "ended_at": "2024-12-31T23:02:20+00:00",
    },
    "buckets": {"unique": {"count": 12, "min": 10, "max": 30}, "fallback": {"count": 5, "min": 20, "max": 40}},
    "gpu": {"provider": "paperspace", "machine_state": "ready",
            "notes": ["auto-shutdown is off on machine psabc123: nothing stops it if avatargen dies for good"]},
    "cost": {"today": 1.25, "month": 18.4, "daily_budget": 5.0, "billed_seconds_today": 5921,
             "billed_seconds_month": 87150, "hourly_rate": 0.51, "rate_source": "provider"},
    "next_check_at": None,
    "paused_reason": None,
    "visitors": {"errors": 7, "last_error": "unique claim: [Errno 30] Read-only file system",
                 "last_error_at": "2025-01-01T11:58:00+00:00"},
}


MID_RUN_LOG = [
    LogEntry(datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC), "info", "manual run 20250101T120000-7f3a: booting the GPU"),
    LogEntry(datetime(2025, 1, 1, 12, 0, 41, tzinfo=UTC), "info", "machine ready; generating 53 images"),
    LogEntry(datetime(2025, 1, 1, 12, 1, 2, tzinfo=UTC), "warning",
             "image failed (1 in a row): the SD web UI answered 500 Internal Server Error; the run goes on with "
             "the next prompt and ends after 5 failures in a row"),
    LogEntry(datetime(2025, 1, 1, 12, 1, 5, tzinfo=UTC), "error",
             "could not load image 20250101T120104-000001-1a2b3c4d: cannot reach http://127.0.0.1:8080"),
]


# The run minute by minute (the boot's first minute makes nothing) and 30 days with runs on some of them.
MID_RUN_HISTORY = History(
    [DayTotal(date(2024, 12, 3) + timedelta(days=day), 600.0 * (day % 4), 0.127 * (day % 4), 40 * (day % 4))
     for day in range(29)] + [DayTotal(date(2025, 1, 1), 83.0, 0.0175, 21)],
    RunChart("20250101T120000-7f3a", datetime(2025, 1, 1, 12, tzinfo=UTC), None,
             [RunMinute(0, 0.0087), RunMinute(14, 0.0155), RunMinute(7, 0.0175)]),
)


def mid_run_preview() -> Preview:
    """What the generator sends at step 12 of 20: the simulator's picture of the job, made small."""
    png = preview_png(MID_RUN["run"]["current_prompt"], 7, 512, 512, denoised=12 / 20)
    return Preview(MID_RUN["run"]["id"], "fallback", MID_RUN["run"]["current_prompt"], 12, 20, "image/webp",
                   preview_webp(png))


class FrozenMainScreen(MainScreen):
    def on_mount(self) -> None:
        self.status = Status.from_json(MID_RUN)
        self.query_one(LinkIndicator).show_live()
        for entry in MID_RUN_LOG:
            self.log_entry(entry)
        self.show_preview(mid_run_preview())
        self.show_history(MID_RUN_HISTORY)


class OverviewOnly(App[None]):
    """The main screen showing a fixed status: a run in progress frozen at one moment."""

    CSS_PATH = Path(tui.app.__file__).with_name("app.tcss")

    def get_default_screen(self) -> Screen:
        self.animation_level = "none"
        return FrozenMainScreen("halfcell")


@pytest.mark.parametrize("size", [(80, 24), (160, 40)], ids=["80x24", "160x40"])
def test_a_run_in_progress(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert snap_compare(OverviewOnly(), terminal_size=size, run_before=tabs_drawn)


def test_history_charts_below_the_run_at_80x24(snap_compare: Snap) -> None:
    async def scroll_down(pilot: Pilot[Any]) -> None:
        await wait_for(pilot, lambda: pilot.app.screen.query("#dashboard"), "the overview")
        await tabs_drawn(pilot)
        pilot.app.screen.query_one("#dashboard").scroll_end(animate=False)
        await pilot.pause()

    assert snap_compare(OverviewOnly(), terminal_size=(80, 24), run_before=scroll_down)


def test_abort_confirmation(snap_compare: Snap) -> None:
    async def confirm(pilot: Pilot[Any]) -> None:
        run = Status.from_json(MID_RUN).run
        assert run is not None
        await tabs_drawn(pilot)
        await pilot.app.push_screen(ConfirmAbortScreen(run))

    assert snap_compare(OverviewOnly(), terminal_size=SIZE, run_before=confirm)


# What the overview's log shows at 160 columns: the real server's own lines name its ports, folders and clock
FIXED_LOG = [LogEntry(datetime(2026, 12, 1, 9, 0, second, tzinfo=UTC), level, message) for second, level, message in (
    (1, "INFO", "config: config.toml; buckets unique 10-30, fallback 20-40; checks every 10m; simulated GPU"),
    (2, "INFO", "simulated GPU: paperspace API at http://127.0.0.1:9001/v1, SD server (a1111) at "
                "http://127.0.0.1:9002"),
    (3, "WARNING", "the safety gate held back 2 images: review them in the Review tab"),
    (4, "INFO", "connected to http://127.0.0.1:9000"),
)]


async def settled_with_a_fixed_log(pilot: Pilot[Any]) -> None:
    await settled(pilot)
    for log in pilot.app.query(EventLog):
        log.entries.clear()
        log.clear()
        for entry in FIXED_LOG:
            log.add(entry)
    await pilot.pause()


@pytest.mark.parametrize("size", [(160, 45), (120, 40), (80, 24)], ids=["160x45", "120x40", "80x24"])
def test_overview_at_each_supported_size(snap_compare: Snap, server: ServerProcess, size: tuple[int, int]) -> None:
    """The log beside the panels only where it has room (160), the strip's cards whole with their captions,
    and every key that applies in the footer (q included at 80 columns)."""
    assert snap_compare(panel(server.url), terminal_size=size, run_before=settled_with_a_fixed_log)


def test_images_at_80x24_offer_every_key(snap_compare: Snap, server: ServerProcess) -> None:
    assert snap_compare(panel(server.url), press=["i"], terminal_size=(80, 24), run_before=settled)


AFTER_RUN = {**MID_RUN, "state": "idle", "run": None, "last_run": {
    **MID_RUN["last_run"], "outcome": "completed", "error": None, "done": 30, "failed": 0}}


class AfterRunScreen(FrozenMainScreen):
    def on_mount(self) -> None:  # after FrozenMainScreen's own (Textual calls both)
        # The run ends after the panel has laid itself out: the last-run line must keep its GPU time and cost.
        self.call_after_refresh(setattr, self, "status", Status.from_json(AFTER_RUN))


class AfterRun(OverviewOnly):
    def get_default_screen(self) -> Screen:
        self.animation_level = "none"
        return AfterRunScreen("halfcell")


def test_the_last_run_line_keeps_its_gpu_time_and_cost_at_160x45(snap_compare: Snap) -> None:
    assert snap_compare(AfterRun(), terminal_size=(160, 45))
