"""What the generator needs from a Stable Diffusion backend, whichever server runs on the machine.

A run probes the backend until it can generate (and holds the right checkpoint), asks it for images
of a prompt, follows its step progress for the owner's progress bar, and cancels what it still has
queued when the run ends early. The web UI API (`avatargen.sd.a1111`) and ComfyUI
(`avatargen.sd.comfyui`) both offer exactly that, and report every failure as an `SdError` worded
for the owner, so the generator never deals with one server's protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from avatargen.redact import redact_url

QUOTE = 300  # characters of an error text worth quoting

class SdError(Exception):
    """A failed backend request: HTTP status (None when there was no answer), message, whether to retry."""

    def __init__(self, status: int | None, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retryable = retryable


class SdNotReady(SdError):
    """The backend is not up yet (refused connection, routes not mounted, no model loaded): poll again."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(status, message, retryable=True)


def quote(text: str) -> str:
    """An error text from a server, on one line and short enough for a log line."""
    return " ".join(text.split())[:QUOTE]


async def send(http: httpx.AsyncClient, method: str, url: str, *, server: str, **options: Any) -> httpx.Response:
    """One request to a backend; no answer at all (timeout, refused, reset) is a retryable SdError that
    names `server` ("the SD web UI at http://...", its URL without credentials)."""
    try:
        return await http.request(method, url, **options)
    except httpx.TimeoutException as exc:
        raise SdError(None, f"{server} did not answer in time ({type(exc).__name__})", retryable=True) from exc
    except httpx.TransportError as exc:
        detail = redact_url(f"{type(exc).__name__} {exc}".rstrip())  # an exception's text may hold a URL
        raise SdError(None, f"cannot reach {server}: {detail}", retryable=True) from exc


@dataclass(frozen=True)
class SdProgress:
    """Progress 0..1 of the job computing now (0 and job_count 0 when idle), its sampling step, the
    live preview of the image being sampled (an image file, when asked for and the backend has one), and
    the node running now (its class_type, "KSampler", "VAEDecode"; None where the backend has no nodes)."""

    progress: float
    eta_relative: float
    sampling_step: int
    sampling_steps: int
    job_count: int
    preview: bytes | None = None
    node: str | None = None


@dataclass(frozen=True)
class Generated:
    """The images of one request (PNG, JPEG or WebP; base64 text or raw bytes), the seed of each (-1
    where the backend did not say), and what the backend adds to each image's metadata (its name, the
    model, the workflow)."""

    images: Sequence[str | bytes]
    seeds: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)


class SdBackend(Protocol):
    """A Stable Diffusion server the generator can use (see each method's promise)."""

    name: str  # "a1111" | "comfyui": what image metadata calls the backend

    async def probe(self, checkpoint: str) -> None:
        """Return when the backend can generate; SdNotReady while it boots (poll again), SdError otherwise.

        With `checkpoint` set, it must be on the server: a run never pays for avatars of a stranger.
        """
        ...

    async def generate(self, prompt: str, *, count: int, seed: int = -1) -> Generated:
        """`count` images of `prompt` with the `[sd]` settings, in one job; -1 picks a random seed."""
        ...

    async def progress(self, *, preview: bool = False) -> SdProgress:
        """The step progress of the job computing now, for the live progress bar; with `preview`, also the
        live preview of our job computing now (None when there is none yet)."""
        ...

    async def cancel(self) -> None:
        """Stop the work the backend still does for us (the job computing and the ones queued)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
