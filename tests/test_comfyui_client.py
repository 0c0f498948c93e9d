"""The ComfyUI client against the simulated ComfyUI over real loopback HTTP and WebSocket, every fault
included, and against hand-made servers for what no fault produces (a socket that never reports)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from PIL import Image, ImageChops, ImageStat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from avatargen.config import ComfyUiSettings, SdSettings
from avatargen.journal import JobJournal
from avatargen.sd import SdError, SdNotReady
from avatargen.sd.comfyui import JOURNAL, ComfyUiClient
from avatargen.sd.workflow import BUILTIN_GRAPH, BUILTIN_NAME, find_workflow
from avatargen.simulator import Faults, LoopbackServer, SimulatedGpu
from avatargen.simulator.comfyui import SimulatedComfyUi
from avatargen.simulator.drawing import draw_avatar
from tests.simhelpers import comfyui, sd_settings, sim_settings, wait_sd_ready
from tests.support import serve_asgi, wait_until

LORA_UPSCALE = json.loads((Path(__file__).parent / "workflows" / "lora_upscale_api.json").read_text())


def settings(**changes: Any) -> SdSettings:
    return replace(sd_settings(), backend="comfyui", **changes)


def client(url: str, sd: SdSettings | None = None, nodes: dict[str, Any] | None = None,
           **options: Any) -> contextlib.aclosing[ComfyUiClient]:
    """A client of the built-in graph (or `nodes`), closed when the `async with` ends."""
    sd = sd or settings()
    workflow = find_workflow("owner_api" if nodes else BUILTIN_NAME, nodes or BUILTIN_GRAPH, sd.comfyui,
                             negative=bool(sd.negative_prompt), checkpoint=bool(sd.checkpoint))
    return contextlib.aclosing(ComfyUiClient(sd, workflow, url=url, poll_every=0.05, **options))


def pixels(data: str | bytes) -> tuple[tuple[int, int], bytes]:
    assert isinstance(data, bytes)  # ComfyUI's images come as the bytes /view sends
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size, image.convert("RGB").tobytes()


JOBS_API = pytest.mark.parametrize("jobs_api", [True, False], ids=["api-jobs", "before-api-jobs"])


@JOBS_API
async def test_images_are_drawn_from_the_prompt_seed_and_size_written_into_the_graph(jobs_api: bool) -> None:
    async with comfyui(jobs_api=jobs_api) as (sim, url), client(url, settings(negative_prompt="blurry")) as sd:
        await wait_sd_ready(sd)
        result = await sd.generate("A sketch of cjs, bokeh", count=2, seed=11)
    assert [pixels(image) for image in result.images] == [
        ((128, 96), draw_avatar("A sketch of cjs, bokeh", 11 + index, 128, 96).tobytes()) for index in range(2)]
    assert result.seeds == [11, 11]  # one seed makes a batch's noise on ComfyUI
    assert result.metadata == {"backend": "comfyui", "workflow": BUILTIN_NAME, "model": "cjs-dreambooth.safetensors",
                               "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    assert sim.completed == ["A sketch of cjs, bokeh"]
    # the job is followed through /api/jobs/{id} where ComfyUI has it, else through /history/{id}
    followed = {request.split("/")[-2] for request in sim.requests if request.startswith("GET") and
                request.count("/") >= 2 and request.split("/")[-2] in ("history", "jobs")}
    assert followed == ({"jobs"} if jobs_api else {"history"})


async def test_an_owner_graph_with_loras_and_an_upscaler_gets_the_settings_in_the_right_nodes() -> None:
    async with comfyui() as (_, url), client(url, settings(checkpoint="cjs-dreambooth.safetensors"),
                                                nodes=LORA_UPSCALE) as sd:
        await wait_sd_ready(sd, "cjs-dreambooth.safetensors")
        result = await sd.generate("A photograph of cjs", count=3, seed=5)
    # 128x96 sampled, 1.5x latent upscale for the second pass, then the 2x upscale model; the first pass's
    # preview node is not what is kept
    expected = draw_avatar("A photograph of cjs", 5, 192, 144).resize((384, 288), Image.Resampling.BICUBIC)
    assert len(result.images) == 3 and pixels(result.images[0]) == ((384, 288), expected.tobytes())
    assert result.metadata["workflow"] == "owner_api" and result.metadata["model"] == "cjs-dreambooth.safetensors"


async def test_probe_waits_for_comfyui_then_guards_the_checkpoint() -> None:
    async with comfyui(sim_settings(sd_boot_delay=5)) as (_, url), client(url) as sd:
        with pytest.raises(SdNotReady, match="ComfyUI is not ready: ComfyUI error 502"):
            await sd.probe("")
    async with comfyui() as (_, url):
        async with client(url) as sd:
            with pytest.raises(SdError) as info:
                await sd.probe("my-face.safetensors")
            assert not info.value.retryable and isinstance(info.value, SdError)
            assert "sd.checkpoint 'my-face.safetensors' is not on ComfyUI (available: " \
                   "'cjs-dreambooth.safetensors', 'v1-5-pruned-emaonly.ckpt')" in info.value.message
        async with client(url, settings(checkpoint="v1-5-pruned-emaonly.ckpt")) as sd:
            await sd.probe("v1-5-pruned-emaonly.ckpt")
            assert (await sd.generate("A painting of cjs", count=1)).metadata["model"] == "v1-5-pruned-emaonly.ckpt"


async def test_jobs_queue_at_once_and_the_gpu_takes_them_in_turn() -> None:
    async with comfyui(sim_settings(step_time=0.03)) as (sim, url), client(url) as sd:
        await wait_sd_ready(sd)
        jobs = [asyncio.create_task(sd.generate(f"A painting of cjs {index}", count=2)) for index in range(3)]
        await wait_until(lambda: sim.queue_length == 3)  # all three on ComfyUI's queue: no gap between jobs
        results = await asyncio.gather(*jobs)
        assert [len(result.images) for result in results] == [2, 2, 2]
        assert sim.completed == [f"A painting of cjs {index}" for index in range(3)]
        assert (await sd.progress()).job_count == 0


async def test_progress_and_previews_come_from_the_socket() -> None:
    async with comfyui(sim_settings(step_time=0.02)) as (_, url), client(url) as sd:
        await wait_sd_ready(sd)
        job = asyncio.create_task(sd.generate("A painting of cjs", count=1))
        await wait_until(lambda: sd.preview is not None)
        progress = await sd.progress()
        assert progress.sampling_steps == 20 and 1 <= progress.sampling_step <= 20 and progress.job_count == 1
        assert 0 < progress.progress <= 1 and sd.preview is not None and sd.preview.startswith(b"\xff\xd8\xff")
        await job


def _distance(frame: bytes, final: Image.Image) -> float:
    """Mean absolute difference per channel value (0..255) between a preview frame and the final image."""
    with Image.open(io.BytesIO(frame)) as image:
        assert image.format == "JPEG"
        preview = image.convert("RGB")
    return sum(ImageStat.Stat(ImageChops.difference(preview, final.resize(preview.size))).mean) / 3


async def test_the_preview_is_the_frame_of_our_job_computing_now() -> None:
    """What the generator's preview poller gets: frames of the job computing, coming out of the noise
    towards its final picture; none between jobs; never the last job's frame for the next."""
    async with comfyui(sim_settings(step_time=0.05)) as (_, url), client(url) as sd:
        await wait_sd_ready(sd)
        await sd.generate("A painting of cjs", count=1, seed=1)
        last_of_the_first = sd.preview
        assert last_of_the_first is not None
        assert (await sd.progress(preview=True)).preview is None  # no job of ours computing
        job = asyncio.create_task(sd.generate("A painting of cjs", count=1, seed=2))
        seen: list[bytes] = []
        while not job.done():
            progress = await sd.progress(preview=True)
            if progress.preview is not None and (not seen or seen[-1] != progress.preview):
                seen.append(progress.preview)
            await asyncio.sleep(0.01)  # a poller's pace; frames come a few a second
        (final,) = (await job).images
        assert isinstance(final, bytes)
        assert sd.preview is not None and (await sd.progress()).preview is None  # only when asked for
    assert last_of_the_first not in seen
    with Image.open(io.BytesIO(final)) as image:
        distances = [_distance(frame, image.convert("RGB")) for frame in seen]
    assert len(distances) >= 3
    assert distances[0] > 20 and distances[0] > 3 * distances[-1]  # from noise to (nearly: JPEG) the picture


