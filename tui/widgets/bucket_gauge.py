"""A bucket's fill level as a gauge: count against the min that triggers a refill and the max it fills to."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from avatargen.api import BucketLevel


class BucketGauge(Widget):
    """`unique   ███████│░░░░░  12 / 30  min 10`: the bar spans 0..max, the tick marks min; images held back
    for review are counted after it (` · 3 held`), since they are not in the bucket."""

    COMPONENT_CLASSES = {"bucket-gauge--ok", "bucket-gauge--low", "bucket-gauge--empty", "bucket-gauge--tick"}

    level: reactive[BucketLevel | None] = reactive(None)

    def __init__(self, bucket: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.bucket = bucket

    def render(self) -> Text:
        level = self.level
        name = f"{self.bucket:<9}"
        if level is None:
            return Text.assemble(name, ("waiting for the server", "dim"))
        low = level.count < level.min
        numbers = (f" {level.count:>4} / {level.max:<4} min {level.min}" + (" · low" if low else "")
                   + (f" · {level.held} held" if level.held else ""))
        width = max(4, self.content_size.width - len(name) - len(numbers))
        filled = 0 if level.max <= 0 else min(width, round(width * level.count / level.max))
        tick = None if level.max <= 0 or level.min <= 0 else min(width - 1, round(width * level.min / level.max))
        fill_style = self.get_component_rich_style("bucket-gauge--low" if low else "bucket-gauge--ok")
        bar = Text()
        for cell in range(width):
            if cell == tick:
                bar.append("│", self.get_component_rich_style("bucket-gauge--tick"))
            elif cell < filled:
                bar.append("█", fill_style)
            else:
                bar.append("░", self.get_component_rich_style("bucket-gauge--empty"))
        return Text.assemble(name, bar, (numbers, fill_style if low else ""))
