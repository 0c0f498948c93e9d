"""The ids of a bucket in memory, whichever the backend keeps them in: what lets counting and random picks
on the visitor path cost nothing, with no listing of a folder or round trip to Redis per call."""

from __future__ import annotations

import random
from collections.abc import Iterator


class IdIndex:
    """The ids in a bucket: O(1) add, remove, count and random pick (a list plus positions)."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids
        self._positions = {image_id: n for n, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._positions

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def add(self, image_id: str) -> None:
        if image_id not in self._positions:
            self._positions[image_id] = len(self._ids)
            self._ids.append(image_id)

    def discard(self, image_id: str) -> None:
        position = self._positions.pop(image_id, None)
        if position is None:
            return
        last = self._ids.pop()
        if last != image_id:
            self._ids[position] = last
            self._positions[last] = position

    def choice(self) -> str | None:
        return random.choice(self._ids) if self._ids else None