OOM = ["ComfyUI failed job ", " in node 3 (KSampler): torch.OutOfMemoryError: Allocation on device 0 would exceed "
       "allowed memory. (out of memory)"]
NOT_AN_IMAGE = "ComfyUI sent something that is not an image for 'avatargen_0000"
REFUSED = ["ComfyUI refused the workflow: node 3 (KSampler) input 'sampler_name': Value not in list: sampler_name: "
           "'dpmpp_2m' not in (list of length 38)"]


@pytest.mark.parametrize(("fault", "failures"), [  # each fault alternates between its shapes: (words, status)
    ("sd_500", [(OOM, None), (OOM, None)]),
    ("sd_garbage", [(["ComfyUI error 502 <html><body><h1>502 Bad Gateway</h1>nginx</body></html>"], 502),
                    (["ComfyUI sent an unusable answer to /", "it is not", "JSON"], 200)]),
    ("sd_invalid_image", [([NOT_AN_IMAGE, "\\x00not an"], 200), ([NOT_AN_IMAGE, "<html><bo"], 200)]),
    ("comfyui_validation", [(REFUSED, 400), (REFUSED, 400)]),
])
@JOBS_API
async def test_failures_are_worded_for_the_owner(fault: str, failures: list[tuple[list[str], int | None]],
                                                 jobs_api: bool) -> None:
    async with comfyui(faults=[fault], jobs_api=jobs_api) as (_, url), client(url) as sd:
        await wait_sd_ready(sd)
        for words, status in failures:
            with pytest.raises(SdError) as info:
                await sd.generate("A painting of cjs", count=1)
            assert all(fragment in info.value.message for fragment in words), info.value.message
            assert info.value.status == status and info.value.retryable == (fault != "comfyui_validation")
        assert (await sd.progress()).job_count == 0  # nothing of ours left on ComfyUI


