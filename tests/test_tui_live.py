"""The panel driven with Pilot against a real `avatargen serve` process and its simulated GPU."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tomlkit
from textual.geometry import Region
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Static

from avatargen.api import LogEntry, Preview
from tests.tui_support import ServerProcess, panel, running_server, seed_images, wait_for
from tui.app import AvatarApp
from tui.messages import Answered, Connected, Disconnected, Received, StatusFetched
from tui.screens.confirm_abort import ConfirmAbortScreen
from tui.screens.image_detail import ImageDetailScreen
from tui.screens.problem import ProblemScreen
from tui.screens.refill import RefillScreen
from tui.widgets.event_log import EventLog
from tui.widgets.history_charts import HistoryCharts
from tui.widgets.last_run import LastRunSummary
from tui.widgets.link_indicator import LinkIndicator
from tui.widgets.live_preview import LivePreview
from tui.widgets.prompt_editor import PromptEditor
from tui.widgets.state_diagram import StateDiagram
from tui.widgets.thumbnail_grid import ThumbnailGrid
from tui.widgets.word_list import WordList

SIZE = (100, 30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(tmp_path) as process:
        yield process


def collect(kind: type[Message], into: list[Message]) -> Callable[[Message], None]:
    """A message hook that keeps the messages of one kind."""

    def hook(message: Message) -> None:
        if isinstance(message, kind):
            into.append(message)

    return hook


def answers(messages: list[Message]) -> list[str]:
    return [message.text for message in messages if isinstance(message, Answered)]


def logged(app: AvatarApp) -> str:
    """Every message in the panel's log, one a line."""
    return "\n".join(entry.message for entry in app.main.query_one("#log-view", EventLog).entries)


async def test_refill_from_the_panel_walks_every_state_and_shows_the_new_images(server: ServerProcess) -> None:
    app = panel(server.url)
    seen: list[Message] = []
    events: list[Message] = []
    hooks = (collect(Answered, seen), collect(Received, events))

    def hook_all(message: Message) -> None:
        for hook in hooks:
            hook(message)

    async with app.run_test(size=SIZE, message_hook=hook_all) as pilot:
        await wait_for(pilot, lambda: app.main.status is not None, "the first status")
        states: list[str] = []
        app.watch(app.main.query_one(StateDiagram), "state", lambda state: states.append(state), init=False)

        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RefillScreen), "the refill dialog")
        await pilot.press("enter")  # "Start refill" has the focus; both buckets are ticked
        await wait_for(pilot, lambda: states[-1:] == ["idle"], "the run to end", timeout=30)

        assert states == ["booting", "generating", "shutting_down", "idle"]
        assert any(text.startswith("Refill started: run ") for text in answers(seen))
        grid = app.main.query_one("#thumbnails", ThumbnailGrid)
        await wait_for(pilot, lambda: len(grid.cards) == 5, "five thumbnails (2 unique + 3 fallback)")
        status = app.main.status
        assert status is not None and status.last_run is not None
        assert status.last_run.outcome == "completed"
        assert {name: level.count for name, level in status.buckets.items()} == {"unique": 2, "fallback": 3}
        assert "completed" in str(app.main.query_one(LastRunSummary).render())

        server_lines = [m.event.message for m in events if isinstance(m, Received) and isinstance(m.event, LogEntry)]
        assert server_lines, "the server logs its runs"
        await pilot.press("l")
        log_view = app.main.query_one("#log-view", EventLog)
        start = server_lines[-1][:30]  # long lines wrap: look for the start of the newest one
        await wait_for(pilot, lambda: any(start in line.text for line in log_view.lines), "the live log")


async def test_abort_asks_first_then_stops_the_run(tmp_path: Path) -> None:
    # Enough images, made slowly enough, that the run is still generating when the owner changes their mind.
    with running_server(tmp_path, {"buckets.unique.max": 400, "gpu.simulated.step_time": "20ms"}) as server:
        app = panel(server.url)
        seen: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
            await wait_for(pilot, lambda: app.main.status is not None, "the first status")
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, RefillScreen), "the refill dialog")
            await pilot.press("f", "enter")  # untick fallback: only the big unique bucket
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.run is not None and s.run.done > 0,
                           "the first image of the run")

            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmAbortScreen), "the confirmation")
            await pilot.press("n")  # a slip of the finger changes nothing
            assert not any(text.startswith("Abort") for text in answers(seen))
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmAbortScreen), "the confirmation again")
            await pilot.press("y")

            await wait_for(pilot, lambda: any(t.startswith("Abort accepted") for t in answers(seen)), "the answer")
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.state == "idle"
                           and s.last_run is not None, "the run to end", timeout=30)
            last = app.main.status.last_run if app.main.status else None
            assert last is not None and last.outcome == "aborted"
            assert 0 < last.run.done < 400
            assert "aborted" in str(app.main.query_one(LastRunSummary).render())

            await pilot.press("a")  # nothing to abort now: the panel says so instead of asking
            await wait_for(pilot, lambda: "No run to abort" in logged(app), "the reason")
            assert not isinstance(app.screen, ConfirmAbortScreen)


