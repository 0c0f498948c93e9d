"""The newest avatars as a grid of thumbnails that grows as images arrive and reflows with the terminal."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.events import Resize

from tui.images import ImageStyle, Picture
from tui.widgets.thumbnail import Thumbnail

CARD_WIDTH = 22  # cells per card, gutter included; the grid fits as many columns as the width allows


class ThumbnailGrid(VerticalScroll):
    """Newest first, at most `limit` cards; arrow keys move between cards."""

    BINDINGS = [
        Binding("left", "move(-1)", "Previous", show=False),
        Binding("right", "move(1)", "Next", show=False),
        Binding("up", "move_row(-1)", "Row up", show=False),
        Binding("down", "move_row(1)", "Row down", show=False),
    ]

    def __init__(self, style: ImageStyle, *, limit: int = 24, id: str | None = None) -> None:
        super().__init__(id=id)
        self.image_style = style
        self.limit = limit

    @property
    def cards(self) -> list[Thumbnail]:
        return list(self.query_children(Thumbnail))

    def on_mount(self) -> None:
        self._retitle()

    def on_resize(self, event: Resize) -> None:
        self.styles.grid_size_columns = max(1, event.size.width // CARD_WIDTH)

    def _retitle(self) -> None:
        count = len(self.cards)
        self.border_title = f"newest images ({count})" if count else "no images yet: press r to refill"

    async def show(self, pictures: list[Picture]) -> None:
        """Start over from these pictures (after a (re)connect)."""
        await self.remove_children()
        await self.mount_all(Thumbnail(picture, self.image_style) for picture in pictures[: self.limit])
        self._retitle()

    async def add(self, pictures: list[Picture]) -> None:
        """Put new pictures in their place by creation time, dropping the oldest beyond the limit."""
        known = {card.picture.info.id for card in self.cards}
        for picture in sorted(pictures, key=lambda picture: picture.info.created_at):
            if picture.info.id in known:
                continue
            cards = self.cards  # newest first: the cards newer than this picture are a prefix
            newer = [card for card in cards if card.picture.info.created_at >= picture.info.created_at]
            card = Thumbnail(picture, self.image_style)
            if newer:
                await self.mount(card, after=newer[-1])
            else:
                await self.mount(card, before=cards[0] if cards else None)
        for card in self.cards[self.limit :]:
            await card.remove()
        self._retitle()

    def focus_newest(self) -> None:
        """Focus the first card, so arrow keys and Enter work at once (the grid itself when empty)."""
        cards = self.cards
        (cards[0] if cards else self).focus()

    def action_move(self, step: int) -> None:
        self._focus_card(step)

    def action_move_row(self, rows: int) -> None:
        self._focus_card(rows * int(self.styles.grid_size_columns or 1))

    def _focus_card(self, step: int) -> None:
        cards = self.cards
        if not cards:
            return
        focused = self.screen.focused
        if not isinstance(focused, Thumbnail) or focused not in cards:
            self.focus_newest()
            return
        index = cards.index(focused) + step
        cards[max(0, min(len(cards) - 1, index))].focus()
