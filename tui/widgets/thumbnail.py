"""One avatar in the grid: its pixels, what sets its prompt apart, its bucket and time (and whether the
owner keeps it, or why the gate held it back); select it to see it larger, mark it to act on several."""

from __future__ import annotations

from dataclasses import replace

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.events import Click
from textual.message import Message
from textual.widgets import Label

from avatargen.api import ImageInfo
from tui.formatting import caption, clock
from tui.images import ImageStyle, Picture, image_widget

MARK = "✓ "


def _meta(info: ImageInfo, marked: bool) -> Text:
    """`✓ fallback · kept · 12:00:01`, or for a held image `unique · held: no face`."""
    parts = [info.bucket]
    if info.held:
        parts.append("held: " + ("; ".join(info.held_because) or "no reason recorded"))
    else:
        parts += [*(["kept"] if info.kept else []), clock(info.created_at)]
    return Text.assemble((MARK, "bold") if marked else "", " · ".join(parts))


class Thumbnail(Vertical, can_focus=True):
    """A focusable card; Enter or a click posts `Thumbnail.Selected`."""

    BINDINGS = [Binding("enter", "select", "View")]

    class Selected(Message):
        def __init__(self, picture: Picture) -> None:
            super().__init__()
            self.picture = picture

    def __init__(self, picture: Picture, style: ImageStyle) -> None:
        super().__init__(classes=f"-{picture.info.bucket}")
        self.picture = picture
        self.image_style = style
        self.marked = False
        self.tooltip = picture.info.prompt

    def compose(self) -> ComposeResult:
        info = self.picture.info
        yield image_widget(self.image_style, self.picture, classes="thumbnail-image")
        yield Label(caption(info.prompt), classes="thumbnail-prompt")
        yield Label(_meta(info, self.marked), classes="thumbnail-meta")

    def _refresh_meta(self) -> None:
        self.set_class(self.marked, "-marked")
        self.query_one(".thumbnail-meta", Label).update(_meta(self.picture.info, self.marked))

    def mark(self, marked: bool) -> None:
        """Mark the card for an action on several images at once (or unmark it)."""
        self.marked = marked
        self._refresh_meta()

    def show_info(self, info: ImageInfo) -> None:
        """The same image after the owner acted on it (kept, moved into the other bucket)."""
        self.remove_class(f"-{self.picture.info.bucket}")
        self.picture = replace(self.picture, info=info)
        self.add_class(f"-{info.bucket}")
        self._refresh_meta()

    def on_click(self, event: Click) -> None:
        event.stop()
        self.focus()
        self.action_select()

    def action_select(self) -> None:
        self.post_message(self.Selected(self.picture))
