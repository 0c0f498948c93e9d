"""Stable Diffusion backends: the web UI API (`a1111`) and ComfyUI."""

from avatargen.sd.a1111 import SdClient, SdError, SdNotReady, SdProgress, Txt2ImgResult

__all__ = ["SdClient", "SdError", "SdNotReady", "SdProgress", "Txt2ImgResult"]
