"""The generator's state machine, drawn, with the current state lit: where the run is, at a glance."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from avatargen.api import STATES, State

LABELS: dict[State, str] = {
    "idle": "idle",
    "booting": "booting GPU",
    "generating": "generating",
    "shutting_down": "shutting down",
}


class StateDiagram(Widget):
    """idle ─▶ booting GPU ─▶ generating ─▶ shutting down, and the arrow back to idle."""

    COMPONENT_CLASSES = {"state-diagram--current", "state-diagram--other", "state-diagram--arrow"}

    state: reactive[State] = reactive("idle")

    def render(self) -> Text:
        arrow = self.get_component_rich_style("state-diagram--arrow")
        top = Text(" ")
        for index, state in enumerate(STATES):
            if index:
                top.append(" ─▶ ", arrow)
            current = "state-diagram--current" if state == self.state else "state-diagram--other"
            top.append(f" {LABELS[state]} ", self.get_component_rich_style(current))
        top.append(" ─╮", arrow)
        back = Text("  ▲" + "─" * (top.cell_len - 4) + "╯", arrow)
        return Text("\n").join([top, back])
