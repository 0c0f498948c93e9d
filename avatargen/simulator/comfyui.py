"""A simulated ComfyUI server (demo mode and tests), speaking ComfyUI's HTTP and WebSocket protocol.

`POST /prompt` validates the graph as ComfyUI does (400 with `node_errors`) and queues it; one worker
runs the queue first in first out, sending on the `/ws?clientId=` socket of the job's client what
ComfyUI sends: `execution_start`, `execution_cached`, `executing` per node, `progress` per sampling
step with binary JPEG preview frames, `executed` for the outputs, then `execution_success` (or
`execution_error`, `execution_interrupted`), the history entry, and `executing` with `node: null`.
`/history`, `/view`, `/queue` (with deletion), `/interrupt`, `/object_info` and `/system_stats` answer
as ComfyUI's do, so ComfyUI's own example API client runs against it unchanged; so do `/api/jobs` (the
queue and history as one list of jobs), `/api/jobs/{id}`, `/api/jobs/{id}/cancel` and `/api/jobs/cancel`,
unless it is made a ComfyUI from before them (`jobs_api=False`).

As ComfyUI 0.12 does, it also sends `progress_state` throughout a job (every node started so far, keyed
by node id, with its value, max and state: running or finished), sends preview frames as
PREVIEW_IMAGE_WITH_METADATA (type 4: the node and prompt they belong to) to a client whose
`feature_flags` message says `supports_preview_metadata`, and serves every route under `/api/` too.

Sampling takes `steps * step_time * batch_factor` seconds, as in the simulated web UI, and draws the
same procedural avatars (see `comfyui_nodes`). After each `boot()` the server answers 502 for
`sd_boot_delay`, as the reverse proxy in front of a ComfyUI still loading its nodes does. Faults are
listed in `avatargen.simulator.faults`: the web UI's (OOM, garbage, invalid image, slow first job,
machine stopped) as they show on ComfyUI, plus a validation error and a socket dropped mid-job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import itertools
import json
import struct
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from avatargen.config import SimulatedSettings
from avatargen.simulator.auth import basic_auth_matches
from avatargen.simulator.comfyui_nodes import (
    CHECKPOINTS,
    NODES,
    SAMPLING_CLASSES,
    execution_order,
    object_info,
    png,
    resolve,
    run_node,
    sampled,
    validate,
)
from avatargen.simulator.drawing import draw_preview
from avatargen.simulator.faults import Faults, faults_from_body
from avatargen.simulator.sdwebui import SLOW_FIRST_FACTOR, batch_factor

VERSION = "0.12.0"
PREVIEW_IMAGE = 1  # binary event type: 4 bytes big-endian, then 4 bytes format (1 = JPEG), then the image
# ... and, to a client that said it supports it (feature flag supports_preview_metadata), 4 bytes of the
# metadata's length, the metadata (JSON: node, prompt, image type), then the image
PREVIEW_IMAGE_WITH_METADATA = 4
PREVIEW_JPEG = 1
PREVIEW_EVERY = 0.25  # seconds between preview frames of a job (ComfyUI sends one per step; tests run fast)
PREVIEW_EDGE = 128
_KEEP = 256  # history entries and output files kept (ComfyUI keeps them on disk; this keeps memory bounded)
_VRAM = 24 * 1024**3
_OOM = ("Allocation on device 0 would exceed allowed memory. (out of memory)\nCurrently allocated     : 21.95 GiB\n"
        "Requested               : 2.00 GiB\nDevice limit            : 23.64 GiB\nFree (according to CUDA): 19.19 MiB")


class _Interrupted(Exception):
    """The job was interrupted (`POST /interrupt`, or the machine went off)."""


class _Failed(Exception):
    """A node raised: what ComfyUI reports in `execution_error`."""

    def __init__(self, node_id: str, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.node_id, self.exception_type, self.message = node_id, exception_type, message


@dataclass
class _Job:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    client_id: str | None
    outputs: list[str]
    interrupted: bool = False
    node: str | None = None  # the node executing now
    drawn: str = ""  # the text its (first) sampler denoised from
    messages: list[list[Any]] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # progress_state: nodes started, by id

    def queue_item(self) -> list[Any]:
        """How `/queue` and the history show a job: [number, prompt_id, prompt, extra_data, outputs]."""
        return [self.number, self.prompt_id, self.prompt, {"client_id": self.client_id}, self.outputs]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _preview_frame(prompt: str, seed: int, width: int, height: int, denoised: float,
                   metadata: dict[str, Any] | None = None) -> bytes:
    """One binary preview message: the job's avatar coming out of its noise as far as it is denoised (the
    web UI simulator's live preview, `draw_preview`), a small JPEG; with `metadata` (the node and prompt
    it belongs to), as PREVIEW_IMAGE_WITH_METADATA."""
    scale = PREVIEW_EDGE / max(width, height)
    image = draw_preview(prompt, seed, max(1, round(width * scale)), max(1, round(height * scale)),
                         denoised=denoised)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, PREVIEW_JPEG) + buffer.getvalue()
    described = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(described)) + described + buffer.getvalue()


def _node_state(job: _Job, node_id: str, value: float, maximum: float, state: str) -> dict[str, Any]:
    """One node's entry in a `progress_state` message, as ComfyUI 0.12 sends it."""
    return {"value": value, "max": maximum, "state": state, "node_id": node_id, "prompt_id": job.prompt_id,
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id}


