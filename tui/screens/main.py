"""The control panel itself: overview, thumbnails, images held for review, prompt editor and log, in tabs.

The screen owns the picture of the server (`status`) and spreads it over its widgets; the App feeds it
from the connection. On a terminal of 140 columns or more the overview shows the log beside the panels; of 120
columns and 34 rows or more, also a strip of the newest thumbnails under them.

The tabs carry their keys in their labels ("o Overview"), so the footer keeps its room for the keys that
act (refill, abort, quit, and the image actions): every one of them shows on an 80-column terminal.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Label, TabbedContent, TabPane, Tabs

from avatargen.api import History, LogEntry, Preview, Status, Step
from avatargen.config import BUCKET_NAMES
from tui.images import ImageStyle, Picture, decode_pixels
from tui.widgets.bucket_gauge import BucketGauge
from tui.widgets.event_log import EventLog
from tui.widgets.history_charts import HistoryCharts
from tui.widgets.last_run import LastRunSummary
from tui.widgets.link_indicator import LinkIndicator
from tui.widgets.live_preview import LivePreview
from tui.widgets.prompt_editor import PromptEditor
from tui.widgets.run_progress import RunProgress
from tui.widgets.spend import SpendSummary
from tui.widgets.state_diagram import StateDiagram
from tui.widgets.thumbnail_grid import ThumbnailGrid


def tab_label(key: str, name: str) -> Content:
    """A tab's label with the key that opens it."""
    return Content.assemble((key, "bold"), " ", name)


class MainScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide"), (140, "-wider")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    AUTO_FOCUS = ""  # keys start with the panel (letters switch tabs); Tab walks into the tab's fields
    BINDINGS = [
        Binding("o", "show_tab('overview')", "Overview", show=False),
        Binding("i", "show_tab('images')", "Images", show=False),
        Binding("v", "show_tab('review')", "Review", show=False),
        Binding("p", "show_tab('prompts')", "Prompts", show=False),
        Binding("l", "show_tab('log')", "Log", show=False),
    ]

    status: reactive[Status | None] = reactive(None, init=False)

    def __init__(self, image_style: ImageStyle) -> None:
        super().__init__()
        self.image_style = image_style
        self.newest: Picture | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Label("avatargen", id="app-title")
            yield LinkIndicator(id="link")
        with TabbedContent(initial="overview"):
            with TabPane(tab_label("o", "Overview"), id="overview"), Horizontal(id="overview-columns"):
                with Vertical(id="dashboard"):
                    with Vertical(id="buckets"):
                        for bucket in BUCKET_NAMES:
                            yield BucketGauge(bucket, id=f"gauge-{bucket}")
                    with Vertical(id="generator"):
                        with Horizontal(id="run-row"):
                            with Vertical(id="run-column"):
                                yield StateDiagram()
                                yield RunProgress()
                            yield LivePreview(self.image_style)
                        yield LastRunSummary()
                        yield SpendSummary()
                    yield HistoryCharts(id="history")
                    yield ThumbnailGrid(self.image_style, limit=12, id="overview-thumbnails")
                yield EventLog(id="overview-log")
            with TabPane(tab_label("i", "Images"), id="images"):
                yield ThumbnailGrid(self.image_style, id="thumbnails")
            with TabPane(tab_label("v", "Review"), id="review"):
                yield ThumbnailGrid(self.image_style, review=True, id="review-grid")
            with TabPane(tab_label("p", "Prompts"), id="prompts"):
                yield PromptEditor(id="prompt-editor")
            with TabPane(tab_label("l", "Log"), id="log"):
                yield EventLog(id="log-view")
        yield Footer(show_command_palette=False, compact=True)  # ctrl+p still opens the palette

    def on_mount(self) -> None:
        self.query_one(Tabs).can_focus = False  # letters and clicks switch tabs; Tab walks the tab's fields
        self.query_one("#buckets").border_title = "Buckets"
        self.query_one("#generator").border_title = "Generator"
        self.query_one("#history").border_title = "History"
        self.query_one("#overview-log").border_title = "Log"

    def watch_status(self, status: Status | None) -> None:
        if status is None:
            return
        for bucket in BUCKET_NAMES:
            self.query_one(f"#gauge-{bucket}", BucketGauge).level = status.buckets.get(bucket)
        self.query_one(StateDiagram).state = status.state
        self.query_one(RunProgress).run = status.run
        self.query_one(LastRunSummary).last_run = status.last_run
        self.query_one(SpendSummary).status = status
        self.review_grid.show_gate(status.gate_on)
        held = sum(level.held for level in status.buckets.values())
        self.query_one(TabbedContent).get_tab("review").label = tab_label("v", f"Review ({held})" if held else "Review")
        if status.state != "generating" and self.query_one(LivePreview).live:
            self._show_newest()

    @property
    def image_grids(self) -> list[ThumbnailGrid]:
        """The grids of published images (the overview's and the Images tab's)."""
        return [grid for grid in self.query(ThumbnailGrid) if not grid.review]

    @property
    def review_grid(self) -> ThumbnailGrid:
        return self.query_one("#review-grid", ThumbnailGrid)

    def show_preview(self, preview: Preview) -> None:
        """The image being made, at its step (while the run generates: a late one is dropped)."""
        status = self.status
        if status is None or status.state != "generating" or status.run is None or status.run.id != preview.run_id:
            return
        image = decode_pixels(preview.image)
        if image is not None:
            self.query_one(LivePreview).show_preview(image, preview.step, preview.steps)
            self.query_one(RunProgress).preview_step = Step(preview.step, preview.steps, 0.0)

    def show_newest(self, picture: Picture | None) -> None:
        """The newest finished image, shown beside the step bar unless a preview of the next one is."""
        self.newest = picture
        if not self.query_one(LivePreview).live:
            self._show_newest()

    def _show_newest(self) -> None:
        picture = self.newest
        caption = "no image yet" if picture is None else "last image"
        self.query_one(RunProgress).preview_step = None  # no preview: the step bar follows the run's progress
        self.query_one(LivePreview).show_finished(None if picture is None else picture.image, caption)

    def show_history(self, history: History) -> None:
        self.query_one(HistoryCharts).history = history

    def log_entry(self, entry: LogEntry) -> None:
        for log in self.query(EventLog):
            log.add(entry)

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab in ("images", "review"):
            self.query_one("#thumbnails" if tab == "images" else "#review-grid", ThumbnailGrid).focus_newest()
        else:
            self.set_focus(None)  # keys stay with the panel; Tab walks into the tab's fields
