"""One avatar in the grid: its pixels, what sets its prompt apart, its time; select it to see it larger."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.events import Click
from textual.message import Message
from textual.widgets import Label

from tui.formatting import caption, clock
from tui.images import ImageStyle, Picture, image_widget


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
        self.tooltip = picture.info.prompt

    def compose(self) -> ComposeResult:
        info = self.picture.info
        yield image_widget(self.image_style, self.picture, classes="thumbnail-image")
        yield Label(caption(info.prompt), classes="thumbnail-prompt")
        yield Label(f"{info.bucket} · {clock(info.created_at)}", classes="thumbnail-meta")

    def on_click(self, event: Click) -> None:
        event.stop()
        self.focus()
        self.action_select()

    def action_select(self) -> None:
        self.post_message(self.Selected(self.picture))