async def test_a_socket_dropped_mid_job_falls_back_to_polling_the_history() -> None:
    faults = Faults(["comfyui_socket_drop"])
    async with LoopbackServer(SimulatedComfyUi(sim_settings(step_time=0.01), faults).app) as server, client(
            server.url) as sd:
        await wait_sd_ready(sd)
        for index in range(2):  # the socket is refused until each job is over: only the history tells its end
            result = await sd.generate(f"A painting of cjs {index}", count=1)
            assert len(result.images) == 1
        assert faults.hits("comfyui_socket_drop") == 2


async def test_the_first_job_after_a_boot_is_slow_but_succeeds() -> None:
    async with comfyui(sim_settings(step_time=0.01), faults=["sd_slow_first"]) as (_, url), client(
            url, settings(steps=40)) as sd:
        await wait_sd_ready(sd)
        durations = []
        for _ in range(2):
            began = time.monotonic()
            await sd.generate("A painting of cjs", count=1)
            durations.append(time.monotonic() - began)
    assert durations[0] >= 40 * 0.01 * 5  # five times the sampling time, while the checkpoint loads
    assert durations[1] < durations[0] / 2


async def test_a_machine_stopped_from_outside_fails_the_next_job_clearly() -> None:
    async with SimulatedGpu(sim_settings(), backend="comfyui") as gpu:
        gpu.set_faults(["external_stop"])
        gpu.machine.start()
        await gpu.machine.wait_for("ready")
        async with client(gpu.sd_url) as sd:
            await wait_sd_ready(sd)
            assert len((await sd.generate("A painting of cjs", count=1)).images) == 1
            await gpu.machine.wait_for("off")
            with pytest.raises(SdError) as info:
                await sd.generate("A painting of cjs", count=1)
            assert info.value.message.startswith(f"cannot reach ComfyUI at {gpu.sd_url}: ConnectError")


