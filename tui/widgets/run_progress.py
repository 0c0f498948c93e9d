"""The current run: images done against the total, the SD job's own steps, the prompt, GPU time and cost."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, ProgressBar, Static

from avatargen.api import RunView, Step, money
from avatargen.durations import format_duration
from tui.formatting import targets


def _counts(run: RunView) -> str:
    parts = [f"{run.done}/{run.total}"]
    if run.held:
        parts.append(f"{run.held} held")
    if run.failed:
        parts.append(f"{run.failed} failed")
    if run.images_per_minute is not None:
        parts.append(f"{run.images_per_minute:.1f}/min")
    if run.eta_seconds is not None:
        parts.append(f"ETA {format_duration(run.eta_seconds)}")
    return " · ".join(parts)


class RunProgress(Widget):
    """Shows the run in progress, or says there is none.

    The SD step comes from the run's progress events, except while a live preview stands beside the bar:
    then from the preview (`preview_step`), so that the bar and the picture's caption never disagree (the
    two are polled at different moments, and a new job starts at step 0 before its first preview)."""

    run: reactive[RunView | None] = reactive(None, init=False)
    preview_step: reactive[Step | None] = reactive(None, init=False)

    def compose(self) -> ComposeResult:
        yield Static(id="run-title")
        with Horizontal(classes="bar-row"):
            yield Label("images ", classes="bar-label")
            yield ProgressBar(id="run-bar", show_eta=False, show_percentage=False)
            yield Static(id="run-counts")
        with Horizontal(classes="bar-row", id="step-row"):
            yield Label("SD step", classes="bar-label")
            yield ProgressBar(id="step-bar", show_eta=False, show_percentage=False)
            yield Static(id="step-counts")
        yield Static(id="run-prompt")

    def on_mount(self) -> None:
        self.watch_run(self.run)

    def watch_run(self, run: RunView | None) -> None:
        self.set_class(run is None, "-no-run")
        title = self.query_one("#run-title", Static)
        if run is None:
            title.update(Text("No run in progress. Press r to refill now.", "dim"))
            return
        title.update(Text.assemble(
            ("Run ", "bold"), (run.id, "bold"),
            f" · {run.trigger} · {targets(run.targets)} · GPU {format_duration(run.billed_seconds)}, {money(run.cost)}",
        ))
        self.query_one("#run-bar", ProgressBar).update(total=max(run.total, 1), progress=run.done + run.held)
        self.query_one("#run-counts", Static).update(_counts(run))
        self._show_step()
        self.query_one("#run-prompt", Static).update(Text.assemble(("prompt  ", "dim"), run.current_prompt or "…"))

    def watch_preview_step(self) -> None:
        self._show_step()

    def _show_step(self) -> None:
        """The step bar and its words: "12/20 · KSampler" while sampling; the ComfyUI node alone before the
        first sampling step ("CheckpointLoaderSimple"). The node always comes from the run's progress."""
        run = self.run
        node = run.step.node if run is not None and run.step is not None else None
        step = self.preview_step or (run.step if run is not None else None)
        if step is not None and step.sampling_steps <= 0:
            step = None
        self.query_one("#step-row").display = step is not None or node is not None
        words = [f"{step.sampling_step}/{step.sampling_steps}"] if step is not None else []
        if node is not None:
            words.append(node)
        if words:
            bar = self.query_one("#step-bar", ProgressBar)
            bar.update(total=step.sampling_steps if step is not None else 1,
                       progress=step.sampling_step if step is not None else 0)
            self.query_one("#step-counts", Static).update(" · ".join(words))
