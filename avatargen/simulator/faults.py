"""Failures the simulated GPU can be told to produce, so the demo and the tests can show how avatargen
copes with the ways a rented machine, the Stable Diffusion web UI and ComfyUI really go wrong.

Faults are switched on with `[gpu.simulated] faults = [...]` at start, or at runtime through
`PUT /_sim/faults {"faults": [...]}` on either simulated service (both share one set) or
`SimulatedGpu.set_faults()`. Switching the set resets every fault's counter.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Iterable

FAULTS: dict[str, str] = {
    "api_429": "Every third request to the machine's cloud API (the first included) answers 429 (too many "
    "requests) with `Retry-After: 1`.",
    "api_500": "Every third request to the machine's cloud API (the first included) answers 500 (internal "
    "server error).",
    "start_error": "A start fails: on Paperspace it is accepted, then its event ends in \"error\" (no capacity "
    "for the machine type) and the machine drops back to off; on RunPod it is refused at once (400: not enough "
    "free GPUs on the pod's host).",
    "never_ready": "A started machine stays in \"starting\" for ever (until it is stopped).",
    "stop_500": "Stop requests fail with 500 three times in a row; the fourth is accepted (and so on).",
    "zero_gpu": "The machine starts without its GPU, as a stopped RunPod pod resumes when someone else rented "
    "its host's GPU meanwhile (the pod object says 0 GPUs; Paperspace never does this).",
    "external_terminate": "Someone terminates the RunPod pod from the console right after the first txt2img "
    "answer of each boot: it is TERMINATED for good and the web UI goes away with it (RunPod only).",
    "sd_500": "Every txt2img fails with 500 OutOfMemoryError (CUDA out of memory), in the web UI's error "
    "shape, once it gets its turn; on ComfyUI every job ends in an execution_error of the sampler "
    "(torch.OutOfMemoryError).",
    "sd_garbage": "Every txt2img answers a body that is not JSON: alternately a proxy's 502 HTML page and a "
    "200 answer cut off mid-JSON; on ComfyUI, so does the history of every finished job.",
    "sd_invalid_image": "Every txt2img answers 200 with images that are not images: alternately base64 of "
    "other bytes and text that is not base64 at all; on ComfyUI, /view answers other bytes and an HTML page.",
    "sd_slow_first": "The first txt2img (ComfyUI job) after each boot of the web UI (ComfyUI) takes five times as "
    "long (the checkpoint is still loading).",
    "external_stop": "Someone stops the machine from the provider's console right after the first txt2img "
    "answer (ComfyUI job) of each boot: it goes stopping -> off and the SD server goes away with it.",
    "comfyui_validation": "Every ComfyUI /prompt is refused with 400 and node_errors: the sampler's "
    "sampler_name is not in the list (a ComfyUI version without that sampler).",
    "serverless_timeout": "Every serverless job runs past the endpoint's execution timeout: it ends TIMED_OUT "
    "after running a while, without output (RunPod Serverless only).",
    "comfyui_socket_drop": "ComfyUI closes the WebSocket of each job's client halfway through sampling and refuses "
    "that client's new sockets until the job is over, so the client must poll /history.",
}


ONLY_ON = {"zero_gpu": "runpod", "external_terminate": "runpod",  # faults one provider's machines alone have
           "serverless_timeout": "runpod_serverless"}
# What can happen on a serverless endpoint: its API's faults, a worker that never comes (never_ready), and the
# worker's ComfyUI failing a job (sd_500: out of memory; comfyui_validation: refused graph; sd_slow_first).
SERVERLESS = ("api_429", "api_500", "never_ready", "sd_500", "sd_slow_first", "comfyui_validation",
              "serverless_timeout")


def faults_for(api: str) -> list[str]:
    """The faults that happen to a machine behind this cloud API ("paperspace" | "runpod" |
    "runpod_serverless")."""
    if api == "runpod_serverless":
        return list(SERVERLESS)
    return [name for name in FAULTS if ONLY_ON.get(name, api) == api]


class Faults:
    """The set of faults switched on, shared by both simulated services, changeable while they run."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._active: frozenset[str] = frozenset()
        self._hits: Counter[str] = Counter()
        self.set(names)

    def set(self, names: Iterable[str]) -> None:
        """Switch on exactly these faults; an unknown name is an error that lists the known ones."""
        if isinstance(names, str):
            raise ValueError(f"faults must be a list of names, got the string {names!r}")
        wanted = frozenset(names)
        problem = unknown_fault(wanted)
        if problem:
            raise ValueError(problem)
        self._active = wanted
        self._hits.clear()

    @property
    def names(self) -> list[str]:
        return sorted(self._active)

    def __contains__(self, name: object) -> bool:
        return name in self._active

    def hit(self, name: str) -> int | None:
        """Count one occasion for an active fault and return its number (1, 2, ...); None when it is off.

        Faults that strike "every third request" decide from this number, so they are deterministic.
        """
        if name not in self._active:
            return None
        self._hits[name] += 1
        return self._hits[name]

    def hits(self, name: str) -> int:
        """How many occasions an active fault has counted since the set last changed."""
        return self._hits[name]


def unknown_fault(names: Iterable[str]) -> str | None:
    """What is wrong with a list of fault names (the first unknown one, with the closest known name), or None."""
    for name in sorted(names):
        if name not in FAULTS:
            close = difflib.get_close_matches(name, FAULTS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known faults: {', '.join(FAULTS)}"
            return f"unknown simulator fault {name!r}; {hint}"
    return None


def faults_from_body(body: bytes) -> list[str]:
    """The fault names in a `PUT /_sim/faults` body, `{"faults": [name, ...]}`; ValueError says what is wrong."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    names = document.get("faults") if isinstance(document, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError('send a JSON body {"faults": [name, ...]} with a list of fault names')
    return names
