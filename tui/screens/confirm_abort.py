"""Abort is costly to press by mistake (a half-done run), so it asks first; dismisses True to abort."""

from __future__ import annotations

from textual.binding import Binding

from avatargen.api import RunView
from tui.screens.confirm import ConfirmScreen


class ConfirmAbortScreen(ConfirmScreen):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes, abort"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, run: RunView) -> None:
        what = f"run {run.id} ({run.done}/{run.total} images)"
        super().__init__("Abort the run?",
                         f"This stops {what} and shuts the GPU machine down. Images already stored are kept.",
                         yes="Abort run", no="Keep running")
        self.run = run
