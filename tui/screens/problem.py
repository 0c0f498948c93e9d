"""A whole screen for what stops the panel from working: a refused token, or a server never reached.

A traceback or an empty dashboard would leave the owner guessing; this says what happened, what to
check, and offers to retry.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static


class ProblemScreen(Screen[None]):
    BINDINGS = [
        Binding("r", "app.reconnect", "Retry now"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, title: str, message: str, hint: str) -> None:
        super().__init__()
        self._texts = (title, message, hint)

    def compose(self) -> ComposeResult:
        title, message, hint = self._texts
        with Vertical(id="problem"):
            yield Static(title, id="problem-title", markup=False)
            yield Static(message, id="problem-message", markup=False)
            yield Static(hint, id="problem-hint", markup=False)
        yield Footer()

    def explain(self, title: str, message: str, hint: str) -> None:
        """Replace what the screen says (a later attempt failed differently)."""
        self._texts = (title, message, hint)
        for name, text in zip(("title", "message", "hint"), self._texts, strict=True):
            self.query_one(f"#problem-{name}", Static).update(Text(text))
