"""The simulated ComfyUI speaks ComfyUI's protocol: checked with plain HTTP and WebSocket clients, and with
ComfyUI's own example API client run unchanged as a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from avatargen.sd.workflow import BUILTIN_GRAPH
from avatargen.simulator import SimulatedGpu
from avatargen.simulator.comfyui_nodes import CHECKPOINTS
from tests.simhelpers import comfyui, sim_settings
from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent
# ComfyUI's script_examples/websockets_api_example.py (GPL-3.0): outside material, kept with the other
# references beside the checkout (../shared/reference/comfyui/), never copied into this repository.
EXAMPLE_NAME = "websockets_api_example.py"
# The one line its users are meant to edit: the address of their ComfyUI.
EXAMPLE_ADDRESS = 'server_address = "127.0.0.1:8188"'


def example_script() -> Path | None:
    if os.environ.get("COMFYUI_WEBSOCKET_EXAMPLE"):
        return Path(os.environ["COMFYUI_WEBSOCKET_EXAMPLE"])
    for folder in ROOT.parents:
        candidate = folder / "shared" / "reference" / "comfyui" / EXAMPLE_NAME
        if candidate.is_file():
            return candidate
    return None


def graph(text: str = "A painting of cjs", steps: int = 4) -> dict[str, Any]:
    nodes = json.loads(json.dumps(BUILTIN_GRAPH))
    nodes["4"]["inputs"]["ckpt_name"] = CHECKPOINTS[0]
    nodes["5"]["inputs"].update(width=64, height=64, batch_size=1)
    nodes["6"]["inputs"]["text"] = text
    nodes["3"]["inputs"]["steps"] = steps
    return nodes


async def test_comfyuis_own_example_client_runs_unchanged(tmp_path: Path) -> None:
    script = example_script()
    if script is None:
        pytest.skip(f"optional outside file: ComfyUI's script_examples/{EXAMPLE_NAME} (GPL-3.0, not in this "
                    "repository) is neither in shared/reference/comfyui/ above the checkout nor named by "
                    "$COMFYUI_WEBSOCKET_EXAMPLE")
    text = script.read_text()
    assert text.count(EXAMPLE_ADDRESS) == 1, f"{script} no longer sets {EXAMPLE_ADDRESS}"
    async with comfyui(sim_settings(step_time=0.001)) as (sim, url):
        # Only its server_address changes, as its users change it (the simulated ComfyUI listens on a free
        # port, not 8188); every other byte is ComfyUI's.
        copy = tmp_path / EXAMPLE_NAME
        copy.write_text(text.replace(EXAMPLE_ADDRESS, f'server_address = "{url.removeprefix("http://")}"'))
        # run it as it is in a process of its own, then look at what it got: its SaveImage node's images
        check = (f"import json, runpy; got = runpy.run_path({str(copy)!r})['images']; "
                 "print(json.dumps({node: [len(image) for image in images] for node, images in got.items()}))")
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", check, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    sizes = json.loads(out)
    assert list(sizes) == ["9"] and len(sizes["9"]) == 1 and sizes["9"][0] > 1000
    assert sim.completed == ["masterpiece best quality man"]


async def test_a_job_is_reported_on_the_socket_as_comfyui_reports_it() -> None:
    async with comfyui(sim_settings(step_time=0.001)) as (_, url), connect(
            url.replace("http", "ws") + "/ws?clientId=me") as websocket, httpx.AsyncClient(base_url=url) as http:
        hello = json.loads(await websocket.recv())
        assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
        answer = (await http.post("/prompt", json={"prompt": graph(), "client_id": "me"})).json()
        prompt_id = answer["prompt_id"]
        assert answer["node_errors"] == {} and isinstance(answer["number"], int)
        events: list[tuple[str, Any]] = []
        while not events or events[-1] != ("executing", None):
            message = await websocket.recv()
            if isinstance(message, bytes):
                event, image_format = struct.unpack(">II", message[:8])
                events.append(("preview", (event, image_format, message[8:11])))
                continue
            parsed = json.loads(message)
            data = parsed["data"]
            if parsed["type"] != "status":
                assert data.get("prompt_id") == prompt_id
            kind = parsed["type"]
            events.append((kind, data["value"] if kind == "progress" else data["nodes"] if kind == "progress_state"
                           else data.get("node")))
        history = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
        image = history["outputs"]["9"]["images"][0]
        view = await http.get("/view", params=image)
    kinds = [kind for kind, _ in events if kind not in ("status", "progress_state")]
    assert kinds[:2] == ["execution_start", "execution_cached"]
    # ComfyUI 0.12's per-node progress: the sampler's steps, and every node finished by the end
    states = [nodes for kind, nodes in events if kind == "progress_state"]
    sampling = [nodes["3"]["value"] for nodes in states if nodes.get("3", {}).get("state") == "running"]
    assert sampling[-4:] == [1, 2, 3, 4]
    assert {node: state["state"] for node, state in states[-1].items()} == dict.fromkeys(
        ["4", "6", "7", "5", "3", "8", "9"], "finished")
    assert states[-1]["3"]["max"] == 4 and states[-1]["3"]["prompt_id"] == prompt_id
    assert [node for kind, node in events if kind == "executing"] == ["4", "6", "7", "5", "3", "8", "9", None]
    assert [value for kind, value in events if kind == "progress"] == [1, 2, 3, 4]
    assert ("preview", (1, 1, b"\xff\xd8\xff")) in events  # a JPEG preview frame
    assert kinds[-3:] == ["executed", "execution_success", "executing"]
    assert image["type"] == "output" and image["subfolder"] == "" and image["filename"].startswith("avatargen_")
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert view.headers["content-type"] == "image/png"
    assert view.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(("change", "status", "error_type", "node_errors"), [
    (lambda nodes: nodes["4"]["inputs"].update(ckpt_name="stranger.safetensors"), 400,
     "prompt_outputs_failed_validation",
     {"4": ("CheckpointLoaderSimple", "value_not_in_list", "ckpt_name: 'stranger.safetensors' not in ")}),
    (lambda nodes: nodes["3"]["inputs"].pop("steps"), 400, "prompt_outputs_failed_validation",
     {"3": ("KSampler", "required_input_missing", "steps")}),
    (lambda nodes: nodes["5"]["inputs"].update(width=8), 400, "prompt_outputs_failed_validation",
     {"5": ("EmptyLatentImage", "value_smaller_than_min", "width")}),
    (lambda nodes: nodes["3"]["inputs"].update(positive=["4", 0]), 400, "prompt_outputs_failed_validation",
     {"3": ("KSampler", "return_type_mismatch", "positive, received_type(MODEL) mismatch input_type(CONDITIONING)")}),
    (lambda nodes: nodes["4"].update(class_type="CheckpointLoaderGGUF"), 400, "missing_node_type", {}),
    (lambda nodes: nodes.pop("9"), 400, "prompt_no_outputs", {}),
])
async def test_a_graph_that_does_not_validate_is_refused_as_comfyui_refuses_it(
        change: Any, status: int, error_type: str, node_errors: dict[str, tuple[str, str, str]]) -> None:
    nodes = graph()
    change(nodes)
    async with comfyui() as (sim, url), httpx.AsyncClient(base_url=url) as http:
        answer = await http.post("/prompt", json={"prompt": nodes, "client_id": "me"})
        assert sim.queue_length == 0
    body = answer.json()
    assert answer.status_code == status and body["error"]["type"] == error_type
    assert set(body["node_errors"]) == set(node_errors)
    for node, (class_type, kind, details) in node_errors.items():
        entry = body["node_errors"][node]
        assert entry["class_type"] == class_type and entry["dependent_outputs"] == ["9"]
        assert entry["errors"][0]["type"] == kind and details in entry["errors"][0]["details"]


async def test_queue_deletion_and_interrupt_stop_the_work() -> None:
    async with comfyui(sim_settings(step_time=0.05)) as (sim, url), httpx.AsyncClient(base_url=url) as http:
        ids = [(await http.post("/prompt", json={"prompt": graph(f"job {index}", steps=20)})).json()["prompt_id"]
               for index in range(3)]
        queue = (await http.get("/queue")).json()
        assert [item[1] for item in queue["queue_running"]] == ids[:1]
        assert [item[1] for item in queue["queue_pending"]] == ids[1:]
        assert (await http.post("/queue", json={"delete": ids[1:]})).status_code == 200
        assert (await http.post("/interrupt", json={"prompt_id": "not-running"})).status_code == 200
        assert sim.queue_length == 1  # only the running one is left, still running
        assert (await http.post("/interrupt")).status_code == 200
        await wait_until(lambda: sim.queue_length == 0, timeout=5)
        history = (await http.get("/history")).json()
    assert list(history) == ids[:1] and sim.completed == []
    event, data = history[ids[0]]["status"]["messages"][-1]
    assert event == "execution_interrupted" and data["node_id"] == "3" and data["node_type"] == "KSampler"


async def test_api_jobs_lists_queue_and_history_as_jobs_and_cancels_them_by_id() -> None:
    async with comfyui(sim_settings(step_time=0.05)) as (sim, url), httpx.AsyncClient(base_url=url) as http:
        done = (await http.post("/prompt", json={"prompt": graph("done", steps=2)})).json()["prompt_id"]
        await wait_until(lambda: sim.queue_length == 0, timeout=5)  # a second for the 20-step ones
        ids = [(await http.post("/prompt", json={"prompt": graph(f"job {index}", steps=20)})).json()["prompt_id"]
               for index in range(3)]
        listing = (await http.get("/api/jobs", params={"status": "pending,in_progress"})).json()
        assert [(job["id"], job["status"]) for job in listing["jobs"]] == [
            (ids[0], "in_progress"), (ids[1], "pending"), (ids[2], "pending")]
        assert listing["pagination"] == {"offset": 0, "limit": 3, "total": 3, "has_more": False}
        page = (await http.get("/api/jobs", params={"limit": "1", "offset": "3"})).json()
        assert [job["id"] for job in page["jobs"]] == [done] and page["pagination"]["has_more"] is False
        assert (await http.get("/api/jobs", params={"limit": "x"})).status_code == 400
        job = (await http.get(f"/api/jobs/{done}")).json()
        assert job["status"] == "completed" and job["outputs"]["9"]["images"] and job["execution_status"]["completed"]
        assert (await http.get("/api/jobs/unknown")).status_code == 404
        assert (await http.get("/jobs")).status_code == 404  # only under /api, as ComfyUI registers it

        # all or nothing: one unknown id and none is cancelled
        assert (await http.post("/api/jobs/cancel", json={"job_ids": [ids[2], "unknown"]})).status_code == 404
        assert (await http.post("/api/jobs/cancel", json={"job_ids": "x"})).status_code == 400
        assert (await http.post("/api/jobs/cancel", json={"job_ids": [ids[2]]})).json() == {"cancelled": [ids[2]]}
        for prompt_id in ("unknown", done, ids[1], ids[0]):  # 200 whether there is something to cancel or not
            assert (await http.post(f"/api/jobs/{prompt_id}/cancel")).status_code == 200
        await wait_until(lambda: sim.queue_length == 0, timeout=5)
        assert (await http.get(f"/api/jobs/{ids[0]}")).json()["status"] == "failed"  # interrupted
        assert (await http.get(f"/api/jobs/{ids[1]}")).status_code == 404  # dequeued before it ran
    async with comfyui(jobs_api=False) as (_, url), httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/api/jobs")).status_code == 404  # a ComfyUI from before /api/jobs
        assert (await http.get("/api/queue")).status_code == 200


async def test_server_facts_and_missing_things() -> None:
    async with comfyui(sim_settings(sd_boot_delay=5)) as (_, url), httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/system_stats")).status_code == 502  # still starting, behind its proxy
    async with comfyui() as (_, url), httpx.AsyncClient(base_url=url) as http:
        stats = (await http.get("/system_stats")).json()
        info = (await http.get("/object_info/CheckpointLoaderSimple")).json()
        assert (await http.get("/object_info/NoSuchNode")).json() == {}
        assert (await http.get("/view", params={"filename": "nothing.png"})).status_code == 404
        assert (await http.get("/history/unknown")).json() == {}
    assert stats["system"]["comfyui_version"] and stats["devices"][0]["type"] == "cuda"
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == list(CHECKPOINTS)
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]


async def test_the_simulated_gpu_serves_comfyui_while_its_machine_is_ready() -> None:
    async with SimulatedGpu(sim_settings(), backend="comfyui") as gpu, httpx.AsyncClient() as http:
        assert gpu.describe()["backend"] == "comfyui"
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{gpu.sd_url}/system_stats")
        gpu.machine.start()
        await gpu.machine.wait_for("ready")
        assert (await http.get(f"{gpu.sd_url}/system_stats")).status_code == 200
        assert (await http.get(f"{gpu.sd_url}/sdapi/v1/sd-models")).status_code == 404  # not the web UI
