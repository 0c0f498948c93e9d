"""Ask which buckets to refill now; the dismissal value is the chosen buckets, or None to cancel.

Only what can happen is offered: a bucket already at its max cannot be chosen (the server would have
nothing to make for it), and "Start refill" waits until some bucket is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Footer, Label, Static

from avatargen.api import BucketLevel
from avatargen.config import BUCKET_NAMES


def is_full(level: BucketLevel | None) -> bool:
    """A bucket at its max: a refill would make nothing for it (one whose level is unknown may need some)."""
    return level is not None and level.count >= level.max


def _describe(bucket: str, level: BucketLevel | None) -> str:
    if level is None:
        return bucket
    missing = max(0, level.max - level.count)
    return f"{bucket}: {level.count} of {level.max}, " + (f"{missing} to make" if missing else "full")


class RefillScreen(ModalScreen[list[str] | None]):
    BINDINGS = [
        Binding("u", "choose('unique')", "Unique"),
        Binding("f", "choose('fallback')", "Fallback"),
        Binding("escape", "cancel", "Cancel"),
    ]
    AUTO_FOCUS = "#start"

    def __init__(self, levels: Mapping[str, BucketLevel]) -> None:
        super().__init__()
        self.levels = levels

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Refill now", classes="dialog-title")
            yield Static("Fill the chosen buckets to their max. The GPU machine boots for this run and is "
                         "stopped when it ends.", classes="dialog-text")
            for bucket in BUCKET_NAMES:
                level = self.levels.get(bucket)
                full = is_full(level)
                yield Checkbox(_describe(bucket, level), not full, id=f"refill-{bucket}", compact=True, disabled=full)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start refill", id="start", variant="primary")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def chosen(self) -> list[str]:
        return [bucket for bucket in BUCKET_NAMES if self.query_one(f"#refill-{bucket}", Checkbox).value]

    def action_choose(self, bucket: str) -> None:
        """Tick or untick a bucket (named for what it does: Textual's own `toggle` action is something else)."""
        box = self.query_one(f"#refill-{bucket}", Checkbox)
        if not box.disabled:
            box.toggle()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        start = self.query_one("#start", Button)
        was_disabled, start.disabled = start.disabled, not self.chosen()
        if was_disabled and not start.disabled:
            start.focus()  # it lost the focus when disabled: Enter starts the refill again, as at the start

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(self.chosen() if event.button.id == "start" else None)
