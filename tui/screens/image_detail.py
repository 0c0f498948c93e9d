"""One avatar, large, with everything known about how it was made; the owner's actions on it from here
too (the dismissal value names the action asked for, which the App carries out as from the grid)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from tui.formatting import timestamp
from tui.images import ImageStyle, Picture, image_widget


def _details(picture: Picture) -> Table:
    info = picture.info
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    rows = {"prompt": info.prompt, "bucket": info.bucket, "id": info.id, "created": timestamp(info.created_at)}
    if info.held:
        rows["held back"] = "; ".join(info.held_because) or "no reason recorded"
    if info.kept:
        rows["kept"] = "yes: never retired"
    rows |= {name: value for name, value in info.metadata.items() if name not in ("prompt", "created_at", "review")}
    if picture.image is not None:
        rows["size"] = f"{picture.image.width}×{picture.image.height} px"
    else:
        rows["problem"] = f"cannot show image: {picture.problem}"
    for name, value in rows.items():
        table.add_row(name.replace("_", " "), str(value))
    return table


class ImageDetailScreen(ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape,enter,q", "close", "Close"),
        Binding("y", "act('approve')", "Approve"),
        Binding("d", "act('delete')", "Delete"),
        Binding("k", "act('keep')", "Keep"),
        Binding("k", "act('unkeep')", "Unkeep"),
        Binding("m", "act('move')", "To fallback"),
    ]

    def __init__(self, picture: Picture, style: ImageStyle) -> None:
        super().__init__()
        self.picture = picture
        self.image_style = style

    def compose(self) -> ComposeResult:
        with Horizontal(id="detail"):
            yield image_widget(self.image_style, self.picture, classes="detail-image")
            with VerticalScroll(id="detail-info"):
                yield Static(_details(self.picture))
        yield Footer()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only what applies to this image: approve a held one; keep or unkeep a fallback, move a unique."""
        if action != "act":
            return True
        info = self.picture.info
        offered = {"delete"} | ({"approve"} if info.held else
                                {"unkeep" if info.kept else "keep"} if info.bucket == "fallback" else {"move"})
        return parameters[0] in offered

    def action_close(self) -> None:
        self.dismiss(None)

    def action_act(self, action: str) -> None:
        self.dismiss(action)
