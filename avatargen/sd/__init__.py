"""Stable Diffusion backends: the web UI API (`a1111`: AUTOMATIC1111, Forge, reForge, SD.Next) and ComfyUI.

`make_backend` picks the one `sd.backend` names; the generator only sees `SdBackend`.
"""

from __future__ import annotations

from avatargen.config import Settings
from avatargen.sd.a1111 import SdClient, Txt2ImgResult
from avatargen.sd.base import Generated, SdBackend, SdError, SdNotReady, SdProgress

__all__ = ["Generated", "SdBackend", "SdClient", "SdError", "SdNotReady", "SdProgress", "Txt2ImgResult",
           "make_backend"]


def make_backend(settings: Settings, url: str) -> SdBackend:
    """The client of `sd.backend` at `url` (the machine's SD address); ComfyUI's with the configured
    workflow, read now so a run uses the file as it is (a broken one is a ConfigError)."""
    if settings.sd.backend == "comfyui":
        from avatargen.sd.comfyui import ComfyUiClient
        from avatargen.sd.workflow import load_workflow

        return ComfyUiClient(settings.sd, load_workflow(settings), url=url)
    return SdClient(settings.sd, url=url)
