"""The owner's word on images from the panel, driven with Pilot against a real `avatargen serve` process:
delete (asking first), keep, move, several at once, and the Review view of what the safety gate held back."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message
from textual.widgets import Label, TabbedContent

from tests.test_tui_live import SIZE, answers, collect
from tests.tui_support import footer_keys, panel, refill_everything, running_server, seed_images, wait_for
from tui.app import AvatarApp
from tui.messages import Answered
from tui.screens.confirm_delete import ConfirmDeleteScreen
from tui.screens.image_detail import ImageDetailScreen
from tui.widgets.spend import SpendSummary
from tui.widgets.thumbnail import Thumbnail
from tui.widgets.thumbnail_grid import ThumbnailGrid


def ids(grid: ThumbnailGrid) -> list[str]:
    return [card.picture.info.id for card in grid.cards]


def meta(card: Thumbnail) -> str:
    return str(card.query_one(".thumbnail-meta", Label).render())


def shown(grid: ThumbnailGrid, count: int) -> bool:
    """`count` cards, each with its caption mounted (a card is in the grid a moment before its children)."""
    return len(grid.cards) == count and all(card.query(".thumbnail-meta") for card in grid.cards)


def stored(folder: Path) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.webp"))


def review_tab(app: AvatarApp) -> str:
    return str(app.main.query_one(TabbedContent).get_tab("review").label)


async def test_delete_asks_first_and_the_image_leaves_every_grid(tmp_path: Path) -> None:
    fallback = tmp_path / "data" / "fallback"
    seed_images(fallback, 3)
    with running_server(tmp_path) as server:
        app = panel(server.url)
        seen: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
            grid = app.main.query_one("#thumbnails", ThumbnailGrid)
            overview = app.main.query_one("#overview-thumbnails", ThumbnailGrid)
            await wait_for(pilot, lambda: shown(grid, 3), "the three thumbnails")
            await pilot.press("i")
            newest = ids(grid)[0]
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDeleteScreen), "the question")
            await pilot.press("enter")  # the focus starts on the safe answer
            await wait_for(pilot, lambda: app.screen is app.main, "the question to go")
            assert len(grid.cards) == 3 and not answers(seen)

            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDeleteScreen), "the question again")
            await pilot.press("y")
            await wait_for(pilot, lambda: newest not in ids(grid) and newest not in ids(overview), "the card to go")
            assert answers(seen) == [f"Deleted: fallback image {newest}"]
            assert stored(fallback) == sorted(set(ids(grid)))
            assert isinstance(app.screen.focused, Thumbnail), "the focus stays in the grid"
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.buckets["fallback"].count == 2,
                           "the gauge")


async def test_mark_several_with_space_then_delete_them_at_once(tmp_path: Path) -> None:
    fallback = tmp_path / "data" / "fallback"
    seed_images(fallback, 3)
    with running_server(tmp_path) as server:
        app = panel(server.url)
        seen: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
            grid = app.main.query_one("#thumbnails", ThumbnailGrid)
            await wait_for(pilot, lambda: shown(grid, 3), "the three thumbnails")
            await pilot.press("i", "space", "space")  # mark the newest two (the focus moves on after each)
            marked = [card.picture.info.id for card in grid.cards if card.marked]
            assert marked == ids(grid)[:2] and "2 marked" in str(grid.border_title)
            assert all(meta(card).startswith("✓ ") for card in grid.cards[:2])
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDeleteScreen), "the question")
            assert "2 images (2 fallback)" in str(app.screen.query_one(".dialog-text").render())
            await pilot.press("y")
            await wait_for(pilot, lambda: shown(grid, 1), "the two cards to go")
            assert answers(seen) == ["Deleted: 2 images"]
            assert stored(fallback) == ids(grid)
            assert not any(card.marked for card in grid.cards) and "marked" not in str(grid.border_title)


async def test_keep_and_unkeep_a_fallback_from_the_grid(tmp_path: Path) -> None:
    fallback = tmp_path / "data" / "fallback"
    seed_images(fallback, 2)
    with running_server(tmp_path) as server:
        app = panel(server.url)
        seen: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
            grid = app.main.query_one("#thumbnails", ThumbnailGrid)
            await wait_for(pilot, lambda: shown(grid, 2), "the thumbnails")
            await pilot.press("i")
            card = grid.cards[0]
            assert footer_keys(app)["k"] == "Keep" and "m" not in footer_keys(app)  # a fallback does not move
            await pilot.press("k")
            await wait_for(pilot, lambda: " kept " in meta(card), "the card to say it is kept")
            assert (fallback / ".kept" / card.picture.info.id).exists()
            assert answers(seen) == [f"Kept: fallback image {card.picture.info.id}"]
            assert footer_keys(app)["k"] == "Unkeep"
            await pilot.press("k")
            await wait_for(pilot, lambda: " kept " not in meta(card), "the mark to go")
            assert not (fallback / ".kept" / card.picture.info.id).exists()


async def test_move_a_unique_into_the_fallback_bucket_from_the_detail_view(tmp_path: Path) -> None:
    unique = tmp_path / "data" / "unique"
    seed_images(unique, 1)
    with running_server(tmp_path) as server:
        app = panel(server.url)
        seen: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
            grid = app.main.query_one("#thumbnails", ThumbnailGrid)
            await wait_for(pilot, lambda: shown(grid, 1), "the thumbnail")
            await pilot.press("i", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ImageDetailScreen), "the image view")
            assert {"m", "d"} <= footer_keys(app).keys() and "k" not in footer_keys(app)  # a unique is not kept
            await pilot.press("m")
            card = grid.cards[0]
            await wait_for(pilot, lambda: meta(card).startswith("fallback"), "the card to show its new bucket")
            assert card.has_class("-fallback") and not card.has_class("-unique")
            image_id = card.picture.info.id
            assert answers(seen) == [f"Moved into the fallback bucket: unique image {image_id}"]
            assert stored(unique) == [] and stored(tmp_path / "data" / "fallback") == [image_id]


async def test_the_review_view_approves_and_deletes_what_the_gate_held_back(tmp_path: Path) -> None:
    fallback = tmp_path / "data" / "fallback"
    seed_images(fallback, 2, held_because="no face")
    with running_server(tmp_path) as server:
        app = panel(server.url)
        seen: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=collect(Answered, seen)) as pilot:
            review = app.main.review_grid
            images = app.main.query_one("#thumbnails", ThumbnailGrid)
            await wait_for(pilot, lambda: shown(review, 2), "the held images")
            assert images.cards == []
            assert all(meta(card) == "fallback · held: no face" for card in review.cards)
            await wait_for(pilot, lambda: review_tab(app) == "v Review (2)",
                           "the tab to count them")
            await pilot.press("v")
            assert {"y", "d"} <= footer_keys(app).keys() and not {"k", "m"} & footer_keys(app).keys()
            approved, refused = ids(review)
            await pilot.press("y")
            await wait_for(pilot, lambda: ids(images) == [approved] and approved not in ids(review),
                           "the approved image to move to the images")
            assert stored(fallback) == [approved]
            await pilot.press("d", "y")
            await wait_for(pilot, lambda: review.cards == [], "the deleted one to go")
            assert answers(seen) == [f"Approved and published: fallback image {approved}",
                                     f"Deleted: fallback image {refused}"]
            assert stored(fallback / ".review") == []
            await wait_for(pilot, lambda: review_tab(app) == "v Review",
                           "the tab to say nothing waits")


async def test_images_the_gate_holds_back_during_a_run_arrive_in_the_review_view(tmp_path: Path) -> None:
    # A face must score 1.0 to count, which none does: the gate, on the real model, holds every image back.
    overrides = {"review.enabled": True, "review.require_face": True, "review.face_score": 1.0}
    with running_server(tmp_path, overrides) as server:
        app = panel(server.url)
        async with app.run_test(size=SIZE) as pilot:
            await refill_everything(pilot, app)
            review = app.main.review_grid
            await wait_for(pilot, lambda: shown(review, 5), "five held images", timeout=60)
            assert app.main.query_one("#thumbnails", ThumbnailGrid).cards == []
            assert all("held: no face" in meta(card) for card in review.cards)
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.last_run is not None,
                           "the run to end", timeout=30)
            last = app.main.status.last_run if app.main.status else None
            assert last is not None and (last.run.done, last.run.held) == (0, 5)
            assert last.outcome == "failed"  # shown as a problem, not a green success
            # The panel says automatic runs are paused, and why (the status fetched at the run's end).
            await wait_for(pilot, lambda: (s := app.main.status) is not None and s.paused_by == "safety_gate",
                           "the pause", timeout=30)
            assert "automatic runs paused: the safety gate held back 5" in str(
                app.main.query_one(SpendSummary).render())