@JOBS_API
async def test_cancel_deletes_our_queued_jobs_and_interrupts_the_running_one(jobs_api: bool) -> None:
    async with comfyui(sim_settings(step_time=0.05), jobs_api=jobs_api) as (sim, url), client(url) as sd:
        await wait_sd_ready(sd)
        jobs = [asyncio.create_task(sd.generate(f"A painting of cjs {index}", count=1)) for index in range(3)]
        await wait_until(lambda: sim.queue_length == 3)
        for job in jobs:  # what an abort does to the generator's requests
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await sd.cancel()
        await wait_until(lambda: sim.queue_length == 0, timeout=5)
        assert sim.completed == []
        async with httpx.AsyncClient() as http:
            history = (await http.get(f"{url}/history")).json()
        [status] = [entry["status"] for entry in history.values()]  # the two others never ran
        assert status["status_str"] == "error" and status["messages"][-1][0] == "execution_interrupted"
    cancels = [request for request in sim.requests if request.endswith("/cancel") or
               request in ("POST /queue", "POST /interrupt")]
    if jobs_api:  # one per job (the first is the probe's, of a made-up id): the server knows queued from running
        assert len(cancels) == 4 and all(request.startswith("POST /api/jobs/") for request in cancels), cancels
    else:
        assert cancels == ["POST /queue", "POST /interrupt"]


@pytest.mark.parametrize("pool", ["own", "borrowed"])
@pytest.mark.parametrize("proxy", ["basic", "bearer"])
async def test_the_reverse_proxy_credentials_go_with_every_request_and_the_socket(
        proxy: str, pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a pool of the client's own or a borrowed one (which keeps its owner's headers)."""
    monkeypatch.setenv("SD_API_PASSWORD", "s3cret")
    monkeypatch.setenv("COMFY_PROXY_TOKEN", "t0ken")
    right = settings(username="owner") if proxy == "basic" else settings(
        comfyui=ComfyUiSettings(token_env="COMFY_PROXY_TOKEN"))
    credentials: dict[str, Any] = {"auth": ("owner", "s3cret")} if proxy == "basic" else {"token": "t0ken"}
    async with comfyui(**credentials) as (_, url), httpx.AsyncClient() as borrowed:
        options: dict[str, Any] = {"http": borrowed} if pool == "borrowed" else {}
        async with client(url, right, **options) as sd:
            await wait_sd_ready(sd)
            await sd.generate("A painting of cjs", count=1)
            assert sd.preview is not None  # previews come only on the socket: it was let in
        wrong = replace(right, password_env="NO_SUCH_ENV") if proxy == "basic" else replace(
            right, comfyui=ComfyUiSettings(token_env="NO_SUCH_ENV"))
        async with client(url, wrong, **options) as sd:
            with pytest.raises(SdError) as info:
                await sd.probe("")
        hint = "check sd.username and the password in $NO_SUCH_ENV" if proxy == "basic" else \
            "check the token in $NO_SUCH_ENV"
        assert info.value.status == 401 and not info.value.retryable and hint in info.value.message


async def _silent_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


def _fixed(answer: Any) -> Any:
    async def route(request: Request) -> Response:
        return JSONResponse(answer(request) if callable(answer) else answer)
    return route


def _object_info(request: Request) -> dict[str, Any]:
    """ComfyUI's `/object_info/{class}`: `{}` for a class it does not have."""
    if request.path_params["node_class"] != "CheckpointLoaderSimple":
        return {}
    return {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["cjs.safetensors"], {}]}}}}


def _socket_only_comfyui(socket: Callable[[WebSocket], Awaitable[None]], queued: asyncio.Queue[str]) -> Starlette:
    """A ComfyUI whose jobs never end: it puts the prompt id of each job queued on `queued` and says about
    it only what `socket` sends."""

    async def prompt(request: Request) -> Response:
        chosen = (await request.json())["prompt_id"]
        queued.put_nowait(chosen)
        return JSONResponse({"prompt_id": chosen, "number": 0, "node_errors": {}})

    return Starlette(routes=[
        Route("/system_stats", _fixed({"system": {}, "devices": []})),
        Route("/object_info/{node_class}", _fixed(_object_info)),
        Route("/prompt", prompt, methods=["POST"]),
        Route("/history/{prompt_id}", _fixed({})),
        Route("/queue", _fixed({"queue_running": [], "queue_pending": []})),
        WebSocketRoute("/ws", socket),
    ])


@pytest.fixture
async def stuck_comfyui() -> AsyncIterator[str]:
    """A ComfyUI that takes a job and then says nothing: a silent socket, an empty history, an empty queue."""
    app = Starlette(routes=[
        Route("/system_stats", _fixed({"system": {}, "devices": []})),
        Route("/object_info/{node_class}", _fixed(_object_info)),
        Route("/prompt", _fixed({"prompt_id": "p-1", "number": 0, "node_errors": {}}), methods=["POST"]),
        Route("/history/{prompt_id}", _fixed({})),
        Route("/queue", _fixed({"queue_running": [], "queue_pending": []})),
        WebSocketRoute("/ws", _silent_socket),
    ])
    async with LoopbackServer(app) as server:
        yield server.url


