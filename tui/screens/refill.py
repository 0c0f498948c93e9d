"""Ask which buckets to refill now; the dismissal value is the chosen buckets, or None to cancel."""

from __future__ import annotations

from collections.abc import Mapping

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Label, Static

from avatargen.api import BucketLevel
from avatargen.config import BUCKET_NAMES


def _describe(bucket: str, level: BucketLevel | None) -> str:
    if level is None:
        return bucket
    missing = max(0, level.max - level.count)
    return f"{bucket}: {level.count} of {level.max}, {missing} to make"


class RefillScreen(ModalScreen[list[str] | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("u", "toggle('unique')", "Unique"),
        Binding("f", "toggle('fallback')", "Fallback"),
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
                yield Checkbox(_describe(bucket, self.levels.get(bucket)), True, id=f"refill-{bucket}", compact=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start refill", id="start", variant="primary")
                yield Button("Cancel", id="cancel")

    def action_toggle(self, bucket: str) -> None:
        self.query_one(f"#refill-{bucket}", Checkbox).toggle()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id != "start":
            self.dismiss(None)
            return
        chosen = [bucket for bucket in BUCKET_NAMES if self.query_one(f"#refill-{bucket}", Checkbox).value]
        if not chosen:
            self.notify("Choose at least one bucket", severity="warning")
            return
        self.dismiss(chosen)
