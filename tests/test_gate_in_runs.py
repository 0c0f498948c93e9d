"""The safety gate wired into runs: the real NudeNet model checks each image in the imaging process before
it is published; held images wait for the owner; a gate that cannot run holds images back and stops the run.

The fault cases break NudeNet itself, not our code: a copy of the installed package, first on the imaging
process's path, with a truncated model file, a detector that raises, or one that kills its process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nudenet
import pytest

from avatargen.api import ImageHeld, NewImage, decode_event
from avatargen.config import ReviewSettings
from avatargen.generator import AvatarGenerator
from avatargen.storage.files.bucket import open_buckets
from tests.support import fast_settings, running_generator, wait_until
from tests.test_generator_runs import run_to_end

GATE_ON = {"review__enabled": True}


def sidecars(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


async def run_and_watch(generator: AvatarGenerator) -> tuple[dict, list[str]]:
    """A run to its end, and the image events it sent ("image" for a published one, "held" for a held one)."""
    with generator.events.subscribe(generator.events.last_id) as subscription:
        run, _ = await run_to_end(generator)
        kinds = []
        while (event := await subscription.next(timeout=0.2)) is not None:
            if isinstance(decode_event(event.type, event.data), NewImage | ImageHeld):
                kinds.append(event.type)
    return run, kinds


async def test_images_that_pass_are_published_with_the_gates_verdict(tmp_path: Path) -> None:
    # The shipped classes (exposed nudity), at a score the simulator's drawings never reach: at the shipped
    # 0.4, a skin-coloured drawing now and then scores 0.5 as an exposed breast and is rightly held back.
    strict = {name: 0.95 for name in ReviewSettings().block}
    settings = fast_settings(tmp_path, **GATE_ON, review__block=strict)
    async with running_generator(settings) as (generator, _gpu):
        run, kinds = await run_and_watch(generator)
        assert run["outcome"] == "completed" and (run["done"], run["held"]) == (10, 0)
        assert kinds == ["image"] * 10
        unique = open_buckets(settings)["unique"]  # the folder behind the generator's bucket
        assert unique.index.count() == 4 and unique.held.count() == 0
        assert len(list((unique.directory / ".framed").iterdir())) == 4
        assert all(meta["review"] == {"held": False, "reasons": []} for meta in sidecars(unique.directory))


async def test_require_face_holds_back_the_simulators_faceless_drawings(tmp_path: Path) -> None:
    # A face must score 1.0 to count, which none does: every drawing is held, whatever the prompt drew.
    settings = fast_settings(tmp_path, **GATE_ON, review__require_face=True, review__face_score=1.0)
    async with running_generator(settings) as (generator, gpu):
        run, kinds = await run_and_watch(generator)
        assert run["outcome"] == "failed" and gpu.machine.state == "off"  # a problem, not a success
        assert run["error"].startswith("the safety gate held back 10 of the 10 images made")
        assert (run["done"], run["held"], run["failed"], run["total"]) == (0, 10, 0, 10)
        assert run["held_cost"] == run["cost"] > 0, "every image made was held: the whole cost is theirs"
        assert kinds == ["held"] * 10
        levels = generator.view().buckets
        assert (levels["unique"].count, levels["unique"].held, levels["fallback"].held) == (0, 4, 6)
        unique = open_buckets(settings)["unique"]  # the folder behind the generator's bucket
        assert unique.index.ids() == [] and unique.claims.claim() is None
        assert not any((unique.directory / ".framed").iterdir()), "a held image is never framed"
        reasons = [meta["review"]["reasons"] for meta in sidecars(unique.directory / ".review")]
        # Each is held for the missing face; a drawing may also score as a blocked class (listed first)
        assert len(reasons) == 4 and all(any(r["kind"] == "no_face" for r in reason) for reason in reasons)


async def test_a_run_mostly_held_back_pauses_automatic_runs_until_the_owner_acts(tmp_path: Path) -> None:
    """Every image held (no face): the automatic run at start-up pauses the next ones, as the status and the
    log say, until the owner deletes or approves a held image, or asks for a refill."""
    settings = fast_settings(tmp_path, **GATE_ON, review__require_face=True, review__face_score=1.0,
                             buckets__unique__min=2, generator__check_every="1h")
    async with running_generator(settings) as (generator, gpu):
        await wait_until(lambda: generator.last_run is not None)
        assert generator.last_run is not None and generator.last_run.trigger == "auto"
        assert generator.last_run.outcome == "failed" and generator.last_run.held == 4
        status = generator.status()
        assert status["paused_by"] == "safety_gate"
        assert "held back 4 of the 4 images" in status["paused_reason"]
        assert "automatic runs are paused until you approve or delete held images" in status["paused_reason"]
        assert generator.auto_check() is None and generator.run is None, "the unique bucket is below its min"
        billed = gpu.machine.billed_seconds
        # The owner deletes one held image: automatic runs resume (and hold back again: paused again).
        unique = generator.buckets["unique"]
        held = await unique.held(10)
        assert await unique.delete_held(held[0].id)
        assert generator.status()["paused_by"] is None
        assert generator.auto_check() is not None
        await generator.wait_idle()
        assert gpu.machine.billed_seconds > billed
        assert generator.status()["paused_by"] == "safety_gate"
        # A manual refill is the owner's word too: the pause is over while it runs (then it holds back again).
        generator.refill(["unique"])
        assert generator.status()["paused_by"] is None
        await generator.wait_idle()
        assert generator.status()["paused_by"] == "safety_gate"


# --- fault cases: a gate that cannot run ------------------------------------------------------------------


def broken_nudenet(root: Path, *, model: bytes | None = None, detect: str | None = None) -> Path:
    """A copy of the installed NudeNet in `root/site`, with `model` as its model file and `detect` as the body
    of its detector's `detect`; the folder to put first on the path."""
    real = Path(nudenet.__file__).parent
    fake = root / "site" / "nudenet"
    fake.mkdir(parents=True)
    for name in ("__init__.py", "nudenet.py"):
        shutil.copyfile(real / name, fake / name)
    if model is None:
        (fake / "320n.onnx").symlink_to(real / "320n.onnx")
    else:
        (fake / "320n.onnx").write_bytes(model)
    if detect is not None:
        with (fake / "nudenet.py").open("a") as module:
            module.write(f"\n\ndef _broken_detect(self, image):\n    {detect}\n\n\n"
                         "NudeDetector.detect = _broken_detect\n")
    return root / "site"