async def test_a_socket_that_never_reports_ends_in_a_clear_error(stuck_comfyui: str) -> None:
    async with client(stuck_comfyui, silence_timeout=0.3) as sd:
        await sd.probe("")
        with pytest.raises(SdError) as info:
            await sd.generate("A painting of cjs", count=1)
    assert info.value.message == (
        "ComfyUI said nothing about job p-1 for 0 s and has no result for it (the socket never reported and the "
        "history stayed empty): it seems stuck")


async def test_a_loader_the_server_lacks_is_refused_before_any_job(stuck_comfyui: str) -> None:
    nodes = json.loads(json.dumps(BUILTIN_GRAPH))
    nodes["4"]["class_type"] = "CheckpointLoaderGGUF"  # a loader this server does not have
    async with client(stuck_comfyui, nodes=nodes) as sd:
        with pytest.raises(SdError, match="ComfyUI has no CheckpointLoaderGGUF node"):
            await sd.probe("")


async def test_https_and_wss_behind_a_tls_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    key, chain, ca = tmp_path / "key.pem", tmp_path / "chain.pem", tmp_path / "ca.pem"
    certificate.private_key_pem.write_to_path(str(key))
    certificate.private_key_and_cert_chain_pem.write_to_path(str(chain))
    authority.cert_pem.write_to_path(str(ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the client trusts what the machine trusts, nothing more
    sim = SimulatedComfyUi(sim_settings(sd_boot_delay=0), Faults())
    async with serve_asgi(sim.app, ssl_certfile=str(chain), ssl_keyfile=str(key)) as url, client(
            url.replace("http://", "https://")) as sd:
        await wait_sd_ready(sd)
        assert len((await sd.generate("A painting of cjs", count=1)).images) == 1
        assert sd.preview is not None  # the socket went over wss://
    sim.power_off()


class ForkComfyUi:
    """The shapes of a ComfyUI fork (hiddenswitch's pip-installable one): `/queue` lists jobs as objects
    with a "prompt_id", and the history keeps only the names of status events (their data is on the socket)."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self.sockets: dict[str, WebSocket] = {}
        self.failing = False
        self.app = Starlette(routes=[
            Route("/system_stats", _fixed({"system": {}, "devices": []})),
            Route("/object_info/{node_class}", _fixed(_object_info)),
            Route("/prompt", self.prompt, methods=["POST"]),
            Route("/queue", self.queue, methods=["GET", "POST"]),
            Route("/interrupt", self.interrupt, methods=["POST"]),
            Route("/history/{prompt_id}", self.history),
            WebSocketRoute("/ws", self.socket),
        ])

    async def prompt(self, request: Request) -> Response:
        body = await request.json()
        self.queued.append(body["prompt_id"])
        if self.failing:
            data = {"prompt_id": body["prompt_id"], "node_id": "3", "node_type": "KSampler",
                    "exception_type": "torch.OutOfMemoryError", "exception_message": "Allocation on device"}
            await self.sockets[body["client_id"]].send_json({"type": "execution_error", "data": data})
        return JSONResponse({"prompt_id": body["prompt_id"], "number": len(self.queued), "node_errors": {}})

    async def queue(self, request: Request) -> Response:
        if request.method == "POST":
            self.deleted += (await request.json())["delete"]
            return Response()
        jobs = [{"priority": number, "prompt_id": prompt_id} for number, prompt_id in enumerate(self.queued)]
        return JSONResponse({"queue_running": jobs[:1], "queue_pending": jobs[1:]})

    async def interrupt(self, request: Request) -> Response:
        self.interrupted.append((await request.json())["prompt_id"])
        return Response()

    async def history(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        if not self.failing:
            return JSONResponse({})
        status = {"status_str": "error", "completed": False, "messages": ["execution_start", "execution_error"]}
        return JSONResponse({prompt_id: {"prompt": {}, "outputs": {}, "status": status, "meta": {}}})

    async def socket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.sockets[websocket.query_params["clientId"]] = websocket
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()


async def test_a_forks_queue_and_history_shapes_are_understood() -> None:
    fork = ForkComfyUi()
    async with LoopbackServer(fork.app) as server, client(server.url) as sd:
        await sd.probe("")
        jobs = [asyncio.create_task(sd.generate(f"A painting of cjs {index}", count=1)) for index in range(2)]
        await wait_until(lambda: len(fork.queued) == 2)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await sd.cancel()
        assert (fork.interrupted, fork.deleted) == (fork.queued[:1], fork.queued[1:])
        assert (await sd.progress()).job_count == 0

        fork.failing = True  # the error's words come from the socket: the history has only its name
        await wait_until(lambda: len(fork.sockets) == 1)
        with pytest.raises(SdError) as info:
            await sd.generate("A painting of cjs", count=1)
    assert info.value.message.endswith("in node 3 (KSampler): torch.OutOfMemoryError: Allocation on device")


async def test_comfyui_today_routes_under_api_per_node_progress_and_previews_with_their_prompt() -> None:
    """ComfyUI 0.12: `sd.url` may name the `/api/` routes; `progress_state` gives each node's progress; the
    client asks for previews with metadata (type 4), so each frame says which prompt it belongs to."""
    async with comfyui(sim_settings(step_time=0.02)) as (sim, url), client(url + "/api") as sd:
        await wait_sd_ready(sd)
        job = asyncio.create_task(sd.generate("A painting of cjs", count=1))
        await wait_until(lambda: sd.preview is not None and sd.nodes.get("3", {}).get("state") == "running")
        sampler = sd.nodes["3"]
        assert sampler["max"] == 20 and 1 <= sampler["value"] <= 20
        assert sd.preview is not None and sd.preview.startswith(b"\xff\xd8\xff")
        assert sd.nodes["4"]["state"] == "finished"  # the checkpoint loader ran before the sampler
        await job
    assert sim.completed == ["A painting of cjs"] and len(sim.preview_metadata) == 1


async def test_progress_names_the_node_of_our_job_running_now() -> None:
    """`progress_state` says which node of our job runs, the graph we sent says what it is: the node names
    follow the graph's order through the job (the sampler with its steps, then the nodes after it), and
    none is named once the job has ended."""
    order = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"]
    async with comfyui(sim_settings(step_time=0.02)) as (_, url), client(url) as sd:
        await wait_sd_ready(sd)
        job = asyncio.create_task(sd.generate("A painting of cjs", count=1))
        seen: list[str] = []
        sampling: list[tuple[int, int]] = []
        while not job.done():
            progress = await sd.progress()
            if progress.node is not None and progress.node not in seen[-1:]:
                seen.append(progress.node)
            if progress.node == "KSampler" and progress.sampling_step:
                sampling.append((progress.sampling_step, progress.sampling_steps))
            await asyncio.sleep(0.002)
        await job
        assert (await sd.progress()).node is None
    assert "KSampler" in seen, seen  # the nodes around it may run too fast to be seen by polling
    assert seen == sorted(seen, key=order.index), seen  # never back to an earlier node (nor an unknown one)
    assert sampling and all(steps == 20 for _, steps in sampling), sampling


async def test_progress_names_each_node_as_progress_state_moves_on() -> None:
    """A ComfyUI that goes on to the next node only once the client has named the one running: every node of
    the graph is named in turn, the newest running one when a node's expansion runs inside it, and those whose
    ids are not in our graph (ComfyUI's own) never."""
    queued: asyncio.Queue[str] = asyncio.Queue()
    moved_on: asyncio.Queue[None] = asyncio.Queue()
    walk = [("4", "running", None), ("4", "finished", None), ("3", "running", None),
            ("3.0.1", "running", "3"), ("8", "running", None), ("99", "running", "99"), ("9", "running", None)]

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()  # the feature flags
        ours = await queued.get()
        await websocket.send_json({"type": "executing", "data": {"node": "4", "prompt_id": ours}})
        nodes: dict[str, Any] = {}
        for node_id, state, display in walk:
            nodes[node_id] = {"value": 0, "max": 1, "state": state, "node_id": node_id, "prompt_id": ours,
                              "display_node_id": display or node_id}
            await websocket.send_json({"type": "progress_state", "data": {"prompt_id": ours, "nodes": nodes}})
            await moved_on.get()
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()

    app = _socket_only_comfyui(socket, queued)
    named: list[str | None] = []
    async with LoopbackServer(app) as server, client(server.url, silence_timeout=30) as sd:
        await sd.probe("")
        job = asyncio.create_task(sd.generate("A painting of cjs", count=1))
        for step, (node_id, state, _) in enumerate(walk):
            started = len({earlier for earlier, _, _ in walk[:step + 1]})

            def reached(n: int = started, i: str = node_id, s: str = state) -> bool:
                return len(sd.nodes) == n and sd.nodes[i]["state"] == s

            await wait_until(reached)
            named.append((await sd.progress()).node)
            moved_on.put_nowait(None)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
    assert named == ["CheckpointLoaderSimple", None, "KSampler", "KSampler", "VAEDecode", "VAEDecode", "SaveImage"]


async def test_a_preview_with_metadata_is_taken_only_for_a_prompt_of_ours() -> None:
    """Type 4 frames name their prompt: a frame of a prompt that is not ours (another client's job on a shared
    server, a job of ours already given up) never becomes our preview, even while ours runs."""
    queued: asyncio.Queue[str] = asyncio.Queue()  # the prompt id the client chose, as ComfyUI keeps it
    flags: list[Any] = []

    def frame(prompt_id: str, image: bytes) -> bytes:
        metadata = json.dumps({"node_id": "3", "prompt_id": prompt_id, "image_type": "image/jpeg"}).encode()
        return struct.pack(">II", 4, len(metadata)) + metadata + image

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        flags.append(json.loads(await websocket.receive_text()))
        ours = await queued.get()
        await websocket.send_json({"type": "executing", "data": {"node": "3", "prompt_id": ours}})
        await websocket.send_bytes(frame(ours, b"\xff\xd8\xffOURS"))
        await websocket.send_bytes(frame("stranger", b"\xff\xd8\xffNOT OURS"))
        await websocket.send_json({"type": "progress_state", "data": {"prompt_id": ours, "nodes": {
            "3": {"value": 2, "max": 20, "state": "running", "node_id": "3", "prompt_id": ours}}}})
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()

    app = _socket_only_comfyui(socket, queued)
    async with LoopbackServer(app) as server, client(server.url, silence_timeout=30) as sd:
        await sd.probe("")
        job = asyncio.create_task(sd.generate("A painting of cjs", count=1))
        await wait_until(lambda: sd.nodes.get("3", {}).get("value") == 2)  # sent after both frames
        preview = (await sd.progress(preview=True)).preview
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
    assert preview == b"\xff\xd8\xffOURS"
    assert flags == [{"type": "feature_flags", "data": {"supports_preview_metadata": True}}]


@JOBS_API
async def test_jobs_an_earlier_client_left_on_comfyui_are_taken_off_at_the_next_probe(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, jobs_api: bool) -> None:
    path = tmp_path / "data" / JOURNAL
    async with comfyui(sim_settings(step_time=0.2), jobs_api=jobs_api) as (sim, url):  # 4 s a job
        async with client(url, journal=JobJournal(path)) as first:
            await wait_sd_ready(first)
            jobs = [asyncio.create_task(first.generate(f"A painting of cjs {index}", count=1)) for index in range(3)]
            await wait_until(lambda: sim.queue_length == 3)
            for job in jobs:  # the process dies: nobody cancels anything
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
        sent = json.loads(path.read_text())["jobs"]
        assert len(sent) == 3 and path.stat().st_mode & 0o777 == 0o600
        JobJournal(path).add("made-up-0000")  # sent by a process killed before ComfyUI took it
        assert sim.queue_length == 3

        with caplog.at_level(logging.WARNING, logger="avatargen.sd.comfyui"):
            async with client(url, journal=JobJournal(path)) as second:
                await wait_sd_ready(second)
                await wait_until(lambda: sim.queue_length == 0, timeout=5)
                assert json.loads(path.read_text())["jobs"] == {}
    assert sim.completed == []  # none of the three was computed to the end for nobody
    [line] = [record.getMessage() for record in caplog.records if "never collected" in record.getMessage()]
    assert "4 job(s) an earlier run sent and never collected" in line
    assert "dropped from the queue" in line and "interrupted" in line
    assert "made-up-0000 are unknown to ComfyUI" in line
    assert all(prompt_id in line for prompt_id in sent)
