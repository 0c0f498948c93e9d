"""`sd.checkpoint` matched against the web UI's model list the way the web UI itself matches it.

Owners write a model the way they see it: the file name (`face.safetensors`), the name without its
extension (`face`), the title the web UI shows (`face.safetensors [7bc455ae4a]`), or a hash. The web
UI (AUTOMATIC1111's `CheckpointInfo.ids`, kept by Forge, reForge and SD.Next) knows a model by all of
those, but when a request's `sd_model_checkpoint` is none of them it quietly loads its default model:
the owner would pay for avatars of a stranger. So a run resolves the configured name to exactly one
model before the first image and sends that model's title, which every web UI knows; a name that
matches nothing, or more than one model, fails the run with what would match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]+\]$")
_MIN_HASH_PREFIX = 8  # the web UI's old short hash is 8 hex digits, its newer one 10; shorter is a guess
_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")  # "cjs-v1.5" keeps its ".5"


class CheckpointMismatch(ValueError):
    """`sd.checkpoint` names no model on the server, or several: the message says which would match."""


@dataclass(frozen=True)
class Checkpoint:
    """One model of `/sdapi/v1/sd-models` with every name the web UI answers to."""

    title: str
    aliases: frozenset[str]
    hashes: tuple[str, ...]  # lower-case hex: the short hash and the sha256, as the server gives them

    @classmethod
    def of(cls, model: dict[str, Any]) -> Checkpoint:
        title = str(model.get("title") or model.get("model_name") or "")
        name = _HASH_SUFFIX.sub("", title)  # the path under the models folder, e.g. "faces/cjs.safetensors"
        filename = str(model.get("filename") or name)
        base = PureWindowsPath(filename).name if "\\" in filename else PurePosixPath(filename).name
        names = {title, name, _stem(name), base, _stem(base), str(model.get("model_name") or "")}
        if _stem(name) == name:  # SD.Next's title has no extension: the path with the file's own one
            names.add(name + PurePosixPath(base).suffix)
        hashes = tuple(str(model[key]).lower() for key in ("hash", "sha256") if model.get(key))
        names |= {f"{alias} [{digest}]" for alias in (name, _stem(base)) for digest in hashes}
        return cls(title=title, aliases=frozenset(alias for alias in names if alias), hashes=hashes)

    def answers_to(self, wanted: str) -> bool:
        """Whether the owner's `wanted` names this model: any alias, or a hash or a long enough prefix of one."""
        if wanted in self.aliases:
            return True
        digest = wanted.lower()
        return len(digest) >= _MIN_HASH_PREFIX and any(full.startswith(digest) for full in self.hashes)

    def ways_to_write(self) -> list[str]:
        """How the owner may write this model in `sd.checkpoint`, shortest first (for messages)."""
        ways = sorted(self.aliases - {self.title}, key=lambda alias: (len(alias), alias))
        return [self.title, *ways[:3]]


def _stem(name: str) -> str:
    """The name without its model file extension ("face.safetensors" -> "face"); a name without one stays
    (SD.Next titles carry none)."""
    suffix = PurePosixPath(name).suffix
    return name[: -len(suffix)] if suffix.lower() in _MODEL_EXTENSIONS else name


def resolve_checkpoint(wanted: str, models: Iterable[dict[str, Any]], *, server: str = "the SD web UI") -> str:
    """The title of the one model `wanted` names; CheckpointMismatch (with what would match) otherwise."""
    checkpoints = [Checkpoint.of(model) for model in models]
    matches = [checkpoint for checkpoint in checkpoints if checkpoint.answers_to(wanted.strip())]
    if len(matches) == 1:
        return matches[0].title
    if matches:
        titles = ", ".join(repr(checkpoint.title) for checkpoint in matches)
        raise CheckpointMismatch(f"sd.checkpoint {wanted!r} names {len(matches)} models on {server} ({titles}): "
                                 "write the title of the one you trained")
    listed = "; ".join(" or ".join(repr(way) for way in checkpoint.ways_to_write()) for checkpoint in checkpoints)
    raise CheckpointMismatch(f"sd.checkpoint {wanted!r} is not on {server} (it has: {listed or 'no models'}); "
                             "the web UI would silently use another model")
