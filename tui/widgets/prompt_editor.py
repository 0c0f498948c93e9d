"""The prompt recipe editor: weights, suffix range, subject and word lists, with live samples.

The editor only edits: it posts `Edited` (with the changes against the server's settings) as the owner
types, and `SaveRequested` on Ctrl+S; the App asks the server and hands back samples or the server's
validation message, which appears under the field it names. Typing mistakes the server never needs to
see (a weight that is not a number) are caught here, in the same place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Static

from tui.widgets.word_list import WordList

# (config name, label, value type); the input's type follows the value type.
FIELDS: tuple[tuple[str, str, type], ...] = (
    ("subject", "subject", str),
    ("film_only", "film only", float),
    ("artist_only", "artist only", float),
    ("both", "film and artist", float),
    ("suffix_min", "fewest suffixes", int),
    ("suffix_max", "most suffixes", int),
)
WEIGHTS = ("film_only", "artist_only", "both")
LISTS: tuple[tuple[str, str, str], ...] = (
    ("prefixes", "prefixes", "add a prefix: A watercolour"),
    ("artists", "artists", "add an artist: Hokusai"),
    ("films", "films", "add a film: Akira"),
    ("suffixes", "suffixes", "add a suffix: bokeh"),
)
INPUT_TYPES = {str: "text", float: "number", int: "integer"}


def _parse(kind: type, text: str) -> Any:
    """The typed value of a field, or ValueError worded for the owner."""
    if kind is str:
        return text
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError("enter a whole number" if kind is int else "enter a number such as 0.25") from None


class PromptEditor(Widget):
    """Edit the [prompts] settings; Ctrl+S saves them on the server (and so in config.toml)."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save prompts", priority=True),
        Binding("escape", "leave", "Leave field", show=False),
    ]

    class Edited(Message):
        """The edited settings changed; `changes` holds what differs from the server's settings."""

        def __init__(self, changes: Mapping[str, Any]) -> None:
            super().__init__()
            self.changes = changes

    class SaveRequested(Message):
        def __init__(self, changes: Mapping[str, Any]) -> None:
            super().__init__()
            self.changes = changes

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.saved: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="prompt-columns"):
            with VerticalScroll(id="prompt-form"):
                for name, label, kind in FIELDS:
                    with Horizontal(classes="field-row"):
                        yield Label(label, classes="field-label")
                        yield Input(id=name, type=INPUT_TYPES[kind], compact=True, classes="field-input")
                    yield Label(id=f"error-{name}", classes="field-error")
                yield Static(id="neither")
                with Grid(id="word-lists"):
                    for name, title, placeholder in LISTS:
                        yield WordList(name, title, placeholder)
            with Vertical(id="prompt-side"):
                yield Label("sample prompts", classes="section-title")
                with VerticalScroll(id="samples-scroll"):
                    yield Static(id="samples")
                yield Static(id="prompt-note")
                with Horizontal(id="prompt-buttons"):
                    yield Button("Save", id="save", variant="primary", compact=True)
                    yield Button("Revert", id="revert", compact=True)
                yield Static("Enter adds a word, Delete removes the highlighted one, Ctrl+S saves, "
                             "Esc leaves a field.", id="prompt-keys")

    def on_mount(self) -> None:
        self._show_errors({})

    @property
    def dirty(self) -> bool:
        """Edits the server has not saved yet (a reconnect must not overwrite them)."""
        if not self.saved:
            return False
        values, errors = self.read()
        return bool(errors or self._changes(values))

    def load(self, settings: Mapping[str, Any]) -> None:
        """Show the server's settings as the saved state, dropping unsaved edits."""
        self.saved = dict(settings)
        with self.prevent(Input.Changed):
            for name, _, _ in FIELDS:
                self.query_one(f"#{name}", Input).value = str(settings.get(name, ""))
        for name, _, _ in LISTS:
            self.query_one(f"#{name}", WordList).set_entries(settings.get(name, ()))
        self._edited()

    def read(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Every setting as typed so far, and the fields that cannot be read (name -> what is wrong)."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, _, kind in FIELDS:
            try:
                values[name] = _parse(kind, self.query_one(f"#{name}", Input).value)
            except ValueError as exc:
                errors[name] = str(exc)
        for name, _, _ in LISTS:
            values[name] = list(self.query_one(f"#{name}", WordList).entries)
        return values, errors

    def _changes(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in values.items() if value != self.saved.get(name)}

    def show_samples(self, prompts: list[str]) -> None:
        """Samples for the current edits: they are valid, so any earlier rejection no longer applies."""
        self._show_errors({})
        text = Text()
        for number, prompt in enumerate(prompts, start=1):
            text.append(f"{number}. ", "dim").append(prompt + "\n")
        self.query_one("#samples", Static).update(text)
        self.query_one("#samples").remove_class("-stale")

    def show_rejection(self, field: str | None, message: str) -> None:
        """The server's validation message, under the field it names (or below the buttons)."""
        known = {name for name, _, _ in FIELDS} | {name for name, _, _ in LISTS}
        self._show_errors({field: message} if field in known else {"": message})
        self.query_one("#samples").add_class("-stale")

    def _show_errors(self, errors: Mapping[str, str]) -> None:
        for label in self.query(".field-error").results(Label):
            message = errors.get((label.id or "").removeprefix("error-"), "")
            label.update(Text(message))
            label.display = bool(message)
        self.query_one("#prompt-note", Static).update(Text(errors.get("", ""), "bold red"))

    def _edited(self) -> None:
        values, errors = self.read()
        total = sum(values.get(name, 0) for name in WEIGHTS)
        self.query_one("#neither", Static).update(
            Text(f"neither: {1 - total:.2f}", "bold red" if total > 1 + 1e-9 else "dim")
        )
        self._show_errors(errors)
        if errors:
            self.query_one("#samples").add_class("-stale")
            return
        changes = self._changes(values)
        self.query_one("#prompt-side").border_subtitle = "unsaved changes · Ctrl+S saves" if changes else ""
        self.post_message(self.Edited(changes))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._edited()

    def on_word_list_changed(self, event: WordList.Changed) -> None:
        event.stop()
        self._edited()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.load(self.saved)

    def action_save(self) -> None:
        values, errors = self.read()
        if errors:
            self.notify("Fix the marked fields first", severity="error")
            return
        changes = self._changes(values)
        if not changes:
            self.notify("Nothing to save: no changes")
            return
        self.post_message(self.SaveRequested(changes))

    def action_leave(self) -> None:
        """Give the keys back to the panel (letters switch tabs again)."""
        self.screen.set_focus(None)