class SimulatedComfyUi:
    """The simulated ComfyUI's state (queue, history, files, sockets, boot phase) and its Starlette app.

    Like `SimulatedSdWebUi`, tests may read `queue_length` (jobs waiting or running), `completed`
    (positive prompts in the order their jobs finished) and `busy_seconds` (time spent running jobs), and
    `requests` (what the client asked for). `jobs_api=False` makes it a ComfyUI from before `/api/jobs`.
    """

    def __init__(self, settings: SimulatedSettings, faults: Faults, *, auth: tuple[str, str] | None = None,
                 token: str | None = None, after_delivery: Callable[[], Awaitable[None]] | None = None,
                 jobs_api: bool = True) -> None:
        self._settings = settings
        self._faults = faults
        self._auth = auth
        self._token = token
        self._after_delivery = after_delivery
        self._undelivered: OrderedDict[str, set[tuple[str, str, str]]] = OrderedDict()  # saved, not fetched yet
        self._numbers = itertools.count()
        self._files: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._file_counter = itertools.count(1)
        self.completed: list[str] = []
        self.requests: deque[str] = deque(maxlen=_KEEP * 4)  # "METHOD /path" of the latest requests, oldest first
        self.busy_seconds = 0.0
        self._sockets: dict[str, WebSocket] = {}
        self.preview_metadata: set[str] = set()  # clients that said supports_preview_metadata
        self._pending: list[_Job] = []
        self._running: _Job | None = None
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._work = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._refuse_sockets_of: str | None = None  # comfyui_socket_drop: this client's job is on
        self._mounted_at = 0.0
        self._first_job_pending = True
        self.boot()
        routes = [
            WebSocketRoute("/ws", self._websocket),
            Route("/prompt", self._post_prompt, methods=["POST"]),
            Route("/prompt", self._get_prompt, methods=["GET"]),
            Route("/queue", self._get_queue, methods=["GET"]),
            Route("/queue", self._post_queue, methods=["POST"]),
            Route("/interrupt", self._interrupt, methods=["POST"]),
            Route("/history", self._history_all, methods=["GET"]),
            Route("/history/{prompt_id}", self._history_one, methods=["GET"]),
            Route("/view", self._view, methods=["GET"]),
            Route("/object_info", self._object_info_all, methods=["GET"]),
            Route("/object_info/{node_class}", self._object_info, methods=["GET"]),
            Route("/models/checkpoints", self._checkpoints, methods=["GET"]),
            Route("/system_stats", self._system_stats, methods=["GET"]),
            Route("/free", self._free, methods=["POST"]),
            Route("/_sim/faults", self._faults_route, methods=["GET", "PUT"]),
        ]
        # ComfyUI serves every route under /api too (its frontend uses those); either may be in sd.url. The
        # jobs routes are only there (jobs_api=False: a ComfyUI from before them, which answers 404).
        jobs = [Route("/jobs", self._jobs, methods=["GET"]),
                Route("/jobs/cancel", self._cancel_jobs, methods=["POST"]),
                Route("/jobs/{job_id}", self._job, methods=["GET"]),
                Route("/jobs/{job_id}/cancel", self._cancel_job, methods=["POST"])] if jobs_api else []
        self.app = Starlette(routes=[*routes, Mount("/api", routes=[*jobs, *routes])])

    @property
    def queue_length(self) -> int:
        return len(self._pending) + (self._running is not None)

    def boot(self) -> None:
        """ComfyUI starts: empty queue and history (they live in its memory), 502 for `sd_boot_delay`."""
        self._mounted_at = time.monotonic() + self._settings.sd_boot_delay
        self._first_job_pending = True
        self._history.clear()

    def power_off(self) -> None:
        """The machine goes down: the job running ends now, the queue is lost."""
        if self._running is not None:
            self._running.interrupted = True
        self._pending.clear()
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._running = None
        self._sockets.clear()

    # --- access ------------------------------------------------------------------------------------

    def _refuse(self, connection: HTTPConnection) -> Response | None:
        """502 while ComfyUI is still starting, 401 without the reverse proxy's credentials, else None. Every
        request passes here: its method and path (no query) go into `requests`, for tests."""
        self.requests.append(f"{getattr(connection, 'method', 'GET')} {connection.url.path}")
        if time.monotonic() < self._mounted_at:
            return Response("<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", status_code=502,
                            media_type="text/html")
        given = connection.headers.get("authorization", "")
        if self._token is not None and not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            return JSONResponse({"detail": "invalid or missing bearer token"}, status_code=401)
        if self._auth is not None and not basic_auth_matches(given, self._auth):
            return Response("401 Authorization Required", status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="ComfyUI"'})
        return None

    # --- the socket ----------------------------------------------------------------------------------

    async def _websocket(self, websocket: WebSocket) -> None:
        client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
        if self._refuse(websocket) is not None or client_id == self._refuse_sockets_of:
            await websocket.close(code=1008)  # before accept: the handshake is answered 403
            return
        await websocket.accept()
        self._sockets[client_id] = websocket
        try:
            await websocket.send_json({"type": "status", "data": {"status": self._queue_info(), "sid": client_id}})
            running = self._running
            if running is not None and running.client_id == client_id and running.node is not None:
                await websocket.send_json({"type": "executing", "data": {"node": running.node}})  # on reconnect
            while True:
                self._feature_flags(client_id, await websocket.receive_text())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self._sockets.get(client_id) is websocket:
                del self._sockets[client_id]

    def _feature_flags(self, client_id: str, text: str) -> None:
        """A client's `feature_flags` message: whether it reads previews with their metadata."""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(text)
            if message.get("type") == "feature_flags" and message["data"].get("supports_preview_metadata"):
                self.preview_metadata.add(client_id)

    async def _progress_state(self, job: _Job, node_id: str, value: float, maximum: float, state: str) -> None:
        """ComfyUI 0.12's per-node progress: every node of the job started so far, keyed by node id."""
        job.nodes[node_id] = _node_state(job, node_id, value, maximum, state)
        await self._send(job.client_id, "progress_state", {"prompt_id": job.prompt_id, "nodes": dict(job.nodes)})

    async def _send(self, client_id: str | None, event: str, data: dict[str, Any]) -> None:
        """A JSON message to one client (None: every client), as ComfyUI's `send_sync`."""
        targets = list(self._sockets.values()) if client_id is None else [self._sockets.get(client_id)]
        for websocket in targets:
            if websocket is not None:
                with contextlib.suppress(Exception):  # a client gone away misses its messages, as on ComfyUI
                    await websocket.send_text(json.dumps({"type": event, "data": data}))

    async def _send_bytes(self, client_id: str | None, frame: bytes) -> None:
        websocket = self._sockets.get(client_id) if client_id is not None else None
        if websocket is not None:
            with contextlib.suppress(Exception):
                await websocket.send_bytes(frame)

    async def _message(self, job: _Job, event: str, data: dict[str, Any]) -> None:
        """A status message of a job: sent, and kept for its history entry."""
        data = {**data, "prompt_id": job.prompt_id, "timestamp": _now_ms()}
        job.messages.append([event, data])
        await self._send(job.client_id, event, data)

    async def _drop_socket(self, client_id: str | None) -> None:
        """comfyui_socket_drop: the connection goes (a proxy's idle cut, a network blip) and stays refused
        until the job is over, so the client has to poll the history."""
        if client_id is None:
            return
        self._refuse_sockets_of = client_id
        websocket = self._sockets.pop(client_id, None)
        if websocket is not None:
            with contextlib.suppress(Exception):
                await websocket.close(code=1011)

    # --- the queue -----------------------------------------------------------------------------------

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue_length}}

    async def _post_prompt(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"type": "invalid_json", "message": "Invalid JSON", "details": "",
                                           "extra_info": {}}, "node_errors": {}}, status_code=400)
        if not isinstance(body, dict) or "prompt" not in body:
            return JSONResponse({"error": {"type": "no_prompt", "message": "No prompt provided",
                                           "details": "No prompt provided", "extra_info": {}}, "node_errors": {}},
                                status_code=400)
        prompt = body["prompt"]
        error, node_errors, outputs = validate(prompt)
        if error is None and self._faults.hit("comfyui_validation"):
            error, node_errors = self._validation_fault(prompt)
        if error is not None:
            return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)
        job = _Job(next(self._numbers), str(body.get("prompt_id") or uuid.uuid4()), prompt, body.get("client_id"),
                   outputs)
        self._pending.append(job)
        self._work.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_queue())
        await self._send(None, "status", {"status": self._queue_info()})
        return JSONResponse({"prompt_id": job.prompt_id, "number": job.number, "node_errors": {}})

    @staticmethod
    def _validation_fault(prompt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The sampler's sampler_name refused, as by a ComfyUI version that does not have it."""
        sampler = next((node_id for node_id, node in prompt.items() if node["class_type"] in SAMPLING_CLASSES), None)
        if sampler is None:
            sampler = next(iter(prompt))
        received = prompt[sampler]["inputs"].get("sampler_name", "")
        error = {"type": "value_not_in_list", "message": "Value not in list",
                 "details": f"sampler_name: '{received}' not in (list of length 38)",
                 "extra_info": {"input_name": "sampler_name", "input_config": None, "received_value": received}}
        node_errors = {sampler: {"errors": [error], "dependent_outputs": [],
                                 "class_type": prompt[sampler]["class_type"]}}
        return ({"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                 "details": f"Value not in list: {error['details']}", "extra_info": {}}, node_errors)

    async def _get_prompt(self, request: Request) -> Response:
        return self._refuse(request) or JSONResponse({"exec_info": self._queue_info()["exec_info"]})

    async def _get_queue(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        running = [self._running.queue_item()] if self._running is not None else []
        return JSONResponse({"queue_running": running, "queue_pending": [job.queue_item() for job in self._pending]})

    async def _post_queue(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("clear"):
            self._pending.clear()
        if isinstance(body, dict) and isinstance(body.get("delete"), list):
            gone = set(map(str, body["delete"]))
            self._pending = [job for job in self._pending if job.prompt_id not in gone]
        return Response(status_code=200)

    async def _interrupt(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        if self._running is not None and (not wanted or wanted == self._running.prompt_id):
            self._running.interrupted = True
        return Response(status_code=200)

    async def _run_queue(self) -> None:
        """ComfyUI's prompt worker: one job at a time, lowest number first."""
        while True:
            while not self._pending:
                self._work.clear()
                await self._work.wait()
            job = self._pending.pop(0)
            self._running = job
            began = time.monotonic()
            try:
                await self._run_job(job)
            finally:
                self.busy_seconds += time.monotonic() - began
                self._running = None
                if self._refuse_sockets_of == job.client_id:
                    self._refuse_sockets_of = None

    async def _run_job(self, job: _Job) -> None:
        await self._message(job, "execution_start", {})
        await self._message(job, "execution_cached", {"nodes": []})
        values: dict[str, tuple[Any, ...]] = {}
        outputs: dict[str, Any] = {}
        executed: list[str] = []
        status = "success"
        node_id = ""
        try:
            for node_id in execution_order(job.prompt, job.outputs):
                node = job.prompt[node_id]
                job.node = node_id
                await self._send(job.client_id, "executing",
                                 {"node": node_id, "display_node": node_id, "prompt_id": job.prompt_id})
                await self._progress_state(job, node_id, 0, 1, "running")
                args = resolve(node["inputs"], values)
                if node["class_type"] in SAMPLING_CLASSES:
                    values[node_id] = (await self._sample(job, node_id, args),)
                else:
                    values[node_id] = await asyncio.to_thread(run_node, node["class_type"], args)
                if node["class_type"] in ("SaveImage", "PreviewImage"):
                    outputs[node_id] = {"images": await asyncio.to_thread(self._save, node["class_type"], args)}
                    await self._send(job.client_id, "executed", {"node": node_id, "display_node": node_id,
                                                                 "output": outputs[node_id],
                                                                 "prompt_id": job.prompt_id})
                executed.append(node_id)
                done = job.nodes[node_id]
                await self._progress_state(job, node_id, done["max"], done["max"], "finished")
            await self._message(job, "execution_success", {})
        except _Interrupted:
            status = "error"
            await self._message(job, "execution_interrupted", {"node_id": node_id,
                                                               "node_type": job.prompt[node_id]["class_type"],
                                                               "executed": executed})
        except _Failed as exc:
            status = "error"
            await self._message(job, "execution_error", {
                "node_id": exc.node_id, "node_type": job.prompt[exc.node_id]["class_type"], "executed": executed,
                "exception_message": exc.message, "exception_type": exc.exception_type,
                "traceback": ["  File \"comfy/sample.py\", line 43, in sample\n"], "current_inputs": {},
                "current_outputs": executed})
        if status == "success":
            self.completed.append(job.drawn)
        self._remember(job, outputs, status)
        await self._send(job.client_id, "executing", {"node": None, "prompt_id": job.prompt_id})
        await self._send(None, "status", {"status": self._queue_info()})

    async def _sample(self, job: _Job, node_id: str, args: dict[str, Any]) -> Any:
        """Sleep through the steps, sending progress and preview frames; honour interrupt and faults."""
        if self._faults.hit("sd_500"):
            raise _Failed(node_id, "torch.OutOfMemoryError", _OOM)
        slow = SLOW_FIRST_FACTOR if self._first_job_pending and "sd_slow_first" in self._faults else 1.0
        self._first_job_pending = False
        steps = int(args["steps"])
        latent = args["latent_image"]
        step_seconds = self._settings.step_time * batch_factor(latent.batch) * slow
        drop_at = steps // 2 if "comfyui_socket_drop" in self._faults else None
        last_preview = 0.0
        for step in range(1, steps + 1):
            await asyncio.sleep(step_seconds)
            if job.interrupted:
                raise _Interrupted()
            await self._send(job.client_id, "progress",
                             {"value": step, "max": steps, "prompt_id": job.prompt_id, "node": node_id})
            await self._progress_state(job, node_id, step, steps, "running")
            if time.monotonic() - last_preview >= PREVIEW_EVERY or step == steps:
                last_preview = time.monotonic()
                partial = sampled(args, step)
                described = ({"node_id": node_id, "prompt_id": job.prompt_id, "display_node_id": node_id,
                              "parent_node_id": None, "real_node_id": node_id}
                             if job.client_id in self.preview_metadata else None)
                frame = await asyncio.to_thread(_preview_frame, partial.prompt or "", partial.seed, latent.width,
                                                latent.height, partial.denoised, described)
                await self._send_bytes(job.client_id, frame)
            if step == drop_at:
                self._faults.hit("comfyui_socket_drop")
                await self._drop_socket(job.client_id)
        result = sampled(args, steps)
        job.drawn = job.drawn or result.prompt or ""
        return result

    def _save(self, class_type: str, args: dict[str, Any]) -> list[dict[str, str]]:
        """Encode a node's images as PNG files under `output` (SaveImage) or `temp` (PreviewImage)."""
        kind = "output" if class_type == "SaveImage" else "temp"
        prefix = str(args.get("filename_prefix", "ComfyUI")) if kind == "output" else "ComfyUI_temp"
        subfolder, _, stem = prefix.rpartition("/")
        saved = []
        for image in args["images"]:
            filename = f"{stem}_{next(self._file_counter):05}_.png"
            self._keep(self._files, (kind, subfolder, filename), png(image))
            saved.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return saved

    @staticmethod
    def _keep(store: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        store[key] = value
        while len(store) > _KEEP:
            store.popitem(last=False)

    def _delivered(self, key: tuple[str, str, str]) -> BackgroundTask | None:
        """Count a fetched file; once a job's saved images (SaveImage, type "output") are all fetched, what
        `after_delivery` does (the external_stop fault) runs after the answer, as after a txt2img answer."""
        for prompt_id, files in list(self._undelivered.items()):
            if key in files:
                files.discard(key)
                if not files:
                    del self._undelivered[prompt_id]
                    return BackgroundTask(self._after_delivery) if self._after_delivery else None
        return None

    def _remember(self, job: _Job, outputs: dict[str, Any], status: str) -> None:
        saved = {(image["type"], image["subfolder"], image["filename"]) for output in outputs.values()
                 for image in output["images"] if image["type"] == "output"}
        if saved:
            self._keep(self._undelivered, job.prompt_id, saved)
        self._keep(self._history, job.prompt_id, {
            "prompt": job.queue_item(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": job.messages},
            "meta": {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                               "real_node_id": node_id} for node_id in outputs},
        })

    # --- /api/jobs: the queue and the history as one list of jobs (ComfyUI 0.6 and later) ----------------

    def _job_view(self, prompt_id: str, *, details: bool) -> dict[str, Any] | None:
        """A job as `/api/jobs` shows it: `id`, `status` (pending, in_progress, completed, failed), its queue
        number and, in the details of an ended one, `outputs` and `execution_status` (the history's status)."""
        queued = [(job, "pending") for job in self._pending]
        if self._running is not None:
            queued.insert(0, (self._running, "in_progress"))
        for job, status in queued:
            if job.prompt_id == prompt_id:
                return {"id": prompt_id, "status": status, "priority": job.number, "outputs_count": 0}
        entry = self._history.get(prompt_id)
        if entry is None:
            return None
        status = "failed" if entry["status"]["status_str"] == "error" else "completed"
        view = {"id": prompt_id, "status": status, "priority": entry["prompt"][0],
                "outputs_count": sum(len(output.get("images", [])) for output in entry["outputs"].values())}
        return {**view, "outputs": entry["outputs"], "execution_status": entry["status"]} if details else view

    def _job_ids(self) -> list[str]:
        running = [self._running.prompt_id] if self._running is not None else []
        return [*running, *(job.prompt_id for job in self._pending), *reversed(self._history)]

    async def _jobs(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        wanted = set(filter(None, request.query_params.get("status", "").split(",")))
        views = [view for prompt_id in self._job_ids()
                 if (view := self._job_view(prompt_id, details=False)) and (not wanted or view["status"] in wanted)]
        try:
            offset = max(0, int(request.query_params.get("offset", 0)))
            limit = int(request.query_params["limit"]) if "limit" in request.query_params else len(views)
        except ValueError:
            return JSONResponse({"error": "limit and offset must be integers"}, status_code=400)
        page = views[offset:offset + max(0, limit)]
        return JSONResponse({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(views),
                                                          "has_more": offset + len(page) < len(views)}})

    async def _job(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        view = self._job_view(request.path_params["job_id"], details=True)
        if view is not None and view["status"] not in ("pending", "in_progress") and (
                garbled := self._garbled('{"id": "' + view["id"] + '", "outputs": {"9": {"im')):
            return garbled
        return JSONResponse(view) if view is not None else JSONResponse({"error": "Job not found"}, status_code=404)

    def _cancel(self, prompt_id: str) -> bool:
        """Take a job off the queue, or interrupt it when it runs; False when it is neither."""
        if self._running is not None and self._running.prompt_id == prompt_id:
            self._running.interrupted = True
            return True
        kept = [job for job in self._pending if job.prompt_id != prompt_id]
        cancelled, self._pending = len(kept) < len(self._pending), kept
        return cancelled

    async def _cancel_job(self, request: Request) -> Response:
        """200 whatever the job's state: one that ended, or that nobody knows, has nothing left to cancel."""
        if refusal := self._refuse(request):
            return refusal
        prompt_id = request.path_params["job_id"]
        return JSONResponse({"id": prompt_id, "cancelled": self._cancel(prompt_id)})

    async def _cancel_jobs(self, request: Request) -> Response:
        """`{"job_ids": [...]}`: all or nothing, 404 when one of them is unknown."""
        if refusal := self._refuse(request):
            return refusal
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(prompt_id, str) for prompt_id in ids):
            return JSONResponse({"error": "job_ids must be a list of job ids"}, status_code=400)
        unknown = [prompt_id for prompt_id in ids if self._job_view(prompt_id, details=False) is None]
        if unknown:
            return JSONResponse({"error": f"unknown job ids: {', '.join(unknown)}"}, status_code=404)
        return JSONResponse({"cancelled": [prompt_id for prompt_id in ids if self._cancel(prompt_id)]})

    # --- results -------------------------------------------------------------------------------------

    async def _history_all(self, request: Request) -> Response:
        return self._refuse(request) or JSONResponse(dict(self._history))

    async def _history_one(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        prompt_id = request.path_params["prompt_id"]
        entry = self._history.get(prompt_id)
        if entry is not None and (garbled := self._garbled('{"' + prompt_id + '": {"outputs": {"9": {"im')):
            return garbled
        return JSONResponse({prompt_id: entry} if entry is not None else {})

    def _garbled(self, truncated: str) -> Response | None:
        """The sd_garbage fault on an ended job's answer: a proxy's 502 page, then the answer cut short."""
        if (garbage := self._faults.hit("sd_garbage")) is None:
            return None
        if garbage % 2:
            return Response("<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", status_code=502,
                            media_type="text/html")
        return Response(truncated + 'ages": [{"filename": "Comf', media_type="application/json")

    async def _view(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        query = request.query_params
        filename = query.get("filename", "")
        if not filename:
            return Response(status_code=400)
        data = self._files.get((query.get("type", "output"), query.get("subfolder", ""), filename))
        if data is None:
            return Response(status_code=404)
        if (invalid := self._faults.hit("sd_invalid_image")) is not None:
            data = b"\x00not an image\x00" * 8 if invalid % 2 else b"<html><body>Image not ready</body></html>"
        background = self._delivered((query.get("type", "output"), query.get("subfolder", ""), filename))
        if "preview" in query:
            with Image.open(io.BytesIO(data)) as image:
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, "JPEG", quality=90)
            return Response(buffer.getvalue(), media_type="image/jpeg")
        return Response(data, media_type="image/png", headers={"Content-Disposition": f'filename="{filename}"'},
                        background=background)

    # --- about the server --------------------------------------------------------------------------

    async def _object_info_all(self, request: Request) -> Response:
        return self._refuse(request) or JSONResponse({name: object_info(name) for name in NODES})

    async def _object_info(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        name = request.path_params["node_class"]
        return JSONResponse({name: object_info(name)} if name in NODES else {})

    async def _checkpoints(self, request: Request) -> Response:
        return self._refuse(request) or JSONResponse(list(CHECKPOINTS))

    async def _system_stats(self, request: Request) -> Response:
        if refusal := self._refuse(request):
            return refusal
        return JSONResponse({
            "system": {"os": sys.platform, "ram_total": 64 * 1024**3, "ram_free": 48 * 1024**3,
                       "comfyui_version": VERSION, "python_version": sys.version, "pytorch_version": "2.7.0+cu128",
                       "embedded_python": False, "argv": ["main.py", "--listen", "0.0.0.0"]},
            "devices": [{"name": "cuda:0 NVIDIA RTX A5000 : cudaMallocAsync", "type": "cuda", "index": 0,
                         "vram_total": _VRAM, "vram_free": _VRAM - 2 * 1024**3, "torch_vram_total": 0,
                         "torch_vram_free": 0}],
        })

    async def _free(self, request: Request) -> Response:
        return self._refuse(request) or Response(status_code=200)

    async def _faults_route(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self._faults.set(faults_from_body(await request.body()))
            except ValueError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)
        return JSONResponse({"faults": self._faults.names})
