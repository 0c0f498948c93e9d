"""The avatar being made, in pixels beside the step bar; the last one finished when nothing is being made.

Previews arrive about once a second, each a small picture of the SD job at its step, so the owner watches
the avatar come out of the noise. Between runs the newest stored image stands there instead. Drawn with
the panel's image renderer (Kitty/Sixel where the terminal has them, half-cell blocks elsewhere).
"""

from __future__ import annotations

from PIL import Image as PILImage
from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static

from tui.images import ImageStyle, pixels_widget


class LivePreview(Widget):
    """A picture and a one-line caption under it (`step 12/20`, `last image`)."""

    def __init__(self, image_style: ImageStyle, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.image_style = image_style
        self.live = False  # showing a preview of a job in progress (else the last finished image, or nothing)

    def compose(self) -> ComposeResult:
        yield pixels_widget(self.image_style, None, classes="live-preview-image")
        yield Static(Text("no image yet", "dim"), classes="live-preview-caption")

    def show_preview(self, image: PILImage.Image, step: int, steps: int) -> None:
        """A preview of the job computing, at its step."""
        self.live = True
        self._show(image, Text(f"step {step}/{steps}"))

    def show_finished(self, image: PILImage.Image | None, caption: str) -> None:
        """The last finished image (None: none yet), once no job is computing."""
        self.live = False
        self._show(image, Text(caption, "dim"))

    def _show(self, image: PILImage.Image | None, caption: Text) -> None:
        self.query_one(".live-preview-image").image = image  # type: ignore[attr-defined]
        self.query_one(".live-preview-caption", Static).update(caption)
        self.set_class(self.live, "-live")
