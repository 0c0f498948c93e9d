"""Abort is costly to press by mistake (a half-done run), so it asks first; dismisses True to abort."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static

from avatargen.api import Run


class ConfirmAbortScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes, abort"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    AUTO_FOCUS = "#keep"

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        what = f"run {self.run.id} ({self.run.done}/{self.run.total} images)"
        with Vertical(classes="dialog"):
            yield Label("Abort the run?", classes="dialog-title")
            yield Static(f"This stops {what} and shuts the GPU machine down. Images already stored are kept.",
                         classes="dialog-text", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Abort run", id="abort", variant="error")
                yield Button("Keep running", id="keep")
        yield Footer()

    def action_answer(self, abort: bool) -> None:
        self.dismiss(abort)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "abort")
