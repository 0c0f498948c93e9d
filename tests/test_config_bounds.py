"""Config that is well-formed but out of bounds or hostile: a config error naming the key (exit 2 from the
command line, no traceback), never a 500 or a hang later. Durations, NUL characters, nesting, bucket folders
inside each other, and ComfyUI workflow files (too deep, not UTF-8, too big a graph)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from avatargen.config import Settings, load_settings
from avatargen.sd.workflow import BUILTIN_GRAPH, MAX_NODES
from tests.test_config import ROOT, error_for, write


def check_config(path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`avatargen check-config` as a real process."""
    return subprocess.run([sys.executable, "-m", "server.cli", "check-config", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=False, timeout=timeout)


def duration_keys(cls: type = Settings, prefix: str = "") -> list[str]:
    """Every setting that is a duration, as dotted keys."""
    keys = []
    for spec in fields(cls):
        hint, dotted = get_type_hints(cls)[spec.name], f"{prefix}{spec.name}"
        if isinstance(hint, type) and is_dataclass(hint):
            keys += duration_keys(hint, f"{dotted}.")
        elif spec.metadata.get("kind") == "duration":
            keys.append(dotted)
    return keys


# --- durations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e23", "31536001", '"366d"', '"8785h"'])
def test_every_duration_is_bounded(tmp_path: Path, value: str) -> None:
    keys = duration_keys()
    assert {"generator.check_every", "serving.unique_per_visitor", "storage.timeout"} <= set(keys)
    for dotted in keys:
        table, _, name = dotted.rpartition(".")
        error = error_for(tmp_path, f"[{table}]\n{name} = {value}\n")
        assert (error.key, error.line) == (dotted, 2) and "at most 365d" in error.message, dotted


def test_a_year_is_still_a_duration(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, '[serving]\nunique_per_visitor = "365d"\n')).serving.unique_per_visitor \
        == 365 * 86400


def test_a_huge_check_every_is_a_config_error_at_the_command_line(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, "[generator]\ncheck_every = 1e23\n"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ":2: generator.check_every: a duration can be at most 365d" in result.stderr


# --- NUL characters and nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    ('[server]\ndata_dir = "data\\u0000x"\n', "server.data_dir"),
    ('[gpu.paperspace]\napi_key_env = "KEY\\u0000"\n', "gpu.paperspace.api_key_env"),
    ('[prompts]\nartists = ["a", "b\\u0000"]\n', "prompts.artists"),
])
def test_a_nul_character_is_a_config_error(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:2: {key}: must not contain a NUL character" in result.stderr


@pytest.mark.parametrize("nested", [
    "host = " + "[" * 100_000 + "]" * 100_000,
    "host = " + "{a=" * 100_000 + "1" + "}" * 100_000,
    ".".join(["a"] * 100_000) + " = 1",  # the standard library's parser took minutes to place this error
], ids=["arrays", "inline tables", "dotted key"])
def test_a_deeply_nested_value_is_a_config_error(tmp_path: Path, nested: str) -> None:
    path = write(tmp_path, f"[server]\n{nested}\n")
    result = check_config(path, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:2: " in result.stderr and "nested" in result.stderr


# --- bucket folders ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("unique", "fallback", "key", "outer"), [
    ("data/unique", "data/unique/.review", "buckets.fallback.dir", "unique"),
    ("data/unique", "data/unique/.claimed", "buckets.fallback.dir", "unique"),
    ("data/unique", "data/unique/.tmp", "buckets.fallback.dir", "unique"),
    ("data/unique", "data/unique/.rejected", "buckets.fallback.dir", "unique"),
    ("data/unique", "data/unique/fallback", "buckets.fallback.dir", "unique"),
    ("data/fallback/.claimed", "data/fallback", "buckets.unique.dir", "fallback"),
    ("data/x/../fallback/.review", "data/fallback", "buckets.unique.dir", "fallback"),
])
def test_no_bucket_folder_inside_another(tmp_path: Path, unique: str, fallback: str, key: str, outer: str) -> None:
    error = error_for(tmp_path, f'[buckets.unique]\ndir = "{unique}"\n[buckets.fallback]\ndir = "{fallback}"\n')
    assert error.key == key and f"inside the {outer} bucket's folder" in error.message
    assert error.line == (2 if key == "buckets.unique.dir" else 4)


def test_buckets_side_by_side_and_sharing_a_folder(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[buckets.unique]\ndir = "u"\n[buckets.fallback]\ndir = "u-fallback"\n'))
    assert settings.buckets.fallback.dir == tmp_path / "u-fallback"
    error = error_for(tmp_path, '[buckets.unique]\ndir = "u"\n[buckets.fallback]\ndir = "./u/"\n')
    assert error.key == "buckets.fallback.dir" and "need different folders" in error.message


# --- ComfyUI workflow files ----------------------------------------------------------------------------------


def comfyui_config(tmp_path: Path, workflow: bytes) -> Path:
    (tmp_path / "wf.json").write_bytes(workflow)
    return write(tmp_path, '[sd]\nbackend = "comfyui"\n[sd.comfyui]\nworkflow = "wf.json"\n')


def chain_of_saves(length: int) -> dict[str, Any]:
    """The built-in graph, then `length` image nodes in a chain after its decoder, each saved: every node's
    depth below the sampler is asked."""
    nodes: dict[str, Any] = json.loads(json.dumps(BUILTIN_GRAPH))
    del nodes["9"]
    previous = "8"
    for n in range(length):
        node_id = f"i{n}"
        nodes[node_id] = {"class_type": "ImageInvert", "inputs": {"image": [previous, 0]}}
        nodes[f"s{n}"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": [node_id, 0]}}
        previous = node_id
    return nodes


@pytest.mark.parametrize(("workflow", "words"), [
    (b"[" * 100_000 + b"]" * 100_000, "wf.json is nested too deeply to be a workflow"),
    (json.dumps(BUILTIN_GRAPH).replace("avatargen", "avatargen\xe9").encode("latin-1"), "wf.json is not UTF-8"),
    (json.dumps(chain_of_saves(20_000)).encode(), f"40006 nodes: a workflow may have at most {MAX_NODES}"),
    (json.dumps({**BUILTIN_GRAPH, "9": {"class_type": "SaveImage", "inputs": {
        "images": ["8", 0], "filename_prefix": json.loads("[" * 500 + "]" * 500)}}}).encode(),
     "node 9 (SaveImage): input 'filename_prefix' is nested more than 32 levels deep"),
], ids=["nested", "latin-1", "20k saves", "nested input"])
def test_a_hostile_workflow_file_is_a_config_error(tmp_path: Path, workflow: bytes, words: str) -> None:
    result = check_config(comfyui_config(tmp_path, workflow), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sd.comfyui.workflow: " in result.stderr and words in result.stderr


def test_the_largest_workflow_is_analysed_in_linear_time(tmp_path: Path) -> None:
    length = (MAX_NODES - len(BUILTIN_GRAPH) + 1) // 2
    config = comfyui_config(tmp_path, json.dumps(chain_of_saves(length)).encode())
    started = time.monotonic()
    result = check_config(config, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"images from node s{length - 1} (SaveImage)" in result.stdout
    # A walk per saving node took 2.3 s at this size (and grows with the square of it); one walk takes 20 ms.
    # The bound is for a loaded machine, most of it the command's start-up.
    assert time.monotonic() - started < 30