async def test_refill_and_abort_offer_only_what_can_happen(tmp_path: Path) -> None:
    seed_images(tmp_path / "data" / "fallback", 3)  # at its max (3); unique is empty
    with running_server(tmp_path) as server:
        app = panel(server.url)
        seen: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
            await wait_for(pilot, lambda: app.main.status is not None, "the first status")
            await pilot.press("a")
            await wait_for(pilot, lambda: "No run to abort" in logged(app), "the reason")
            assert not isinstance(app.screen, ConfirmAbortScreen)

            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, RefillScreen), "the refill dialog")
            dialog = app.screen
            fallback = dialog.query_one("#refill-fallback", Checkbox)
            assert fallback.disabled and not fallback.value and "3 of 3, full" in str(fallback.label)
            start = dialog.query_one("#start", Button)
            await pilot.press("f", "u")  # the full bucket cannot be chosen; unticking unique leaves nothing
            await wait_for(pilot, lambda: start.disabled, "Start refill to be disabled with nothing chosen")
            assert not fallback.value
            shown = [key for key, active in dialog.active_bindings.items() if active.binding.show]
            assert shown == ["u", "f", "escape"], "the dialog's own keys, for its footer"
            await pilot.press("u")
            await wait_for(pilot, lambda: not start.disabled, "Start refill once unique is chosen again")
            await pilot.press("enter")
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.last_run is not None
                           and s.state == "idle", "the run to end", timeout=30)

            await pilot.press("r")  # now every bucket is full: nothing is offered, and nothing is sent
            full = "Nothing to refill: every bucket is at its max (unique 2 of 2, fallback 3 of 3)"
            await wait_for(pilot, lambda: full in logged(app), "the reason")
            assert not isinstance(app.screen, RefillScreen)
            assert [text for text in answers(seen) if "refused" in text] == []


async def type_into(pilot: Pilot[None], field: Input, text: str) -> None:
    """Replace a field's text by keyboard, as the owner would."""
    field.focus()
    await pilot.press("end", *["backspace"] * len(field.value), *text)


async def test_prompt_weights_are_edited_validated_and_saved_to_config_toml(server: ServerProcess) -> None:
    app = panel(server.url)
    seen: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
        editor = app.main.query_one(PromptEditor)
        await wait_for(pilot, lambda: editor.saved, "the prompt settings")
        await pilot.press("p")
        await wait_for(pilot, lambda: "1. " in str(editor.query_one("#samples").render()), "sample prompts")
        config_before = server.config.read_text()

        # Too much weight: said under the weights, and nothing is saved.
        await type_into(pilot, editor.query_one("#both", Input), "0.5")
        error = editor.query_one("#error-weights")
        await wait_for(pilot, lambda: "at most 1" in str(error.render()), "the weights' message")
        await pilot.press("ctrl+s")
        assert server.config.read_text() == config_before

        # A valid mix, a new artist, one film fewer: saved, and the file says so.
        await type_into(pilot, editor.query_one("#film_only", Input), "0.3")
        await type_into(pilot, editor.query_one("#artist_only", Input), "0.2")
        await wait_for(pilot, lambda: not error.display, "the error to clear once the mix is valid")
        await type_into(pilot, editor.query_one("#artists Input", Input), "Moebius Jr")
        await pilot.press("enter")
        films = editor.query_one("#films", WordList)
        removed = films.entries[0]
        films.query_one(OptionList).focus()
        await pilot.press("home", "delete")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any(text.startswith("Prompt settings saved") for text in answers(seen)),
                       "the save")

        saved = tomlkit.parse(server.config.read_text())["prompts"]
        assert (saved["film_only"], saved["artist_only"], saved["both"]) == (0.3, 0.2, 0.5)
        assert saved["artists"][-1] == "Moebius Jr"
        assert removed not in saved["films"]
        assert not editor.dirty


