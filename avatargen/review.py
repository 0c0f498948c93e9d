"""The safety gate: an offline detector looks at every avatar before it is published.

The detector is NudeNet (the optional extra `avatargen[review]`): a small ONNX model shipped inside its
wheel, run on the CPU by onnxruntime. It reports body parts, exposed or covered, and faces, each with a
score. The owner's `[review]` rules turn those into a verdict: an image passes, or it is held back for
the owner to look at. The gate fails closed: a detector that is missing, corrupt or raising holds the
image back with the reason, never lets it through.

`check` runs in the imaging process (off the visitors' event loop), on the stored avatar's bytes: the
pixels a visitor would get. The detector is loaded once per process, on first use, and reused.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from avatargen.imaging import decode_image

if TYPE_CHECKING:
    from nudenet import NudeDetector

    from avatargen.config import ReviewSettings

# The classes NudeNet 3.4 reports, in its own order (tests check this against the installed package).
CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
FACE_CLASSES = ("FACE_FEMALE", "FACE_MALE")
INSTALL = "pip install 'avatargen[review]'"
# The model's input edge: NudeNet's shipped model was trained at 320 px.
_RESOLUTION = 320


@dataclass(frozen=True)
class Reason:
    """Why an image is held back: a blocked class found, no face found, or a gate that could not run."""

    kind: Literal["blocked", "no_face", "gate_failed"]
    label: str = ""  # blocked: the class found; no_face: the likeliest face seen, if any
    score: float = 0.0  # the detector's score for `label`
    error: str = ""  # gate_failed: what went wrong

    def __str__(self) -> str:
        if self.kind == "blocked":
            return f"{self.label} {self.score:.2f}"
        if self.kind == "no_face":
            return f"no face (best: {self.label} {self.score:.2f})" if self.label else "no face"
        return f"gate failed: {self.error}"


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one image: it passes when there is no reason to hold it back."""

    reasons: tuple[Reason, ...] = ()

    @property
    def held(self) -> bool:
        return bool(self.reasons)

    @property
    def gate_failed(self) -> str | None:
        """What stopped the gate from judging the image, if anything did."""
        return next((reason.error for reason in self.reasons if reason.kind == "gate_failed"), None)

    def __str__(self) -> str:
        return "; ".join(map(str, self.reasons)) or "passed"

    def to_dict(self) -> dict[str, Any]:
        """For an image's sidecar and the admin API: `held`, and each reason with its text."""
        return {"held": self.held, "reasons": [{**asdict(reason), "text": str(reason)} for reason in self.reasons]}


class GateUnavailable(RuntimeError):
    """The detector cannot be loaded (extra not installed, model file missing or corrupt)."""


def failed(error: str) -> Verdict:
    """The verdict when the gate could not judge an image: held back, with what went wrong."""
    return Verdict((Reason("gate_failed", error=error),))


def missing_extra(rules: ReviewSettings) -> str | None:
    """What to tell the owner when the gate is on but NudeNet is not installed (None when all is well):
    `check-config` and start-up print it, and until it is installed every new image is held back."""
    if not rules.enabled or importlib.util.find_spec("nudenet") is not None:
        return None
    return (f"the safety gate ([review] enabled = true) needs NudeNet, which is not installed: {INSTALL}; "
            "until then every new image is held back")


def shipped_model() -> Path:
    """The ONNX model inside NudeNet's wheel."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or spec.origin is None:
        raise GateUnavailable(f"NudeNet is not installed: {INSTALL}")
    return Path(spec.origin).parent / "320n.onnx"


@functools.cache
def _detector(model: Path) -> NudeDetector:
    """NudeNet's detector for a model file, loaded once per process (a failed load is retried next time).

    Built with our own onnxruntime session: one intra-op thread, so the gate takes one core of the
    imaging process rather than spinning every core against the visitors' event loop (NudeDetector
    offers no way to pass session options)."""
    try:
        import onnxruntime
        from nudenet import NudeDetector
    except ImportError as exc:
        raise GateUnavailable(f"NudeNet is not installed ({exc}): {INSTALL}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for missing and corrupt files
        raise GateUnavailable(f"cannot load the detector model {model}: {exc}") from None
    detector = NudeDetector.__new__(NudeDetector)
    detector.onnx_session = session
    detector.input_name = session.get_inputs()[0].name
    detector.input_width = detector.input_height = _RESOLUTION
    return detector


def problem(model: Path | None = None) -> str | None:
    """Why the detector cannot be loaded in this process, or None once it is (loaded for the checks to come).

    The generator asks the imaging process this before a run boots its machine: a gate that cannot run
    would hold back every image the owner pays for."""
    try:
        _detector(model or shipped_model())
    except GateUnavailable as exc:
        return str(exc)
    return None


def detect(avatar: bytes, model: Path | None = None) -> list[tuple[str, float]]:
    """Every (class, score) the detector reports for an image (PNG, JPEG or WebP bytes)."""
    import numpy as np  # comes with the extra, like the detector

    detector = _detector(model or shipped_model())
    # RGBA: NudeNet converts RGBA to BGR, then swaps to RGB for its model (what it was trained on).
    pixels = np.asarray(decode_image(avatar).convert("RGBA"))
    return [(found["class"], float(found["score"])) for found in detector.detect(pixels)]


def judge(found: list[tuple[str, float]], rules: ReviewSettings) -> Verdict:
    """The verdict of the owner's rules on what the detector reported."""
    reasons = [Reason("blocked", label, score) for label, score in found
               if label in rules.block and score >= rules.block[label]]
    if rules.require_face:
        faces = [(score, label) for label, score in found if label in FACE_CLASSES]
        best_score, best_label = max(faces, default=(0.0, ""))
        if best_score < rules.face_score:
            reasons.append(Reason("no_face", best_label, best_score))
    return Verdict(tuple(reasons))


def check(avatar: bytes, rules: ReviewSettings, model: Path | None = None) -> Verdict:
    """The gate for one image, as the imaging process runs it before publishing (when `rules.enabled`:
    that switch is the caller's). Never raises: anything that stops the detector from giving an answer
    holds the image back, with what went wrong."""
    try:
        return judge(detect(avatar, model), rules)
    except Exception as exc:
        return failed(str(exc) or type(exc).__name__)
