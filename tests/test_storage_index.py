"""The ids of a bucket in memory (`avatargen.storage.index.IdIndex`), which both backends count and pick from."""

from __future__ import annotations

from avatargen.storage.index import IdIndex


def test_adding_and_discarding_keep_count_membership_and_picks_consistent() -> None:
    index = IdIndex(["a", "b", "c"])
    index.add("d")
    index.add("a")  # already in: no twin
    index.discard("b")  # from the middle: the last one takes its place
    index.discard("zz")  # never in: nothing happens
    assert len(index) == 3 and sorted(index) == ["a", "c", "d"]
    assert "b" not in index and "d" in index
    assert {index.choice() for _ in range(200)} == {"a", "c", "d"}
    for image_id in ("a", "c", "d"):
        index.discard(image_id)
    assert len(index) == 0 and index.choice() is None
