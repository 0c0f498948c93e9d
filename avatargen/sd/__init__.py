"""Stable Diffusion backends: the web UI API (`a1111`: AUTOMATIC1111, Forge, reForge, SD.Next) and ComfyUI.

`make_backend` picks the one `sd.backend` names; the generator only sees `SdBackend`.
"""

from __future__ import annotations

from collections.abc import Callable

from avatargen.config import Settings
from avatargen.sd.a1111 import SdClient, Txt2ImgResult
from avatargen.sd.base import Generated, SdBackend, SdError, SdNotReady, SdProgress

__all__ = ["Generated", "SdBackend", "SdClient", "SdError", "SdNotReady", "SdProgress", "Txt2ImgResult",
           "make_backend"]


def make_backend(settings: Settings) -> Callable[[str], SdBackend]:
    """What makes the `sd.backend` client once the machine's SD address is known (when it is ready).

    ComfyUI's workflow is read and checked now, before a machine is started for it: a file broken since
    start-up is a ConfigError that costs nothing.
    """
    if settings.sd.backend == "comfyui":
        from avatargen.sd.comfyui import ComfyUiClient
        from avatargen.sd.workflow import load_workflow

        workflow = load_workflow(settings)
        return lambda url: ComfyUiClient(settings.sd, workflow, url=url)
    return lambda url: SdClient(settings.sd, url=url)