async def test_the_prompt_editor_starts_at_the_first_field_and_says_what_is_wrong_in_the_owners_words(
    server: ServerProcess,
) -> None:
    app = panel(server.url)
    async with app.run_test(size=SIZE) as pilot:
        editor = app.main.query_one(PromptEditor)
        await wait_for(pilot, lambda: editor.saved, "the prompt settings")
        await pilot.press("p", "tab")
        subject = editor.query_one("#subject", Input)
        await wait_for(pilot, lambda: app.focused is subject, "Tab to go to the first field")
        stale = editor.query_one("#samples-stale")
        assert not stale.display

        # A letter in a number field is kept, and the field says what it wants.
        film_only = editor.query_one("#film_only", Input)
        await pilot.press("tab", "end", "x")
        await wait_for(pilot, lambda: app.focused is film_only and film_only.value.endswith("x"), "the letter kept")
        film_error = editor.query_one("#error-film_only")
        await wait_for(pilot, lambda: "enter a number" in str(film_error.render()), "the field's message")
        assert stale.display, "the samples are marked out of date"

        # Weights over 1: said under the group, in the editor's own labels, whichever weight was edited.
        await type_into(pilot, film_only, "0.9")
        weights = editor.query_one("#error-weights")
        await wait_for(pilot, lambda: weights.display, "the weights' message")
        assert "film only + artist only + film and artist make 1.7; at most 1 together" in str(weights.render())
        assert not editor.query_one("#error-both").display and not film_error.display
        assert stale.display

        await type_into(pilot, film_only, "0.2")
        await wait_for(pilot, lambda: not stale.display, "fresh samples once the input is valid again")

        # The server's message about two fields: under the one the owner edited, in the owner's words.
        most = editor.query_one("#error-suffix_max")
        await type_into(pilot, editor.query_one("#suffix_max", Input), "0")
        await wait_for(pilot, lambda: most.display, "the server's message")
        assert str(most.render()) == "fewest suffixes (1) is greater than most suffixes (0)"
        assert not editor.query_one("#error-suffix_min").display
        assert stale.display


async def test_a_wrong_token_gets_a_clear_screen_not_a_traceback(server: ServerProcess) -> None:
    app = panel(server.url, token="not-the-token")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProblemScreen), "the problem screen")
        screen = app.screen
        assert "refused" in str(screen.query_one("#problem-title").render())
        assert "wrong admin token" in str(screen.query_one("#problem-message").render())
        assert "--token" in str(screen.query_one("#problem-hint").render())
        assert app.main.status is None
        assert not app.check_action("refill", ())


async def test_the_panel_survives_the_server_going_away_and_coming_back(server: ServerProcess) -> None:
    app = panel(server.url)
    connects: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=collect(Connected, connects)) as pilot:
        indicator = app.main.query_one(LinkIndicator)
        await wait_for(pilot, lambda: indicator.has_class("-live"), "the first connection")
        before = app.main.status

        server.kill()
        await wait_for(pilot, lambda: indicator.has_class("-down"), "the disconnected indicator")
        assert "disconnected" in str(indicator.render())
        assert app.main.status == before  # the last data stays on screen
        assert app.main.has_class("-offline")
        assert not isinstance(app.screen, ProblemScreen)  # it was connected once: no full-screen alarm

        server.start()
        await wait_for(pilot, lambda: indicator.has_class("-live"), "the reconnection")
        assert len(connects) == 2  # and the status was fetched again on reconnect
        assert not app.main.has_class("-offline")


