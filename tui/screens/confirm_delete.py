"""Deleting images cannot be undone, so it asks first, naming what goes; dismisses True to delete."""

from __future__ import annotations

from collections.abc import Sequence

from textual.binding import Binding

from tui.images import Picture
from tui.screens.confirm import ConfirmScreen


def _what(pictures: Sequence[Picture]) -> str:
    if len(pictures) == 1:
        info = pictures[0].info
        return f"{'held ' if info.held else ''}{info.bucket} image {info.id}"
    counts = {bucket: sum(p.info.bucket == bucket for p in pictures) for bucket in {p.info.bucket for p in pictures}}
    return f"{len(pictures)} images (" + ", ".join(f"{n} {bucket}" for bucket, n in sorted(counts.items())) + ")"


class ConfirmDeleteScreen(ConfirmScreen):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes, delete"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, pictures: Sequence[Picture]) -> None:
        many = len(pictures) > 1
        super().__init__(f"Delete {'these images' if many else 'this image'}?",
                         f"This deletes {_what(pictures)} for good, with {'their' if many else 'its'} metadata. "
                         "It cannot be undone.",
                         yes="Delete", no="Keep")
        self.pictures = list(pictures)
