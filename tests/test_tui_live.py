"""The panel driven with Pilot against a real `avatargen serve` process and its simulated GPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tomlkit
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Input, OptionList

from avatargen.api import LogEntry
from tests.tui_support import ServerProcess, panel, running_server, wait_for
from tui.messages import Answered, Connected, Received
from tui.screens.confirm_abort import ConfirmAbortScreen
from tui.screens.problem import ProblemScreen
from tui.screens.refill import RefillScreen
from tui.widgets.event_log import EventLog
from tui.widgets.last_run import LastRunSummary
from tui.widgets.link_indicator import LinkIndicator
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


async def test_refill_from_the_panel_walks_every_state_and_shows_the_new_images(server: ServerProcess) -> None:
    app = panel(server.url)
    seen: list[Message] = []
    events: list[Message] = []
    hooks = (collect(Answered, seen), collect(Received, events))
    async with app.run_test(size=SIZE, message_hook=lambda message: [hook(message) for hook in hooks]) as pilot:
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
            last = app.main.status.last_run
            assert last is not None and last.outcome == "aborted"
            assert 0 < last.run.done < 400
            assert "aborted" in str(app.main.query_one(LastRunSummary).render())

            await pilot.press("a", "y")  # nothing to abort now: the server's 409 is shown, not swallowed
            await wait_for(pilot, lambda: any(t.startswith("Abort refused (409)") for t in answers(seen)),
                           "the server's refusal")


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

        # Too much weight: the server's message appears under "film and artist", nothing is saved.
        await type_into(pilot, editor.query_one("#both", Input), "0.5")
        error = editor.query_one("#error-both")
        await wait_for(pilot, lambda: "at most 1" in str(error.render()), "the server's validation message")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any("not saved" in text for text in answers(seen)), "the refused save")
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