async def test_an_image_whose_pixels_do_not_decode_is_marked_on_its_card_and_the_panel_goes_on(tmp_path: Path) -> None:
    fallback = tmp_path / "data" / "fallback"
    seed_images(fallback, 2)
    # A whole WebP file by its RIFF structure (so the server's cheap check sends it) whose pixel data is not
    # VP8 at all: here a proxy's sign-in page. Only decoding finds it out, and that is the panel's to show.
    broken = "20250101T120009-broken"
    page = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n"
    chunk = b"VP8 " + len(page).to_bytes(4, "little") + page + b"\0" * (len(page) & 1)
    (fallback / f"{broken}.webp").write_bytes(b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk)
    (fallback / f"{broken}.json").write_text(json.dumps({"prompt": "A sketch of cjs",
                                                          "created_at": "2025-01-01T12:00:09+00:00"}))
    with running_server(tmp_path) as server:
        app = panel(server.url)
        async with app.run_test(size=SIZE) as pilot:
            grid = app.main.query_one("#thumbnails", ThumbnailGrid)
            await wait_for(pilot, lambda: len(grid.cards) == 3, "three cards, the broken one among them")
            card = next(card for card in grid.cards if card.picture.info.id == broken)
            await wait_for(pilot, lambda: any("cannot show image" in str(image.render())
                                              for image in card.query(".thumbnail-image").results(Static)),
                           "the card's note in place of the image (the card composes it after mounting)")
            await wait_for(pilot, lambda: f"cannot show image {broken}" in logged(app), "the line in the log")

            await pilot.press("i")
            card.focus()
            await pilot.press("enter")  # its details still open: the rest of the panel goes on
            await wait_for(pilot, lambda: isinstance(app.screen, ImageDetailScreen), "the image view")
            await wait_for(pilot, lambda: any("cannot show image" in str(image.render())
                                              for image in app.screen.query(".detail-image").results(Static)),
                           "the note in the image view")
            assert app.is_running


async def test_an_unexpected_error_in_a_worker_is_reported_and_the_connection_comes_back(
    server: ServerProcess,
) -> None:
    app = panel(server.url)
    seen: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=collect(Disconnected, seen)) as pilot:
        indicator = app.main.query_one(LinkIndicator)
        await wait_for(pilot, lambda: indicator.has_class("-live"), "the first connection")

        async def fall() -> None:
            raise RuntimeError("a bug in the panel")

        # Stands in for the connection worker falling on an error nobody foresaw (it replaces the live one).
        app.run_worker(fall(), name="follow_server", group="connection", exclusive=True, exit_on_error=False)
        await wait_for(pilot, lambda: seen, "the connection shown as down")
        assert "follow_server failed: RuntimeError: a bug in the panel" in logged(app)
        await wait_for(pilot, lambda: indicator.has_class("-live"), "the connection to come back")
        assert app.is_running


def shows_the_entry(log: EventLog) -> bool:
    return any("aborting run" in line.text for line in log.lines)


async def test_the_log_fills_its_width_loses_no_character_and_keeps_the_level_apart(server: ServerProcess) -> None:
    app = panel(server.url)
    message = "aborting run: " + "film only + artist only + film and artist must be at most 1, got 1.2; " * 4
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: app.main.status is not None, "the first status")
        app.note("warning", message)  # written while the Log tab is hidden: its width is not known yet
        for tab, log_id in (("o", "#overview-log"), ("l", "#log-view")):
            await pilot.press(tab)
            log = app.main.query_one(log_id, EventLog)
            await wait_for(pilot, functools.partial(shows_the_entry, log), f"the entry in {log_id}")
            width = log.scrollable_content_region.width
            lines = [line.text for line in log.lines]
            start = next(number for number, line in enumerate(lines) if "aborting run" in line)
            head, _, first = lines[start].partition("warning")
            assert first.startswith("  aborting run"), "the level stands apart from the message"
            indent = len(head) + len("warning  ")
            shown = [first[2:], *(line[indent:] for line in lines[start + 1 :])]
            assert all(len(line) <= width for line in lines[start:]), "nothing past the right edge"
            assert " ".join(part.strip() for part in shown) == message.strip(), "no character lost at a wrap"
            assert len(lines[start].rstrip()) > width - 20, "the first line uses the width it has"


async def test_thumbnail_captions_show_what_sets_each_prompt_apart(tmp_path: Path) -> None:
    prompts = [  # alike for their first 45 characters, as most prompts of one recipe are
        "A comic book panel of cjs, in the style of Moebius, bokeh, 8K",
        "A comic book panel of cjs, in the style of Moebius, film grain",
        "A comic book panel of cjs from the film Akira, in the style of Hergé, 8K",
        "A comic book panel of cjs from the film Akira, in the style of Hergé, 8K, bokeh",
    ]
    seed_images(tmp_path / "data" / "fallback", len(prompts), prompts)
    with running_server(tmp_path) as server:
        app = panel(server.url)
        async with app.run_test(size=SIZE) as pilot:
            grid = app.main.query_one("#thumbnails", ThumbnailGrid)
            await wait_for(pilot, lambda: len(grid.cards) == len(prompts), "the seeded thumbnails")
            await pilot.press("i")
            await wait_for(pilot, lambda: all(card.size.height for card in grid.cards), "the cards laid out")
            shown = []
            for card in grid.cards:
                label = card.query_one(".thumbnail-prompt", Label)
                shown.append(" ".join(strip.text.strip() for strip in label.render_lines(Region(0, 0, *label.size))))
            assert len(set(shown)) == len(prompts), shown
            assert grid.cards[0].tooltip == prompts[-1], "the whole prompt is a hover away"


