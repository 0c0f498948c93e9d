"""Avatars as a grid of thumbnails that grows as images arrive and reflows with the terminal, and where
the owner acts on them: delete, keep, move, or (in the review grid) approve what the gate held back.

Space marks cards; an action applies to the marked cards, or to the focused one when none is marked.
The grid only asks (`ActionRequested`): the App asks the server, and every grid follows the server's
events, so all panels show the same.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.events import Resize
from textual.message import Message

from avatargen.api import ImageInfo
from tui.images import ImageStyle, Picture
from tui.widgets.thumbnail import Thumbnail

CARD_WIDTH = 22  # cells per card, gutter included; the grid fits as many columns as the width allows
# The review grid offers approve instead of keep and move.
REVIEW_ONLY = frozenset({"approve"})
PUBLISHED_ONLY = frozenset({"keep", "unkeep", "move"})


class ThumbnailGrid(VerticalScroll):
    """Newest first, at most `limit` cards; arrow keys move between cards. `review`: the held images."""

    BINDINGS = [
        Binding("left", "move(-1)", "Previous", show=False),
        Binding("right", "move(1)", "Next", show=False),
        Binding("up", "move_row(-1)", "Row up", show=False),
        Binding("down", "move_row(1)", "Row down", show=False),
        Binding("space", "mark", "Mark"),
        Binding("y", "act('approve')", "Approve"),
        Binding("d", "act('delete')", "Delete"),
        Binding("k", "act('keep')", "Keep"),
        Binding("k", "act('unkeep')", "Unkeep"),
        Binding("m", "act('move')", "To fallback"),
    ]

    class ActionRequested(Message):
        """The owner asked for `action` ("delete", "keep", "move", "approve") on these images."""

        def __init__(self, action: str, pictures: list[Picture]) -> None:
            super().__init__()
            self.action = action
            self.pictures = pictures

    def __init__(self, style: ImageStyle, *, limit: int = 24, review: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.image_style = style
        self.limit = limit
        self.review = review
        self.gate_on: bool | None = None  # the review grid: whether the safety gate holds anything back at all

    @property
    def cards(self) -> list[Thumbnail]:
        return list(self.query_children(Thumbnail))

    def on_mount(self) -> None:
        self._retitle()

    def on_resize(self, event: Resize) -> None:
        self.styles.grid_size_columns = max(1, event.size.width // CARD_WIDTH)

    def show_gate(self, on: bool | None) -> None:
        """The review grid's title says so when the safety gate is off (nothing can ever be held back)."""
        if on != self.gate_on:
            self.gate_on = on
            self._retitle()

    def _retitle(self) -> None:
        count = len(self.cards)
        marked = sum(card.marked for card in self.cards)
        if self.review and not count and self.gate_on is False:
            title = "the safety gate is off (review.enabled = false): no image is held back for review"
        elif self.review:
            title = f"held back for review ({count})" if count else "nothing held back for review"
        else:
            title = f"newest images ({count})" if count else "no images yet: press r to refill"
        self.border_title = title + (f" · {marked} marked" if marked else "")
        if self.is_attached:
            self.refresh_bindings()  # the keys offered depend on the cards

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

    def find(self, image_id: str) -> Thumbnail | None:
        return next((card for card in self.cards if card.picture.info.id == image_id), None)

    async def drop(self, image_ids: Iterable[str]) -> None:
        """Take these images' cards away (deleted, approved out of review); the focus stays in the grid."""
        gone = set(image_ids)
        cards = self.cards
        doomed = [card for card in cards if card.picture.info.id in gone]
        if not doomed:
            return
        focused = self.screen.focused if self.is_attached else None
        survivors = [card for card in cards if card not in doomed]
        follow = None
        if focused in doomed and survivors:
            position = cards.index(focused)  # type: ignore[arg-type]
            follow = next((card for card in cards[position:] if card not in doomed), survivors[-1])
        await self.remove_children(doomed)
        if follow is not None:
            follow.focus()
        elif focused in doomed:
            self.focus()
        self._retitle()

    def show_change(self, info: ImageInfo) -> None:
        """Show what changed about an image (kept, moved), if it has a card here."""
        card = self.find(info.id)
        if card is not None:
            card.show_info(info)
            self.refresh_bindings()

    def focus_newest(self) -> None:
        """Focus the first card, so arrow keys and Enter work at once (the grid itself when empty)."""
        cards = self.cards
        (cards[0] if cards else self).focus()

    def _targets(self) -> list[Thumbnail]:
        """The marked cards, or the focused card when none is marked."""
        cards = self.cards
        marked = [card for card in cards if card.marked]
        focused = self.screen.focused if self.is_attached else None
        return marked or ([focused] if isinstance(focused, Thumbnail) and focused in cards else [])

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer only what applies to the cards acted on: approve in review; elsewhere keep (or unkeep, when
        every fallback among them is kept already) for fallbacks and a move for uniques."""
        if action not in ("act", "mark"):
            return True
        if not self.cards:
            return False  # nothing to act on: the footer offers no key that would do nothing
        if action == "mark":
            return True
        name = parameters[0]
        if name in (PUBLISHED_ONLY if self.review else REVIEW_ONLY):
            return False
        infos = [card.picture.info for card in self._targets()]
        fallbacks = [info for info in infos if info.bucket == "fallback"]
        if name in ("keep", "unkeep"):
            return bool(fallbacks) and (name == "unkeep") == all(info.kept for info in fallbacks)
        if name == "move":
            return any(info.bucket == "unique" for info in infos)
        return None if not infos else True  # None: shown, greyed out, while there is nothing to act on

    def action_mark(self) -> None:
        focused = self.screen.focused
        if isinstance(focused, Thumbnail) and focused in self.cards:
            focused.mark(not focused.marked)
            self._focus_card(1)
            self._retitle()
            self.refresh_bindings()

    def action_act(self, action: str) -> None:
        """Ask for the action on the marked cards, or on the focused one; the marks are spent."""
        targets = self._targets()
        if not targets:
            return
        for card in targets:
            card.mark(False)
        self._retitle()
        self.refresh_bindings()
        self.post_message(self.ActionRequested(action, [card.picture for card in targets]))

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
