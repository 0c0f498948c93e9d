"""The owner's control panel for one avatargen server.

The App owns the admin API client and every backend call. Calls run in `@work` workers, which report
back with messages (`tui.messages`); the handlers below turn those into screen updates. No worker closes
the panel on an error (`exit_on_error=False`): what fails is shown where it happened, and the rest goes
on. The connection worker (`tui.connection.follow`) keeps the picture live and survives the server
going away.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from avatargen.api import (
    AdminClient,
    AdminError,
    ImageApproved,
    ImageHeld,
    ImageInfo,
    ImageKept,
    ImageMoved,
    ImageRemoved,
    LogEntry,
    NewImage,
    Preview,
    ProtocolError,
    RunView,
    StateChange,
    Unreachable,
)
from avatargen.config import BUCKET_NAMES
from tui.connection import DEFAULT_BACKOFF, Backoff, follow
from tui.formatting import targets
from tui.images import ImageStyle, Picture, decode
from tui.messages import (
    Answered,
    Connected,
    Disconnected,
    Failed,
    HistoryLoaded,
    PicturesArrived,
    PicturesLoaded,
    PromptsLoaded,
    PromptsRejected,
    Received,
    Refused,
    SamplesComposed,
    StatusFetched,
)
from tui.screens.confirm_abort import ConfirmAbortScreen
from tui.screens.confirm_delete import ConfirmDeleteScreen
from tui.screens.image_detail import ImageDetailScreen
from tui.screens.main import MainScreen
from tui.screens.problem import ProblemScreen
from tui.screens.refill import RefillScreen, is_full
from tui.widgets.link_indicator import LinkIndicator
from tui.widgets.prompt_editor import PromptEditor
from tui.widgets.spend import SpendSummary
from tui.widgets.thumbnail import Thumbnail
from tui.widgets.thumbnail_grid import ThumbnailGrid

HISTORY_DAYS = 30  # the days the charts show
HISTORY_EVERY = 20.0  # seconds between chart refreshes while a run goes on (its chart is by the minute)
SAMPLE_DELAY = 0.25  # seconds of quiet typing before samples are asked for: one request per pause, not per key
TOKEN_HINT = (
    "Give the panel the server's admin token: --token, the AVATARGEN_ADMIN_TOKEN environment variable, "
    "[admin] token in config.toml, or the token file the server writes to <data_dir>/admin_token. "
    "A 403 means this machine's address is not in the server's admin.allow_from."
)
BackendError = (Unreachable, AdminError, ProtocolError)
T = TypeVar("T")
H = TypeVar("H", bound=Callable[..., Any])


def _newest(pictures: list[Picture]) -> Picture | None:
    return max(pictures, key=lambda picture: picture.info.created_at, default=None)


def while_running(handler: H) -> H:
    """Skip a message handler once the app is shutting down.

    Workers may still have messages queued while the screens they would update are taken apart
    (run_test shuts the app down while its message loop still runs); those updates have no one to show.
    """

    @functools.wraps(handler)
    async def guarded(app: App[Any], message: Message) -> None:
        if app.is_running:
            result = handler(app, message)
            if inspect.isawaitable(result):
                await result

    return guarded  # type: ignore[return-value]


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


class AvatarApp(App[None]):
    """Watch and steer the avatar generator: buckets, runs, spend, images, prompt recipe."""

    CSS_PATH = "app.tcss"
    TITLE = "avatargen"
    BINDINGS = [
        Binding("r", "refill", "Refill"),
        Binding("a", "abort", "Abort"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        url: str,
        token: str,
        *,
        image_style: ImageStyle = "auto",
        backoff: Backoff = DEFAULT_BACKOFF,
        thumbnails: int = 24,
        samples: int = 5,
    ) -> None:
        super().__init__()
        self.client = AdminClient(url, token)
        self.image_style: ImageStyle = image_style
        self.backoff = backoff
        self.thumbnails = thumbnails
        self.samples = samples
        self.arrivals: list[ImageInfo] = []  # new images not downloaded yet
        self.arrivals_worker: Worker[None] | None = None
        self.main = MainScreen(image_style)
        self.problem: ProblemScreen | None = None
        self.ever_connected = False
        self.events_received = 0  # events that change the status; a status fetched meanwhile is older
        self.connection_errors = 0  # unexpected errors of the connection worker in a row

    def get_default_screen(self) -> Screen:
        return self.main

    def on_mount(self) -> None:
        self.follow_server()
        self.set_interval(HISTORY_EVERY, self._refresh_history)

    async def on_unmount(self) -> None:
        await self.client.aclose()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Refill and abort act on what the main screen shows; hide them over a problem screen.
        return action not in ("refill", "abort") or self.screen is self.main

    # --- the connection --------------------------------------------------------------------------------

    @work(exclusive=True, group="connection", exit_on_error=False)
    async def follow_server(self) -> None:
        await follow(self.client, self.post_message, self.backoff)

    def action_reconnect(self) -> None:
        self.follow_server()

    @while_running
    def on_connected(self, message: Connected) -> None:
        self.connection_errors = 0
        self.main.status = message.status
        self.main.query_one(LinkIndicator).show_live()
        self.main.remove_class("-offline")
        self._close_problem()
        self.note("info", f"connected to {self.client.url}")
        self.ever_connected = True
        self.load_pictures()
        self.load_history()
        if not self.main.query_one(PromptEditor).dirty:
            self.load_prompts()

    @while_running
    def on_disconnected(self, message: Disconnected) -> None:
        self.main.query_one(LinkIndicator).show_down(message.reason, message.retry_in, message.attempt)
        self.main.add_class("-offline")
        self.note("warning", f"disconnected: {message.reason}; retry {message.attempt} in {message.retry_in:.3g}s")
        if not self.ever_connected:
            self._show_problem(
                "Cannot reach the avatargen server",
                message.reason,
                f"Is `avatargen serve` running there, and is {self.client.url} its address (--url)? "
                f"Retrying with backoff: attempt {message.attempt} in {message.retry_in:.3g}s. "
                "Press r to retry now, q to quit.",
            )

    @while_running
    def on_refused(self, message: Refused) -> None:
        error = message.error
        self.main.add_class("-offline")
        self.note("error", f"refused ({error.status}): {error.message}")
        self._show_problem(f"The server refused this panel ({error.status})", error.message, TOKEN_HINT)

    def _show_problem(self, title: str, message: str, hint: str) -> None:
        if self.problem is None:
            self.problem = ProblemScreen(title, message, hint)
            self.push_screen(self.problem)
        else:
            self.problem.explain(title, message, hint)

    def _close_problem(self) -> None:
        if self.problem is not None:
            if self.screen is self.problem:
                self.pop_screen()
            self.problem = None

    @while_running
    def on_received(self, message: Received) -> None:
        event = message.event
        if isinstance(event, LogEntry):
            self.main.log_entry(event)
            return
        if isinstance(event, Preview):
            self.main.show_preview(event)
            return
        self.events_received += 1
        if self.main.status is not None:
            self.main.status = self.main.status.apply(event)
        if isinstance(event, StateChange):
            self.refresh_status()  # today's and this month's spend are not in the event
            self.load_history()  # a run started or ended: its chart, today's bar
        elif isinstance(event, NewImage | ImageHeld):
            self.arrivals.append(event.image)
            if self.arrivals_worker is None or self.arrivals_worker.is_finished:
                self.arrivals_worker = self.fetch_arrivals()
        elif isinstance(event, ImageRemoved):
            self.run_worker(self._drop_everywhere(event.id), group="grids", exit_on_error=False)
        elif isinstance(event, ImageKept | ImageMoved):
            for grid in self.main.image_grids:
                grid.show_change(event.image)
        elif isinstance(event, ImageApproved):
            self.run_worker(self._publish_approved(event.image), group="grids", exit_on_error=False)

    @work(exclusive=True, group="status", exit_on_error=False)
    async def refresh_status(self) -> None:
        events_before = self.events_received
        status = await self._fetch("status", self.client.status())
        if status is not None:
            self.post_message(StatusFetched(status, events_before))

    @while_running
    def on_status_fetched(self, message: StatusFetched) -> None:
        current = self.main.status
        if current is not None and self.events_received != message.events_before:
            # Events came in while the fetch was out: they are newer than its state, run and levels.
            self.main.status = message.status.keeping_live_parts_of(current)
        else:
            self.main.status = message.status

    def on_spend_summary_check_due(self, message: SpendSummary.CheckDue) -> None:
        self.refresh_status()

    # --- charts ----------------------------------------------------------------------------------------

    def _refresh_history(self) -> None:
        """While a run goes on its chart grows by the minute; between runs nothing changes."""
        if self.main.status is not None and self.main.status.run is not None:
            self.load_history()

    @work(exclusive=True, group="history", exit_on_error=False)
    async def load_history(self) -> None:
        history = await self._fetch("the history", self.client.history(HISTORY_DAYS))
        if history is not None:
            self.post_message(HistoryLoaded(history))

    @while_running
    def on_history_loaded(self, message: HistoryLoaded) -> None:
        self.main.show_history(message.history)

    def note(self, level: str, text: str) -> None:
        """A line in the log from the panel itself."""
        self.main.log_entry(LogEntry(datetime.now(UTC), level, text))

    @while_running
    def on_failed(self, message: Failed) -> None:
        self.note("warning", message.text)

    @while_running
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The net under every worker (all run with exit_on_error=False): an error the worker did not
        expect is reported, and the panel goes on. A connection worker that fell is started again, with
        the same backoff as a lost connection, so the panel never shows stale numbers as live."""
        worker = event.worker
        if event.state is not WorkerState.ERROR:
            return
        text = f"{worker.name} failed: {type(worker.error).__name__}: {worker.error}"
        self.note("error", text)
        self.notify(text, severity="error", timeout=8, markup=False)
        if worker.group == "connection":
            self.connection_errors += 1
            delay = self.backoff.delay(self.connection_errors)
            self.post_message(Disconnected(text, delay, self.connection_errors))
            self.set_timer(delay, self.follow_server)

    async def _fetch(self, what: str, call: Awaitable[T]) -> T | None:
        """Await a background call; a failure is a line in the log, not a crashed worker."""
        try:
            return await call
        except BackendError as exc:
            self.post_message(Failed(f"could not load {what}: {exc}"))
            return None

    # --- thumbnails ------------------------------------------------------------------------------------

    async def _download(self, info: ImageInfo) -> Picture | None:
        data = await self._fetch(f"image {info.id}", self.client.image_bytes(info))
        if data is None:
            return None
        picture = decode(info, data)
        if picture.problem is not None:
            self.post_message(Failed(f"cannot show image {info.id}: {picture.problem}"))
        return picture

    async def _download_all(self, images: list[ImageInfo]) -> list[Picture]:
        pictures = await asyncio.gather(*(self._download(info) for info in images))
        return [picture for picture in pictures if picture is not None]

    @work(exclusive=True, group="pictures", exit_on_error=False)
    async def load_pictures(self) -> None:
        """The newest images of every bucket, and those held back for review."""
        pictures: list[Picture] = []
        for held in (False, True):
            newest: list[ImageInfo] = []
            for bucket in BUCKET_NAMES:
                what = f"the {bucket} images{' held back' if held else ''}"
                newest += await self._fetch(what, self.client.images(bucket, self.thumbnails, held=held)) or []
            newest.sort(key=lambda info: info.created_at, reverse=True)
            pictures += await self._download_all(newest[: self.thumbnails])
        self.post_message(PicturesLoaded(pictures))

    @work(group="arrivals", exit_on_error=False)
    async def fetch_arrivals(self) -> None:
        """Download new images in batches: in a burst only the newest ones would stay on screen anyway."""
        while self.arrivals:
            batch, self.arrivals = self.arrivals[-self.thumbnails :], []
            self.post_message(PicturesArrived(await self._download_all(batch)))

    @while_running
    async def on_pictures_loaded(self, message: PicturesLoaded) -> None:
        held = [picture for picture in message.pictures if picture.info.held]
        published = [picture for picture in message.pictures if not picture.info.held]
        for grid in self.main.image_grids:
            await grid.show(published)
        await self.main.review_grid.show(held)
        self.main.show_newest(_newest(published))

    @while_running
    async def on_pictures_arrived(self, message: PicturesArrived) -> None:
        held = [picture for picture in message.pictures if picture.info.held]
        published = [picture for picture in message.pictures if not picture.info.held]
        for grid in self.main.image_grids:
            await grid.add(published)
        await self.main.review_grid.add(held)
        if published:
            self.main.show_newest(_newest(published))

    async def _drop_everywhere(self, image_id: str) -> None:
        for grid in self.main.query(ThumbnailGrid):
            await grid.drop([image_id])
        if self.main.newest is not None and self.main.newest.info.id == image_id:  # beside the step bar: the next
            cards = self.main.query_one("#thumbnails", ThumbnailGrid).cards
            self.main.show_newest(cards[0].picture if cards else None)

    async def _publish_approved(self, info: ImageInfo) -> None:
        """An approved image leaves the review grid for the image grids, with the pixels already here."""
        card = self.main.review_grid.find(info.id)
        pictures = [replace(card.picture, info=info)] if card is not None else await self._download_all([info])
        await self.main.review_grid.drop([info.id])
        for grid in self.main.image_grids:
            await grid.add(pictures)

    def on_thumbnail_selected(self, message: Thumbnail.Selected) -> None:
        picture = message.picture

        def chosen(action: str | None) -> None:
            if action is not None:
                self.act_on(action, [picture])

        self.push_screen(ImageDetailScreen(picture, self.image_style), chosen)

    def on_thumbnail_grid_action_requested(self, message: ThumbnailGrid.ActionRequested) -> None:
        self.act_on(message.action, message.pictures)

    # --- the owner's word on images --------------------------------------------------------------------

    def act_on(self, action: str, pictures: Sequence[Picture]) -> None:
        """Carry out an owner's action on images, on those it applies to (saying why the rest were left)."""
        infos = [picture.info for picture in pictures]
        if action == "delete":
            self.push_screen(ConfirmDeleteScreen(pictures), lambda yes: self._delete_confirmed(yes, infos))
        elif action in ("keep", "unkeep"):
            kept = action == "keep"
            fallbacks = [info for info in infos if info.bucket == "fallback" and not info.held]
            if not fallbacks:
                self.cannot("Only fallback images can be kept: a unique is deleted as it is served")
                return
            changing = [info for info in fallbacks if info.kept != kept]
            verb = "Kept" if kept else "No longer kept"
            self.apply(verb, changing, lambda info: self.client.keep_image(info.bucket, info.id, kept),
                       skipped=len(infos) - len(changing))
        elif action == "move":
            uniques = [info for info in infos if info.bucket == "unique" and not info.held]
            if not uniques:
                self.cannot("Only unique images can be moved into the fallback bucket")
                return
            self.apply("Moved into the fallback bucket", uniques,
                       lambda info: self.client.move_image(info.bucket, info.id, "fallback"),
                       skipped=len(infos) - len(uniques))
        elif action == "approve":
            held = [info for info in infos if info.held]
            self.apply("Approved and published", held, lambda info: self.client.approve_image(info.bucket, info.id),
                       skipped=len(infos) - len(held))

    def _delete_confirmed(self, yes: bool | None, infos: list[ImageInfo]) -> None:
        if yes:
            self.apply("Deleted", infos, lambda info: self.client.delete_image(info.bucket, info.id))

    @work(group="owner", exit_on_error=False)
    async def apply(self, verb: str, infos: list[ImageInfo], call: Callable[[ImageInfo], Awaitable[object]],
                    skipped: int = 0) -> None:
        """One request per image, one after the other; one answer for all of them (the grids follow the
        server's events, as every other panel's do)."""
        failures: list[str] = []
        for info in infos:
            try:
                await call(info)
            except AdminError as exc:
                failures.append(f"{info.id}: {exc.message} ({exc.status})")
            except (Unreachable, ProtocolError) as exc:
                failures.append(f"{info.id}: {exc}")
        done = len(infos) - len(failures)
        what = f"{infos[0].bucket} image {infos[0].id}" if len(infos) == 1 and not failures else _images(done)
        text = f"{verb}: {what}"
        if skipped:
            text += f" ({_images(skipped)} left as they were: the action does not apply to them)"
        if failures:
            text += f"; {len(failures)} failed: " + "; ".join(failures)
        self.post_message(Answered(text, ok=not failures))

    # --- prompt settings -------------------------------------------------------------------------------

    @work(exclusive=True, group="prompts", exit_on_error=False)
    async def load_prompts(self) -> None:
        settings = await self._fetch("the prompt settings", self.client.prompts())
        if settings is not None:
            self.post_message(PromptsLoaded(settings, saved=False))

    @while_running
    def on_prompts_loaded(self, message: PromptsLoaded) -> None:
        editor = self.main.query_one(PromptEditor)
        if message.saved or not editor.dirty:  # a background reload never overwrites the owner's typing
            editor.load(message.settings)

    def on_prompt_editor_edited(self, message: PromptEditor.Edited) -> None:
        self.compose_samples(dict(message.changes))

    @work(exclusive=True, group="samples", exit_on_error=False)
    async def compose_samples(self, changes: dict[str, object]) -> None:
        await asyncio.sleep(SAMPLE_DELAY)  # a newer edit cancels this worker (exclusive) before it asks
        try:
            self.post_message(SamplesComposed(await self.client.sample_prompts(changes, self.samples)))
        except AdminError as exc:
            self.post_message(PromptsRejected(exc))
        except (Unreachable, ProtocolError) as exc:
            self.post_message(Failed(f"could not compose sample prompts: {exc}"))

    @while_running
    def on_samples_composed(self, message: SamplesComposed) -> None:
        self.main.query_one(PromptEditor).show_samples(message.prompts)

    @while_running
    def on_prompts_rejected(self, message: PromptsRejected) -> None:
        self.main.query_one(PromptEditor).show_rejection(message.error.field, message.error.message)

    def on_prompt_editor_save_requested(self, message: PromptEditor.SaveRequested) -> None:
        self.save_prompts(dict(message.changes))

    @work(exclusive=True, group="save", exit_on_error=False)
    async def save_prompts(self, changes: dict[str, object]) -> None:
        try:
            settings = await self.client.save_prompts(changes)
        except AdminError as exc:
            self.post_message(PromptsRejected(exc))
            self.post_message(Answered(f"Prompt settings not saved: {exc.message}", ok=False))
        except (Unreachable, ProtocolError) as exc:
            self.post_message(Answered(f"Prompt settings not saved: {exc}", ok=False))
        else:
            self.post_message(PromptsLoaded(settings, saved=True))
            self.post_message(Answered(f"Prompt settings saved: {', '.join(sorted(changes))}", ok=True))

    # --- actions ---------------------------------------------------------------------------------------

    def action_refill(self) -> None:
        status = self.main.status
        if status is None:
            self.cannot("Nothing to refill yet: the server has not answered")
        elif status.run is not None:
            self.cannot(f"A run is on ({status.state.replace('_', ' ')}): refill when it ends, or press a to abort it")
        elif all(is_full(status.buckets.get(bucket)) for bucket in BUCKET_NAMES):
            levels = ", ".join(f"{name} {level.count} of {level.max}" for name, level in status.buckets.items())
            self.cannot(f"Nothing to refill: every bucket is at its max ({levels})")
        else:
            self.push_screen(RefillScreen(status.buckets), self._refill_chosen)

    def _refill_chosen(self, buckets: list[str] | None) -> None:
        if buckets:
            self.start_refill(buckets)

    @work(group="actions", exit_on_error=False)
    async def start_refill(self, buckets: list[str]) -> None:
        await self._act("Refill", self.client.refill(buckets),
                        lambda run: f"Refill started: run {run.id}, {run.total} images ({targets(run.targets)})")

    def action_abort(self) -> None:
        status = self.main.status
        if status is None or status.run is None:
            self.cannot("No run to abort: the generator is idle")
        elif status.state == "shutting_down":
            self.cannot(f"Run {status.run.id} is already ending: the machine is being stopped")
        else:
            self.push_screen(ConfirmAbortScreen(status.run), self._abort_confirmed)

    def _abort_confirmed(self, abort: bool | None) -> None:
        if abort:
            self.abort_run()

    @work(group="actions", exit_on_error=False)
    async def abort_run(self) -> None:
        await self._act("Abort", self.client.abort(),
                        lambda run: f"Abort accepted: run {run.id} stops, {run.done} images kept")

    async def _act(self, action: str, call: Awaitable[RunView], success: Callable[[RunView], str]) -> None:
        """Send an owner's action and report the server's answer, whatever it is."""
        try:
            run = await call
        except AdminError as exc:
            self.post_message(Answered(f"{action} refused ({exc.status}): {exc.message}", ok=False))
        except (Unreachable, ProtocolError) as exc:
            self.post_message(Answered(f"{action} failed: {exc}", ok=False))
        else:
            self.post_message(Answered(success(run), ok=True))

    def cannot(self, why: str) -> None:
        """An action the owner asked for that cannot happen now, and why: said at once, nothing is sent."""
        self.notify(why, severity="warning", timeout=6, markup=False)
        self.note("info", why)

    @while_running
    def on_answered(self, message: Answered) -> None:
        self.notify(message.text, severity="information" if message.ok else "error", timeout=8, markup=False)
        self.note("info" if message.ok else "error", message.text)
