"""`sd.checkpoint` resolved against model lists as real web UIs give them (AUTOMATIC1111 and Forge with
folders and hashes not yet computed, SD.Next without extensions in its titles)."""

from __future__ import annotations

import pytest

from avatargen.sd.checkpoints import CheckpointMismatch, resolve_checkpoint

FORGE = [  # Forge Classic on this machine: a model in a folder is listed without a hash until it is loaded
    {"title": "random-sd15.safetensors [e1f3ed0868]", "model_name": "random-sd15", "hash": "e1f3ed0868",
     "sha256": "e1f3ed0868433c6ace2337941b9467b291daaa8ea21fb56c85bbf02e6a28d91b",
     "filename": "/srv/forge/models/Stable-diffusion/random-sd15.safetensors", "config": None},
    {"title": "faces/cjs-v1.5.safetensors", "model_name": "faces_cjs-v1.5", "hash": None, "sha256": None,
     "filename": "/srv/forge/models/Stable-diffusion/faces/cjs-v1.5.safetensors", "config": None},
]
SDNEXT = [  # SD.Next titles a model by its path without extension
    {"title": "portraits/cjs [9c03252bea]", "model_name": "cjs", "hash": "9c03252bea",
     "sha256": "9c03252bea886e921a10f6b5f61b2d60565c32d02bbbb40cb59944c0218c5e90",
     "filename": "/sdnext/models/Stable-diffusion/portraits/cjs.safetensors", "type": "safetensors"},
]


@pytest.mark.parametrize(("wanted", "title"), [
    ("random-sd15.safetensors [e1f3ed0868]", "random-sd15.safetensors [e1f3ed0868]"),
    ("random-sd15.safetensors", "random-sd15.safetensors [e1f3ed0868]"),
    ("random-sd15", "random-sd15.safetensors [e1f3ed0868]"),
    ("e1f3ed0868", "random-sd15.safetensors [e1f3ed0868]"),
    ("E1F3ED08", "random-sd15.safetensors [e1f3ed0868]"),  # the old 8-digit hash, in either case
    ("e1f3ed0868433c6ace2337941b9467b291daaa8ea21fb56c85bbf02e6a28d91b", "random-sd15.safetensors [e1f3ed0868]"),
    ("random-sd15 [e1f3ed0868]", "random-sd15.safetensors [e1f3ed0868]"),
    ("faces/cjs-v1.5.safetensors", "faces/cjs-v1.5.safetensors"),
    ("cjs-v1.5.safetensors", "faces/cjs-v1.5.safetensors"),  # without its folder
    ("cjs-v1.5", "faces/cjs-v1.5.safetensors"),  # ".5" is part of the name, not an extension
    ("faces/cjs-v1.5", "faces/cjs-v1.5.safetensors"),
    ("faces_cjs-v1.5", "faces/cjs-v1.5.safetensors"),  # model_name
])
def test_forge_models_by_every_name_the_web_ui_knows(wanted: str, title: str) -> None:
    assert resolve_checkpoint(wanted, FORGE) == title


@pytest.mark.parametrize("wanted", ["portraits/cjs [9c03252bea]", "portraits/cjs", "cjs", "cjs.safetensors",
                                    "9c03252bea", "portraits/cjs.safetensors"])
def test_sd_next_titles_without_extensions(wanted: str) -> None:
    assert resolve_checkpoint(wanted, SDNEXT) == "portraits/cjs [9c03252bea]"


@pytest.mark.parametrize("wanted", ["e1f3", "random", "random-sd15.ckpt", "cjs-v1", "RANDOM-SD15"])
def test_near_misses_match_nothing_and_say_what_would(wanted: str) -> None:
    with pytest.raises(CheckpointMismatch) as failure:
        resolve_checkpoint(wanted, FORGE)
    message = str(failure.value)
    assert f"sd.checkpoint {wanted!r} is not on the SD web UI" in message
    assert "'random-sd15.safetensors [e1f3ed0868]' or 'random-sd15'" in message
    assert "'faces/cjs-v1.5.safetensors'" in message


def test_one_file_in_two_folders_is_refused_by_its_hash_naming_both() -> None:
    twins = [dict(FORGE[0], title=f"{folder}random-sd15.safetensors [e1f3ed0868]",
                  filename=f"/m/{folder}random-sd15.safetensors") for folder in ("", "old/")]
    with pytest.raises(CheckpointMismatch, match=r"names 2 models .*'random-sd15.safetensors \[e1f3ed0868\]', "
                                                 r"'old/random-sd15.safetensors \[e1f3ed0868\]'"):
        resolve_checkpoint("e1f3ed0868", twins)
    assert resolve_checkpoint("old/random-sd15.safetensors", twins) == "old/random-sd15.safetensors [e1f3ed0868]"


def test_an_empty_model_list_says_so() -> None:
    with pytest.raises(CheckpointMismatch, match="it has: no models"):
        resolve_checkpoint("cjs", [])
