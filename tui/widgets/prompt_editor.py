"""The prompt recipe editor: weights, suffix range, subject and word lists, with live samples.

The editor only edits: it posts `Edited` (with the changes against the server's settings) as the owner
types, and `SaveRequested` on Ctrl+S; the App asks the server and hands back samples or the server's
validation message, which appears under the field it names (or the one the owner edited, when the
message is about both), in the owner's words. Typing mistakes the server never needs to see (a weight
that is not a number, weights that add up to more than 1) are caught here and shown in the same
places; meanwhile the samples are marked out of date.
"""

from __future__ import annotations

import re
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

# (config name, label, value type). Inputs take any text: a letter in a number field gets a message,
# where a restricted input would drop it without a word.
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
LABELS = {name: label for name, label, _ in FIELDS}
CONFIG_NAMES = re.compile(r"\b(" + "|".join(name for name, label in LABELS.items() if name != label) + r")\b")


def _parse(kind: type, text: str) -> Any:
    """The typed value of a field, or ValueError worded for the owner."""
    if kind is str:
        return text
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError("enter a whole number" if kind is int else "enter a number such as 0.25") from None


def in_owner_words(message: str) -> str:
    """A server message with the config names it uses (`film_only`) put as the editor labels them."""
    return CONFIG_NAMES.sub(lambda match: LABELS[match.group(1)], message)


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
        self.last_edited: str | None = None  # the field the owner typed in last

    def compose(self) -> ComposeResult:
        with Horizontal(id="prompt-columns"):
            with VerticalScroll(id="prompt-form", can_focus=False):  # Tab goes to the fields, not their frame
                for name, label, _ in FIELDS:
                    with Horizontal(classes="field-row"):
                        yield Label(label, classes="field-label")
                        yield Input(id=name, compact=True, classes="field-input")
                    yield Label(id=f"error-{name}", classes="field-error")
                    if name == WEIGHTS[-1]:  # the weights as a group: what is left for neither, and their sum
                        yield Static(id="neither")
                        yield Label(id="error-weights", classes="field-error")
                with Grid(id="word-lists"):
                    for name, title, placeholder in LISTS:
                        yield WordList(name, title, placeholder)
            with Vertical(id="prompt-side"):
                yield Label("sample prompts", classes="section-title")
                yield Label("out of date until the marked fields are fixed", id="samples-stale")
                with VerticalScroll(id="samples-scroll", can_focus=False):
                    yield Static(id="samples")
                yield Static(id="prompt-note")
                with Horizontal(id="prompt-buttons"):
                    yield Button("Save", id="save", variant="primary", compact=True)
                    yield Button("Revert", id="revert", compact=True)
                yield Static("Enter adds a word, Delete removes the highlighted one, Ctrl+S saves, "
                             "Esc leaves a field.", id="prompt-keys")

    def on_mount(self) -> None:
        self._show_errors({})
        self._mark_stale(False)

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
        """Every setting as typed so far, and what is wrong with it: field name (or "weights", the three
        weights together) -> a message in the owner's words."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, _, kind in FIELDS:
            try:
                values[name] = _parse(kind, self.query_one(f"#{name}", Input).value)
            except ValueError as exc:
                errors[name] = str(exc)
        for name, _, _ in LISTS:
            values[name] = list(self.query_one(f"#{name}", WordList).entries)
        total = sum(values.get(name, 0) for name in WEIGHTS)
        if total > 1 + 1e-9:
            errors["weights"] = f"{' + '.join(LABELS[name] for name in WEIGHTS)} make {total:g}; at most 1 together"
        return values, errors

    def _changes(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in values.items() if value != self.saved.get(name)}

    def show_samples(self, prompts: list[str]) -> None:
        """Samples for the edits: they were valid, so any earlier rejection no longer applies (unless the
        owner has typed a mistake since: then these are as out of date as the ones shown)."""
        if self.read()[1]:
            return
        self._show_errors({})
        text = Text()
        for number, prompt in enumerate(prompts, start=1):
            text.append(f"{number}. ", "dim").append(prompt + "\n")
        self.query_one("#samples", Static).update(text)
        self._mark_stale(False)

    def show_rejection(self, field: str | None, message: str) -> None:
        """The server's validation message, in the owner's words, under the field it names; under the
        field the owner edited when the message is about that one too (suffix_min against suffix_max);
        below the buttons when it names no field."""
        known = {name for name, _, _ in FIELDS} | {name for name, _, _ in LISTS}
        edited = self.last_edited
        if edited is not None and edited != field and re.search(rf"\b{re.escape(edited)}\b", message):
            field = edited
        self._show_errors({field if field in known else "": in_owner_words(message)})
        self._mark_stale(True)

    def _mark_stale(self, stale: bool) -> None:
        """Say so when the samples no longer match what the fields say."""
        self.query_one("#samples").set_class(stale, "-stale")
        self.query_one("#samples-stale").display = stale

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
            Text(f"neither: {1 - total:.2f}", "bold red" if "weights" in errors else "dim")
        )
        self._show_errors(errors)
        if errors:
            self._mark_stale(True)
            return
        changes = self._changes(values)
        self.query_one("#prompt-side").border_subtitle = "unsaved changes · Ctrl+S saves" if changes else ""
        self.post_message(self.Edited(changes))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.last_edited = event.input.id
        self._edited()

    def on_word_list_changed(self, event: WordList.Changed) -> None:
        event.stop()
        self.last_edited = event.word_list.setting
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