async def test_a_corrupt_model_file_fails_the_run_before_the_machine_boots(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    truncated = (Path(nudenet.__file__).parent / "320n.onnx").read_bytes()[:100_000]
    monkeypatch.syspath_prepend(str(broken_nudenet(tmp_path, model=truncated)))  # the imaging process's path too
    settings = fast_settings(tmp_path, **GATE_ON)
    async with running_generator(settings) as (generator, gpu):
        run, kinds = await run_and_watch(generator)
        assert run["outcome"] == "failed"
        assert run["error"].startswith("the safety gate cannot run, so the machine was not started: "
                                       "cannot load the detector model")
        assert gpu.machine.state == "off" and gpu.machine.billed_seconds == 0 and run["billed_seconds"] == 0
        assert kinds == [] and generator.buckets["unique"].count() == generator.buckets["unique"].held_count() == 0


async def test_the_extra_missing_fails_the_run_before_the_machine_boots(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    site = broken_nudenet(tmp_path)
    (site / "nudenet" / "__init__.py").write_text("raise ImportError('No module named nudenet')\n")
    monkeypatch.syspath_prepend(str(site))
    async with running_generator(fast_settings(tmp_path, **GATE_ON)) as (generator, gpu):
        run, _ = await run_and_watch(generator)
        assert run["outcome"] == "failed" and "pip install 'avatargen[review]'" in run["error"]
        assert gpu.machine.billed_seconds == 0


@pytest.mark.parametrize(("detect", "error"), [
    ("raise RuntimeError('onnxruntime: out of memory')", "onnxruntime: out of memory"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "the imaging process died while the safety gate"),
], ids=["raises", "kills its process"])
async def test_a_crashing_detector_holds_the_images_back_and_stops_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detect: str, error: str) -> None:
    monkeypatch.syspath_prepend(str(broken_nudenet(tmp_path, detect=detect)))
    settings = fast_settings(tmp_path, **GATE_ON, generator__concurrency=1)
    async with running_generator(settings) as (generator, gpu):
        run, kinds = await run_and_watch(generator)
        assert run["outcome"] == "failed" and gpu.machine.state == "off"
        assert run["error"].startswith("the safety gate failed (") and error in run["error"]
        assert "2 image(s) held back for review" in run["error"]
        assert (run["done"], run["held"]) == (0, 2) and kinds == ["held", "held"]
        unique = open_buckets(settings)["unique"]  # the folder behind the generator's bucket
        assert unique.index.count() == 0 and unique.held.count() == 2
        [reason] = sidecars(unique.directory / ".review")[0]["review"]["reasons"]
        assert reason["kind"] == "gate_failed" and error in reason["error"]
