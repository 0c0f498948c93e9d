"""An editable word list of the prompt recipe (prefixes, artists, films, suffixes)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, OptionList


class WordList(Vertical):
    """Type in the box and press Enter to add; highlight an entry and press Delete to remove it."""

    BINDINGS = [Binding("delete", "remove", "Remove entry")]

    class Changed(Message):
        """Entries were added or removed."""

        def __init__(self, word_list: WordList) -> None:
            super().__init__()
            self.word_list = word_list

        @property
        def control(self) -> WordList:
            return self.word_list

    def __init__(self, setting: str, title: str, placeholder: str) -> None:
        super().__init__(id=setting)
        self.setting = setting
        self.title = title
        self.placeholder = placeholder
        self.entries: tuple[str, ...] = ()

    def on_mount(self) -> None:
        self.border_title = self.title

    def compose(self) -> ComposeResult:
        yield OptionList(classes="word-list-entries")
        yield Input(placeholder=self.placeholder, compact=True, classes="word-list-add")
        yield Label(id=f"error-{self.setting}", classes="field-error")

    def set_entries(self, entries: Sequence[str]) -> None:
        """Show these entries (from the server), without announcing a change."""
        self._show(tuple(entries))

    def _show(self, entries: tuple[str, ...]) -> None:
        self.entries = entries
        options = self.query_one(OptionList)
        highlighted = options.highlighted
        options.clear_options()
        options.add_options(Text(entry) for entry in entries)  # literal text: "[" is not markup here
        if entries and highlighted is not None:
            options.highlighted = min(highlighted, len(entries) - 1)
        self.border_title = f"{self.title} ({len(entries)})"

    def _change(self, entries: tuple[str, ...]) -> None:
        self._show(entries)
        self.post_message(self.Changed(self))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()  # typing a new entry is not an edit of the settings until it is added

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        entry = event.value.strip()
        if not entry:
            return
        event.input.clear()
        if entry in self.entries:
            self.query_one(OptionList).highlighted = self.entries.index(entry)
            self.notify(f"{entry!r} is already in {self.setting}", severity="warning", markup=False)
            return
        self._change((*self.entries, entry))

    def action_remove(self) -> None:
        index = self.query_one(OptionList).highlighted
        if index is None or not self.entries:
            return
        self._change(self.entries[:index] + self.entries[index + 1 :])