async def test_the_log_shows_what_the_server_logged_before_the_panel_connected(server: ServerProcess) -> None:
    app = panel(server.url)
    async with app.run_test(size=(160, 40)) as pilot:
        log = app.main.query_one("#overview-log", EventLog)
        await wait_for(pilot, lambda: any("data in " in entry.message for entry in log.entries),
                       "the server's start-up line, logged before the panel connected")
        messages = [entry.message for entry in log.entries]
        connected = next(number for number, text in enumerate(messages) if text.startswith("connected to "))
        assert any("data in " in text for text in messages[:connected]), "in time order, before the panel's own line"
        await wait_for(pilot, lambda: any("data in " in line.text for line in log.lines), "the line on screen")


async def test_the_overview_watches_the_avatar_paint_and_charts_the_run(tmp_path: Path) -> None:
    """Previews in pixels beside the step bar while the run generates, the last image once it ends, and the
    run's and today's figures in the charts."""
    paced = {"buckets.unique.max": 4, "buckets.fallback.max": 4, "sd.steps": 20, "gpu.simulated.step_time": "50ms"}
    with running_server(tmp_path, paced) as server:
        app = panel(server.url)
        events: list[Message] = []
        async with app.run_test(size=(80, 24), message_hook=collect(Received, events)) as pilot:
            await wait_for(pilot, lambda: app.main.status is not None, "the first status")
            preview = app.main.query_one(LivePreview)
            charts = app.main.query_one(HistoryCharts)
            assert not preview.live and "no image yet" in str(preview.query_one(".live-preview-caption").render())
            await wait_for(pilot, lambda: charts.history is not None, "the history")
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, RefillScreen), "the refill dialog")
            await pilot.press("enter")
            await wait_for(pilot, lambda: preview.live, "a live preview", timeout=30)
            caption = str(preview.query_one(".live-preview-caption").render())
            assert caption.startswith("step ") and caption.endswith("/20")
            assert preview.query_one(".live-preview-image").image.size[0] <= 96  # type: ignore[attr-defined]
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.state == "idle"
                           and s.last_run is not None, "the run to end", timeout=30)
            await wait_for(pilot, lambda: not preview.live, "the last finished image")
            assert str(preview.query_one(".live-preview-caption").render()) == "last image"
            await wait_for(pilot, lambda: charts.history is not None and charts.history.run is not None
                           and charts.history.run.outcome == "completed", "the run's chart")
            history = charts.history
            assert history is not None and history.run is not None
            assert sum(minute.images for minute in history.run.minutes) == 8
            assert history.days[-1].images == 8 and len(history.days) == 30
            assert "total 8" in str(charts.query_one("#day-images .chart-summary").render())
    previews = [m.event for m in events if isinstance(m, Received) and isinstance(m.event, Preview)]
    assert previews, "the server sent previews"


async def test_a_status_fetched_before_newer_events_does_not_take_the_panel_back(server: ServerProcess) -> None:
    """A status fetch answered before a run's events arrive (the server is busy, the answer slow) is older
    than those events: the panel keeps what the events told and takes only the rest (the spend)."""
    app = panel(server.url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.main.status is not None, "the first status")
        before_the_run, events_before = app.main.status, app.events_received
        assert before_the_run is not None and before_the_run.last_run is None
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RefillScreen), "the refill dialog")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (s := app.main.status) is not None and s.last_run is not None
                       and s.state == "idle", "the run to end", timeout=30)

        app.post_message(StatusFetched(before_the_run, events_before))
        await pilot.pause()
        status = app.main.status
        assert status is not None and status.last_run is not None and status.last_run.outcome == "completed"
        assert {name: level.count for name, level in status.buckets.items()} == {"unique": 2, "fallback": 3}
        assert "completed" in str(app.main.query_one(LastRunSummary).render())
