"""The step bar names ComfyUI's node running now, driven with Pilot: the words beside the bar for a run's
progress with and without a node, before the first sampling step, and beside a live preview; and a real
run on the simulated ComfyUI naming its sampler there."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.widgets import Static

import tui.app
from avatargen.api import RunView, Step
from tests.tui_support import panel, refill_everything, running_server, wait_for
from tui.widgets.run_progress import RunProgress

RUN: dict[str, Any] = {
    "id": "r1", "trigger": "manual", "started_at": "2025-01-01T12:00:00Z", "targets": {"unique": 2},
    "done": 1, "failed": 0, "total": 2, "current_prompt": "A sketch of cjs", "state": "generating",
    "billed_seconds": 12.0, "cost": 0.0025,
    "step": {"sampling_step": 12, "sampling_steps": 20, "progress": 0.6, "node": "KSampler"},
}


class StepBarOnly(App[None]):
    CSS_PATH = Path(tui.app.__file__).with_name("app.tcss")

    def compose(self) -> ComposeResult:
        yield RunProgress()


async def test_the_step_bar_names_the_node_running() -> None:
    app = StepBarOnly()
    async with app.run_test(size=(100, 10)) as pilot:
        widget = app.query_one(RunProgress)
        run = RunView.from_json(RUN)
        assert run.step is not None

        def shown() -> str | None:
            row = widget.query_one("#step-row")
            return str(widget.query_one("#step-counts", Static).render()) if row.display else None

        widget.run = run
        await pilot.pause()
        assert shown() == "12/20 · KSampler"
        widget.preview_step = Step(13, 20, 0.0)  # the preview's step, the run's node
        await pilot.pause()
        assert shown() == "13/20 · KSampler"
        widget.preview_step = None
        widget.run = replace(run, step=Step(0, 0, 0.0, "CheckpointLoaderSimple"))  # before any sampling
        await pilot.pause()
        assert shown() == "CheckpointLoaderSimple"
        widget.run = replace(run, step=Step(20, 20, 1.0, "VAEDecode"))
        await pilot.pause()
        assert shown() == "20/20 · VAEDecode"
        widget.run = replace(run, step=Step(12, 20, 0.6))  # the web UI: no node
        await pilot.pause()
        assert shown() == "12/20"
        widget.run = replace(run, step=Step(0, 0, 0.0))
        await pilot.pause()
        assert shown() is None


async def test_a_run_on_comfyui_names_the_sampler_beside_the_step_bar(tmp_path: Path) -> None:
    """End to end: `avatargen serve` on the simulated ComfyUI, the generator's progress, the panel."""
    paced = {"sd.backend": "comfyui", "buckets.unique.max": 3, "buckets.fallback.max": 3, "sd.steps": 20,
             "gpu.simulated.step_time": "100ms"}
    with running_server(tmp_path, paced) as server:
        app = panel(server.url)
        async with app.run_test(size=(100, 30)) as pilot:
            await refill_everything(pilot, app)
            counts = app.main.query_one("#step-counts", Static)
            await wait_for(pilot, lambda: str(counts.render()).endswith("/20 · KSampler"), "the sampler named",
                           timeout=60)
