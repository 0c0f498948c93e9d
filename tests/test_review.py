"""The safety gate on the real NudeNet model and real photographs (scikit-image ships them in its wheel).

No unsafe test images: a rule that blocks the face class proves the blocking path on a portrait.
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import nudenet
import nudenet.nudenet
import pytest
from PIL import Image
from skimage import data

from avatargen import review
from avatargen.config import ConfigError, ReviewSettings, load_settings
from avatargen.imaging import to_avatar_webp
from tests.support import write_config

ROOT = Path(__file__).resolve().parent.parent
FACE_RULES = ReviewSettings(enabled=True, require_face=True)


def stored_avatar(photo: str) -> bytes:
    """A scikit-image photograph as the generator stores it: square, 256 px, WebP quality 60."""
    return to_avatar_webp(Image.fromarray(getattr(data, photo)()), 256, 60)


@pytest.fixture(scope="module")
def portrait() -> bytes:
    return stored_avatar("astronaut")


@pytest.fixture(scope="module")
def cat() -> bytes:
    return stored_avatar("chelsea")


def test_class_names_are_the_installed_detectors() -> None:
    assert tuple(vars(nudenet.nudenet)["__labels"]) == review.CLASSES
    assert set(review.FACE_CLASSES) <= set(review.CLASSES)


def test_portrait_passes_require_face_and_the_shipped_rules(portrait: bytes) -> None:
    verdict = review.check(portrait, FACE_RULES)
    assert not verdict.held, verdict
    assert verdict.to_dict() == {"held": False, "reasons": []}


def test_cat_is_held_back_under_require_face(cat: bytes) -> None:
    assert not review.check(cat, ReviewSettings(enabled=True)).held  # nothing exposed in a cat
    verdict = review.check(cat, FACE_RULES)
    assert verdict.held
    [reason] = verdict.reasons
    assert reason.kind == "no_face" and reason.score < FACE_RULES.face_score
    assert str(reason).startswith("no face")


def test_a_rule_blocking_the_face_class_holds_the_portrait_back(portrait: bytes) -> None:
    rules = ReviewSettings(enabled=True, block={"FACE_FEMALE": 0.3, "FACE_MALE": 0.3})
    verdict = review.check(portrait, rules)
    assert verdict.held
    [reason] = verdict.reasons
    assert reason.kind == "blocked" and reason.label == "FACE_FEMALE" and reason.score >= 0.3
    assert verdict.to_dict()["reasons"][0]["text"] == f"FACE_FEMALE {reason.score:.2f}"
    # the same face under a score it does not reach passes
    assert not review.check(portrait, replace(rules, block={"FACE_FEMALE": 0.99})).held


def test_gate_runs_in_a_spawned_imaging_process(portrait: bytes, cat: bytes) -> None:
    """As the generator runs it: settings and verdicts cross the process boundary, the detector loads there."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        verdicts = list(pool.map(review.check, [portrait, cat], [FACE_RULES, FACE_RULES]))
    assert [verdict.held for verdict in verdicts] == [False, True]


def test_detector_is_loaded_once_and_reused(tmp_path: Path, portrait: bytes) -> None:
    model = tmp_path / "model.onnx"
    shutil.copyfile(review.shipped_model(), model)
    assert not review.check(portrait, FACE_RULES, model).held
    model.write_bytes(b"")  # the file is no longer read: the loaded detector answers
    assert not review.check(portrait, FACE_RULES, model).held


# --- fault cases: the gate fails closed ------------------------------------------------------------------


def test_corrupt_model_file_holds_every_image_back(tmp_path: Path, portrait: bytes) -> None:
    model = tmp_path / "truncated.onnx"
    model.write_bytes(review.shipped_model().read_bytes()[:100_000])
    verdict = review.check(portrait, FACE_RULES, model)
    assert verdict.held
    [reason] = verdict.reasons
    assert reason.kind == "gate_failed"
    assert str(reason).startswith(f"gate failed: cannot load the detector model {model}")


def test_missing_model_file_holds_back(tmp_path: Path, portrait: bytes) -> None:
    verdict = review.check(portrait, FACE_RULES, tmp_path / "absent.onnx")
    assert [reason.kind for reason in verdict.reasons] == ["gate_failed"]
    assert "absent.onnx" in verdict.reasons[0].error


def test_detector_raising_holds_back(monkeypatch: pytest.MonkeyPatch, portrait: bytes) -> None:
    def crash(self: object, image: object) -> list[dict[str, object]]:
        raise RuntimeError("onnxruntime: out of memory")

    monkeypatch.setattr(nudenet.NudeDetector, "detect", crash)
    verdict = review.check(portrait, ReviewSettings(enabled=True))
    assert verdict.held
    assert [str(reason) for reason in verdict.reasons] == ["gate failed: onnxruntime: out of memory"]


