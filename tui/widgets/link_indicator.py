"""Whether the panel is live: the owner must never mistake stale numbers for current ones."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class LinkIndicator(Static):
    """One line: live, connecting, or disconnected with the reason and the next retry."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(Text("◌ connecting…"), id=id, classes="-connecting")

    def _show(self, state: str, text: Text) -> None:
        self.set_classes(f"-{state}")
        self.update(text)

    def show_live(self) -> None:
        self._show("live", Text("● live"))

    def show_down(self, reason: str, retry_in: float, attempt: int) -> None:
        text = Text.assemble(("○ disconnected", "bold"), f" · retry {attempt} in {retry_in:.3g}s · {reason}")
        self._show("down", text)