def test_undecodable_image_holds_back() -> None:
    verdict = review.check(b"RIFF\x00\x00\x00\x00WEBPVP8 garbage", FACE_RULES)
    assert [reason.kind for reason in verdict.reasons] == ["gate_failed"]
    assert "invalid or truncated WEBP image" in verdict.reasons[0].error


def test_extra_not_installed_says_how_to_install_and_holds_back(monkeypatch: pytest.MonkeyPatch,
                                                                   portrait: bytes) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if the extra were not installed
    message = review.missing_extra(FACE_RULES)
    assert message is not None and "pip install 'avatargen[review]'" in message
    assert review.missing_extra(ReviewSettings()) is None  # a gate that is off needs nothing
    verdict = review.check(portrait, FACE_RULES)
    assert verdict.held and "pip install 'avatargen[review]'" in verdict.reasons[0].error


def test_missing_extra_is_silent_when_installed() -> None:
    assert review.missing_extra(FACE_RULES) is None


# `avatargen ...` in a process of its own, as if the extra were not installed
WITHOUT_NUDENET = "import sys; sys.modules['nudenet'] = None; from server.cli import main; sys.exit(main(sys.argv[1:]))"


def gate_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"review.enabled": True, "review.require_face": True})


def test_check_config_says_how_to_install_the_extra(tmp_path: Path) -> None:
    command = [sys.executable, "-c", WITHOUT_NUDENET, "check-config", "--config", str(gate_config(tmp_path))]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("avatargen: warning: the safety gate ([review] enabled = true) needs NudeNet")
    assert "pip install 'avatargen[review]'" in result.stderr
    assert result.stdout.endswith(f"OK (provider simulated, data in {tmp_path / 'data'})\n")


def test_serve_says_at_start_up_how_to_install_the_extra(tmp_path: Path) -> None:
    command = [sys.executable, "-c", WITHOUT_NUDENET, "serve", "--config", str(gate_config(tmp_path))]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT) as server:
        assert server.stderr is not None
        try:
            lines = []
            for line in server.stderr:  # the warning comes before "listening on"
                lines.append(line)
                if "listening on" in line:
                    break
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    assert any("WARNING" in line and "pip install 'avatargen[review]'" in line for line in lines), lines


# --- the [review] table -------------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> ReviewSettings:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path).review


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_review_defaults_block_exposed_nudity_and_are_off(tmp_path: Path) -> None:
    rules = load(tmp_path, "")
    assert not rules.enabled and not rules.require_face
    assert set(rules.block) == {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                                "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"}


def test_shipped_config_documents_the_review_table() -> None:
    rules = load_settings(ROOT / "config.toml").review
    assert rules == ReviewSettings()
    text = (ROOT / "config.toml").read_text()
    for key in ("enabled", "require_face", "face_score"):
        line = next(line for line in text.splitlines() if line.startswith(f"{key} ="))
        assert "#" in line, f"{key} has no comment"


def test_review_table_replaces_the_block_rules(tmp_path: Path) -> None:
    rules = load(tmp_path, """
[review]
enabled = true
require_face = true
face_score = 0.6

[review.block]
FEMALE_BREAST_EXPOSED = 0.5
ANUS_EXPOSED = 1
""")
    assert rules == ReviewSettings(enabled=True, require_face=True, face_score=0.6,
                                   block={"FEMALE_BREAST_EXPOSED": 0.5, "ANUS_EXPOSED": 1.0})
    assert load(tmp_path, "[review]\nrequire_face = true\nblock = {}\n").block == {}


def test_unknown_class_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[review.block]\nFEMALE_BREAST_EXPOSD = 0.5\n")
    assert message == (f"{tmp_path / 'config.toml'}:2: review.block.FEMALE_BREAST_EXPOSD: unknown detector "
                       "class 'FEMALE_BREAST_EXPOSD'; did you mean 'FEMALE_BREAST_EXPOSED'?")


def test_block_score_must_be_a_number_from_0_to_1(tmp_path: Path) -> None:
    assert config_error(tmp_path, "[review.block]\nANUS_EXPOSED = 1.5\n").endswith(
        "review.block.ANUS_EXPOSED: must be at most 1, got 1.5")
    assert config_error(tmp_path, '[review.block]\nANUS_EXPOSED = "high"\n').endswith(
        "review.block.ANUS_EXPOSED: expected a number, got a string ('high')")
    assert config_error(tmp_path, '[review]\nblock = ["ANUS_EXPOSED"]\n').endswith(
        "review.block: expected a table of numbers, got a list (['ANUS_EXPOSED'])")


def test_enabled_gate_with_nothing_to_check_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[review]\nenabled = true\nblock = {}\n")
    assert ":2: review.enabled: the gate is enabled but blocks no class" in message
