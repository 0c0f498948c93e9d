"""Client of ComfyUI: the owner's workflow, queued with their settings, followed on ComfyUI's WebSocket.

A job is `POST /prompt` with our `client_id`; ComfyUI answers at once with a prompt id and computes
later, one job at a time, so `generator.concurrency` jobs queued together keep the GPU busy between
them. What happens to a job comes on one long-lived WebSocket (`/ws?clientId=`): `executing`,
`progress` per sampling step, binary preview frames, and its end (`execution_success`,
`execution_error`, `execution_interrupted`). The socket is a help, not a source of truth: it may
drop, a proxy may buffer it, a reconnect may miss the end of a job. So a job is over when
`/history/{prompt_id}` has its entry; the socket only says when to look (at once when it reports
the end, every `poll_every` while it is down, every `SOCKET_POLL` while it is up but quiet). The
images come from `/view`.

A recent ComfyUI (0.6 and later) also has `/api/jobs`: the queue and the history as one list of jobs, each
with a `status` (pending, in_progress, completed, failed), and `GET /api/jobs/{id}` with an ended job's outputs;
later ones (mid-2026) add `POST /api/jobs/{id}/cancel`, which dequeues a waiting job or interrupts the running
one, whichever it is. The client asks once whether the server has them and then prefers them; an older server
is followed through `/history`, `/queue` and `/interrupt` as before.

Each prompt id is written to a journal in the data folder (`avatargen.journal`) before the job is sent and
struck off when it ends. A client finds there the jobs an earlier one sent and never collected (a server
killed mid-run, a run aborted while ComfyUI could not be reached) and, at its first successful probe, takes
those still queued or running off ComfyUI, saying in the log which it dropped, so the GPU does not compute
images nobody will collect (with `gpu.provider = "always_on"`, the only case where ComfyUI outlives us).

Every failure is an `SdError` worded for the owner: a validation error names the node, the input and
ComfyUI's message; an execution error names the node and the exception (out of memory); a job nobody
reports on for `silence_timeout` is called stuck; an answer that is not an image says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import random
import struct
import time
import uuid
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from avatargen.config import SdSettings
from avatargen.http_client import HttpClient
from avatargen.imaging import sniff_format
from avatargen.journal import JobJournal
from avatargen.redact import redact_url
from avatargen.retry import backoff_delay
from avatargen.sd.base import Generated, SdError, SdNotReady, SdProgress, quote, send
from avatargen.sd.samplers import comfyui_sampler
from avatargen.sd.workflow import Graph, Workflow, job_graph, names_model_file

log = logging.getLogger("avatargen.sd.comfyui")

POLL_EVERY = 1.0  # seconds between /history polls while the socket is down or a job's end is near
SOCKET_POLL = 10.0  # ... while the socket is up: a safety net for messages a reconnect missed
SILENCE_TIMEOUT = 300.0  # a job running with no word about it for this long is stuck
MAX_SEED = 2**32 - 1
PREVIEW_IMAGE = 1  # binary WebSocket event: a preview frame of the job computing
PREVIEW_IMAGE_WITH_METADATA = 4  # ... with the node and prompt it belongs to (ComfyUI 0.12, when asked for)
FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_MAX_MESSAGE = 16 * 1024 * 1024  # preview frames are small; an `executed` message of a big batch is not
JOURNAL = "comfyui-jobs.json"  # in the data folder: our prompt ids, sent and not yet seen ending
PENDING, RUNNING, ENDED, UNKNOWN = "pending", "in_progress", "ended", "unknown"  # a job's state on ComfyUI


@dataclass
class _Job:
    """What we know of one queued prompt; `news` is set when its history is worth a look."""

    prompt_id: str
    graph: Mapping[str, Any] = field(default_factory=dict)  # what was sent: node id -> its class_type and inputs
    queued_at: float = field(default_factory=time.monotonic)
    heard_at: float = field(default_factory=time.monotonic)
    ended: bool = False  # the socket reported its end: its history entry is about to be written
    failure: tuple[str, dict[str, Any]] | None = None  # the socket's execution_error / _interrupted, if any
    news: asyncio.Event = field(default_factory=asyncio.Event)

    def hear(self, *, ended: bool = False) -> None:
        """Something about the job came: it is alive; when it is its end, look at the history now."""
        self.heard_at = time.monotonic()
        if ended:
            self.ended = True
            self.news.set()


def _authorization(settings: SdSettings) -> dict[str, str]:
    """The reverse proxy's credentials, for HTTP and the socket alike: Basic (sd.username and the password
    from the env) or a bearer token (from the env variable `[sd.comfyui] token_env` names)."""
    if settings.username:
        pair = f"{settings.username}:{settings.password().reveal()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    token = settings.comfyui.token()
    return {"Authorization": f"Bearer {token.reveal()}"} if token else {}


def _reconnect_delays() -> Generator[float]:
    """Waits between socket reconnects: short at first (a dropped socket usually comes straight back)."""
    for attempt in itertools.count():
        yield backoff_delay(attempt, base=0.5, cap=10.0)


def _retry_any(exc: Exception) -> Exception | None:
    """Keep reconnecting whatever the failure: the history still tells how jobs end meanwhile."""
    log.debug("ComfyUI socket: cannot connect (%s); polling the history meanwhile", exc)
    return None


def _obj(value: Any) -> dict[str, Any]:
    """A JSON object from an answer, or an empty one for anything else (answers are not trusted)."""
    return value if isinstance(value, dict) else {}


def _queued_ids(queue: Any, part: str) -> list[str]:
    """The prompt ids in `queue_running` or `queue_pending` of a `/queue` answer: upstream ComfyUI lists
    each job as [number, prompt_id, prompt, extra_data, outputs], some forks as an object with "prompt_id"."""
    ids = []
    for item in _obj(queue).get(part) or []:
        prompt_id = item[1] if isinstance(item, list) and len(item) > 1 else _obj(item).get("prompt_id")
        if isinstance(prompt_id, str):
            ids.append(prompt_id)
    return ids


def _status_events(status: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a history entry's status: [event, data] upstream, bare names in forks."""
    events = []
    for message in status.get("messages") or []:
        if isinstance(message, list) and len(message) == 2 and isinstance(message[0], str):
            events.append((message[0], _obj(message[1])))
        elif isinstance(message, str):
            events.append((message, {}))
    return events


def _options(node: Mapping[str, Any], input_name: str) -> list[str] | None:
    """The choices `/object_info` lists for a node's input (either shape: a list, or COMBO options), or None
    when it takes no list."""
    inputs = _obj(node.get("input"))
    spec = _obj(inputs.get("required")).get(input_name) or _obj(inputs.get("optional")).get(input_name)
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return [str(choice) for choice in spec[0]]
    if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and "options" in spec[1]:
        return [str(choice) for choice in spec[1]["options"]]
    return None


def validation_text(body: Any) -> str:
    """ComfyUI's answer to a refused `/prompt`, in one line: each node, input and message."""
    if not isinstance(body, dict):
        return "the workflow was refused"
    problems = []
    node_errors = body.get("node_errors")
    for node_id, entry in _obj(node_errors).items():
        for error in map(_obj, _obj(entry).get("errors") or []):
            extra = _obj(error.get("extra_info"))
            where = f"node {node_id} ({_obj(entry).get('class_type', '?')})"
            if extra.get("input_name"):
                where += f" input {extra['input_name']!r}"
            problems.append(f"{where}: {error.get('message', 'invalid')}: {error.get('details', '')}".rstrip(": "))
    if not problems and isinstance(body.get("error"), dict):
        error = body["error"]
        problems.append(f"{error.get('message', 'invalid')}: {error.get('details', '')}".rstrip(": "))
    return quote("; ".join(problems) or json.dumps(body))


def _execution_error(prompt_id: str, data: Mapping[str, Any]) -> SdError:
    node = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
    message = f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}".strip().rstrip(":")
    return SdError(None, f"ComfyUI failed job {prompt_id} in {node}: {quote(message)}", retryable=True)


class ComfyUiClient(HttpClient):
    """The `comfyui` backend (`avatargen.sd.base.SdBackend`) for one server and one workflow."""

    name = "comfyui"

    def __init__(self, settings: SdSettings, workflow: Workflow, *, url: str, http: httpx.AsyncClient | None = None,
                 poll_every: float = POLL_EVERY, silence_timeout: float = SILENCE_TIMEOUT,
                 journal: JobJournal | None = None) -> None:
        self._settings = settings
        self._workflow = workflow
        self._url = url.rstrip("/")
        self._shown_url = redact_url(self._url)  # for messages: they end up in logs, events and the status
        super().__init__(http, timeout=_TIMEOUT)
        # On every request (a borrowed pool keeps its owner's headers) and on the socket.
        self._headers = _authorization(settings)
        self._poll_every = poll_every
        self._silence_timeout = silence_timeout
        self._client_id = uuid.uuid4().hex
        self._sampler_name, self._scheduler = comfyui_sampler(settings.sampler, settings.comfyui.scheduler)
        self._checkpoint = settings.checkpoint or workflow.checkpoint
        self._jobs: dict[str, _Job] = {}  # ours, queued and not yet seen in the history
        self._listener: asyncio.Task[None] | None = None
        self._socket_up = False
        self._running: str | None = None  # the prompt ComfyUI executes now, when the socket said so
        self._step = (0, 0, 0.0)  # sampling step, steps, when the current sampler started
        self.preview: bytes | None = None  # the latest preview frame of our job (JPEG or PNG)
        self.nodes: dict[str, dict[str, Any]] = {}  # progress_state of our job running: node id -> its progress
        self._journal = journal
        self._left_behind = set(journal.job_ids) if journal is not None else set()  # sent by an earlier client
        # `/api/jobs` sits under /api, whichever form sd.url has
        self._jobs_path = "/jobs" if self._url.endswith("/api") else "/api/jobs"
        self._jobs_api: bool | None = None  # GET /api/jobs and /api/jobs/{id}; None until the first probe asked
        self._cancel_api = False  # POST /api/jobs/{id}/cancel

    def __repr__(self) -> str:
        return f"ComfyUiClient({self._shown_url!r}, workflow={self._workflow.name!r})"

    @property
    def _server(self) -> str:
        return f"ComfyUI at {self._shown_url}"

    # --- readiness -----------------------------------------------------------------------------------

    async def probe(self, checkpoint: str) -> None:
        """Ready when `/system_stats` answers; then the checkpoint must be one of the loader's choices
        (`/object_info/<loader class>`), or every job would fail validation after the machine is paid for.
        With no checkpoint configured the built-in graph takes the server's first."""
        try:
            await self._json("GET", "/system_stats")
        except SdError as exc:
            if exc.retryable or exc.status in (404, 502, 503, 504):
                raise SdNotReady(f"ComfyUI is not ready: {exc.message}", exc.status) from exc
            raise
        self._start_listening()
        await self._ask_jobs_api()
        await self._drop_left_behind()
        loader = self._workflow.loader
        if loader is None:
            await self._check_model_files()
            return
        loader_class = self._workflow.loader_class
        info = await self._json("GET", f"/object_info/{loader_class}")
        choices = self._choices(info, str(loader_class), loader[1])
        wanted = checkpoint or self._workflow.checkpoint
        if not wanted:
            if not choices:
                raise SdError(None, f"ComfyUI has no checkpoint to load ({loader_class} lists none)", retryable=False)
            wanted = choices[0]
            log.info("sd.checkpoint is empty: using %r, the first of ComfyUI's %d checkpoints", wanted, len(choices))
        elif wanted not in choices:
            available = ", ".join(map(repr, choices[:20])) or "none"
            named_by = "sd.checkpoint" if checkpoint else f"the workflow's {loader[1]}"
            raise SdError(None, f"{named_by} {wanted!r} is not on ComfyUI (available: {available}); every job "
                                "would fail", retryable=False)
        self._checkpoint = wanted
        await self._check_model_files()

    @staticmethod
    def _choices(info: Any, loader_class: str, input_name: str) -> list[str]:
        """The model files a loader offers, from either shape of `object_info` (a list, or COMBO options)."""
        node = info.get(loader_class) if isinstance(info, dict) else None
        if not isinstance(node, dict):
            raise SdError(None, f"ComfyUI has no {loader_class} node (the workflow needs it; a custom node that is "
                                "not installed?)", retryable=False)
        choices = _options(node, input_name)
        if choices is None:
            raise SdError(None, f"ComfyUI's {loader_class} has no list of {input_name} choices", retryable=False)
        return choices

    async def _check_model_files(self) -> None:
        """Every model file the graph names by itself (a LoRA, VAE, upscaler...) must be among those its node
        offers in `/object_info`, or every job would be refused ("Value not in list") after the boot."""
        infos: dict[str, Any] = {}
        for fixed in self._workflow.fixed_choices():
            if fixed.class_type not in infos:
                infos[fixed.class_type] = await self._json("GET", f"/object_info/{fixed.class_type}")
            info = infos[fixed.class_type]
            node = info.get(fixed.class_type) if isinstance(info, dict) else None
            choices = _options(node, fixed.input) if isinstance(node, dict) else None
            if choices is None:
                if names_model_file(fixed.value):  # ComfyUI would refuse the node, or the file it names
                    self._choices(info, fixed.class_type, fixed.input)
                continue
            if fixed.value not in choices and (names_model_file(fixed.value) or any(map(names_model_file, choices))):
                available = ", ".join(map(repr, choices[:20])) or "none"
                raise SdError(None, f"the workflow's {fixed.where()} names {fixed.value!r}, which is not on ComfyUI "
                                    f"(available: {available}); every job would fail", retryable=False)

    # --- a job -------------------------------------------------------------------------------------------

    async def generate(self, prompt: str, *, count: int, seed: int = -1) -> Generated:
        """Queue the workflow with this prompt and the `[sd]` settings, wait for it, fetch its images."""
        self._start_listening()
        seed = random.randint(0, MAX_SEED) if seed < 0 else seed
        graph = job_graph(self._workflow, self._settings, prompt=prompt, count=count, seed=seed,
                          checkpoint=self._checkpoint)
        prompt_id = await self._queue(graph)
        try:
            entry = await self._finished(self._jobs[prompt_id])
        except SdError:
            if prompt_id in self._jobs:  # stuck, or we lost track of it: take it off the GPU before asking again
                with contextlib.suppress(SdError):
                    await self._cancel({prompt_id})
                self._jobs.pop(prompt_id, None)  # even when ComfyUI could not be asked
            raise
        images = await self._images(prompt_id, entry)
        return Generated(images=images, seeds=[seed] * len(images), metadata={
            "backend": self.name, "workflow": self._workflow.name, "model": self._checkpoint,
            **({"loras": self._workflow.loras} if self._workflow.loras else {}),
            "sampler_name": self._sampler_name, "scheduler": self._scheduler})

    async def _queue(self, graph: dict[str, Any]) -> str:
        """Queue a job under a prompt id of our own, known before ComfyUI starts it (and reports on it,
        which may come before its answer to the POST). A ComfyUI too old to take it sends its own."""
        prompt_id = str(uuid.uuid4())
        self._jobs[prompt_id] = _Job(prompt_id, graph)
        if self._journal is not None:
            self._journal.add(prompt_id)  # before it goes: we may be killed before ComfyUI answers
        try:
            response = await self._send("POST", self._url + "/prompt",
                                        json={"prompt": graph, "client_id": self._client_id, "prompt_id": prompt_id})
            body = self._parse(response)
            if response.status_code == 400:
                raise SdError(400, f"ComfyUI refused the workflow: {validation_text(body)}", retryable=False)
            self._raise_for_status(response, body)
        except SdError as exc:
            del self._jobs[prompt_id]
            if exc.status == 400:  # refused: nothing was queued (after any other failure, it may have been)
                self._ended(prompt_id)
            raise
        given = _obj(body).get("prompt_id")
        if not isinstance(given, str) or not given:
            raise SdError(response.status_code, f"ComfyUI queued the job but sent no prompt_id: {quote(response.text)}",
                          retryable=True)
        if given != prompt_id:
            self._jobs[given] = self._jobs.pop(prompt_id)
            self._jobs[given].prompt_id = given
            if self._journal is not None:
                self._journal.add(given)
            self._ended(prompt_id)
        return given

    async def _finished(self, job: _Job) -> dict[str, Any]:
        """The job's history entry once it has one; SdError when ComfyUI reports a failure or goes silent."""
        while True:
            wait = self._poll_every if job.ended or not self._socket_up else SOCKET_POLL
            silent_until = max(job.heard_at, job.queued_at) + self._silence_timeout
            wait = max(0.0, min(wait, silent_until - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await job.news.wait()
            job.news.clear()
            entry = await self._history(job.prompt_id)
            if entry is not None:
                self._jobs.pop(job.prompt_id, None)
                self._ended(job.prompt_id)
                return self._succeeded(job, entry)
            if time.monotonic() >= silent_until:
                await self._still_queued(job)

    async def _still_queued(self, job: _Job) -> None:
        """A job nothing was heard of for `silence_timeout`: fine while it waits its turn, stuck otherwise."""
        if (await self._states({job.prompt_id}))[job.prompt_id] == PENDING:
            job.hear()
            return
        silence = round(self._silence_timeout)
        raise SdError(None, f"ComfyUI said nothing about job {job.prompt_id} for {silence} s and has no result for "
                            "it (the socket never reported and the history stayed empty): it seems stuck",
                      retryable=True)

    def _succeeded(self, job: _Job, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The history entry of a job that succeeded; SdError with ComfyUI's own words otherwise (from the
        history, or from the socket where the history keeps only the event names)."""
        status = _obj(entry.get("status"))
        if status.get("status_str", "success") == "success":
            return dict(entry)
        events = [(event, data) for event, data in _status_events(status) if data]
        for event, data in reversed(events + ([job.failure] if job.failure else [])):
            if event == "execution_error":
                raise _execution_error(job.prompt_id, data)
            if event == "execution_interrupted":
                node = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
                raise SdError(None, f"ComfyUI job {job.prompt_id} was interrupted in {node}", retryable=True)
        raise SdError(None, f"ComfyUI reports job {job.prompt_id} as {status.get('status_str')!r}", retryable=True)

    async def _history(self, prompt_id: str) -> Mapping[str, Any] | None:
        """The job's history entry once it has ended (from `/api/jobs/{id}` where the server has it), else None."""
        if self._jobs_api:
            job = await self._job(prompt_id)
            if job is None or job.get("status") in (PENDING, RUNNING):
                return None
            failed = {"status_str": "success" if job.get("status") == "completed" else "error"}
            return {"outputs": job.get("outputs"), "status": _obj(job.get("execution_status")) or failed}
        body = await self._json("GET", f"/history/{prompt_id}")
        if not isinstance(body, dict):
            raise SdError(200, f"ComfyUI sent an unusable history for job {prompt_id}: not an object", retryable=True)
        entry = body.get(prompt_id)
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise SdError(200, f"ComfyUI sent an unusable history for job {prompt_id}", retryable=True)
        return entry

    async def _images(self, prompt_id: str, entry: Mapping[str, Any]) -> list[bytes]:
        """The output node's images, fetched from `/view` and checked to be images."""
        output = self._workflow.output
        listed = _obj(_obj(entry.get("outputs")).get(output)).get("images")
        node = Graph(self._workflow.graph).name(output)
        if not isinstance(listed, list) or not listed:
            raise SdError(200, f"ComfyUI job {prompt_id} finished without images from {node}", retryable=True)
        images = []
        for item in listed:
            if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                raise SdError(200, f"ComfyUI listed an unusable image for job {prompt_id}: {quote(str(item))}",
                              retryable=True)
            params = {"filename": item["filename"], "subfolder": str(item.get("subfolder", "")),
                      "type": str(item.get("type", "output"))}
            response = await self._send("GET", self._url + "/view", params=params)
            self._raise_for_status(response, None)
            if sniff_format(response.content) is None:
                raise SdError(200, f"ComfyUI sent something that is not an image for {item['filename']!r} of job "
                                   f"{prompt_id} (it starts with {response.content[:12]!r})", retryable=True)
            images.append(response.content)
        return images

    # --- progress and cancel ------------------------------------------------------------------------

    async def progress(self, *, preview: bool = False) -> SdProgress:
        """The step of our job computing now, as the socket last reported it (no request); with `preview`,
        the latest preview frame ComfyUI sent of that job (ComfyUI sends them when started with a
        `--preview-method`)."""
        ours = self._running in self._jobs
        step, steps, started = self._step if ours else (0, 0, 0.0)
        per_step = (time.monotonic() - started) / step if step else 0.0
        return SdProgress(progress=step / steps if steps else 0.0, eta_relative=(steps - step) * per_step,
                          sampling_step=step, sampling_steps=steps, job_count=len(self._jobs),
                          preview=self.preview if preview and ours else None,
                          node=self._running_node() if ours else None)

    def _running_node(self) -> str | None:
        """The class_type of the node of our job running now, from its `progress_state` and the graph we sent
        (the newest node started, when several are: a node expanded into others reports them all)."""
        graph = self._jobs[self._running or ""].graph
        running = [state for state in self.nodes.values() if state.get("state") == "running"]
        for state in reversed(running):
            for key in ("display_node_id", "node_id"):  # an expanded node's own id is not in our graph
                class_type = _obj(graph.get(str(state.get(key)))).get("class_type")
                if isinstance(class_type, str):
                    return class_type
        return None

    async def cancel(self) -> None:
        """Take our pending jobs off ComfyUI's queue, then interrupt ours if it is the one running."""
        await self._cancel(set(self._jobs))

    async def _cancel(self, mine: set[str], *, ended: bool = False) -> dict[str, str]:
        """Take these jobs off ComfyUI: dequeue those waiting, interrupt the one running (through
        `/api/jobs/{id}/cancel` where the server has it). Returns the state each was found in (see `_states`)."""
        if not mine:
            return {}
        states = await self._states(mine, ended=ended)
        pending = sorted(prompt_id for prompt_id, state in states.items() if state == PENDING)
        running = sorted(prompt_id for prompt_id, state in states.items() if state == RUNNING)
        if self._cancel_api:
            for prompt_id in pending + running:
                await self._json("POST", f"{self._jobs_path}/{prompt_id}/cancel", expect_json=False)
        else:
            if pending:
                await self._json("POST", "/queue", json={"delete": pending}, expect_json=False)
            for prompt_id in running:
                await self._json("POST", "/interrupt", json={"prompt_id": prompt_id}, expect_json=False)
        log.info("ComfyUI: %d queued job(s) of ours deleted, %d interrupted", len(pending), len(running))
        for prompt_id in mine:  # nobody waits for them any more
            self._jobs.pop(prompt_id, None)
        self._ended(*mine)
        return states

    async def _states(self, prompt_ids: set[str], *, ended: bool = False) -> dict[str, str]:
        """Where each job is on ComfyUI: PENDING or RUNNING (one request: the queue, or `/api/jobs` listing
        those two), else UNKNOWN; with `ended`, those are looked up one by one: ENDED when ComfyUI has their
        result, UNKNOWN when it never queued them or restarted since (its queue and history live in memory)."""
        if self._jobs_api:
            listing = _obj(await self._json("GET", self._jobs_path, params={"status": f"{PENDING},{RUNNING}"}))
            queued = {str(job.get("id")): str(job.get("status")) for job in map(_obj, listing.get("jobs") or [])}
        else:
            queue = await self._json("GET", "/queue")
            queued = {prompt_id: RUNNING for prompt_id in _queued_ids(queue, "queue_running")}
            queued |= {prompt_id: PENDING for prompt_id in _queued_ids(queue, "queue_pending")}
        states = {prompt_id: queued.get(prompt_id, UNKNOWN) for prompt_id in prompt_ids}
        for prompt_id in (prompt_id for prompt_id, state in states.items() if ended and state == UNKNOWN):
            states[prompt_id] = ENDED if await self._history(prompt_id) is not None else UNKNOWN
        return states

    async def _job(self, prompt_id: str) -> dict[str, Any] | None:
        """`GET /api/jobs/{id}`: the job (`status`, and `outputs` once it ended), None when ComfyUI has none."""
        path = f"{self._jobs_path}/{prompt_id}"
        response = await self._send("GET", self._url + path)
        if response.status_code == 404:
            return None
        body = self._parse(response)
        self._raise_for_status(response, body)
        if not isinstance(body, dict):
            raise SdError(response.status_code, f"ComfyUI sent an unusable answer to {path}: it is not a JSON "
                                                f"object: {quote(response.text)!r}", retryable=True)
        return body

    def _ended(self, *prompt_ids: str) -> None:
        if self._journal is not None and prompt_ids:
            self._journal.ended(*prompt_ids)

    # --- what the server offers, and jobs an earlier client left ------------------------------------------

    async def _ask_jobs_api(self) -> None:
        """Once: whether the server has `/api/jobs` (a list, not a 404) and `/api/jobs/{id}/cancel` (200 even for
        a job it does not know, which a made-up id is; a server without it answers 404 or 405)."""
        if self._jobs_api is not None:
            return
        listing = await self._send("GET", f"{self._url}{self._jobs_path}", params={"limit": "1"})
        self._jobs_api = listing.status_code == 200 and isinstance(_obj(self._parse(listing)).get("jobs"), list)
        if self._jobs_api:
            probe = await self._send("POST", f"{self._url}{self._jobs_path}/{uuid.uuid4()}/cancel")
            self._cancel_api = probe.status_code == 200
        log.info("%s: /api/jobs %s, /api/jobs/{id}/cancel %s", self._server,
                 "used" if self._jobs_api else "absent (an older ComfyUI: /history, /queue)",
                 "used" if self._cancel_api else "absent (/queue and /interrupt)")

    async def _drop_left_behind(self) -> None:
        """Take off ComfyUI the jobs an earlier client sent and never collected (its process was killed, or
        ComfyUI could not be reached to cancel them), and say in the log what became of each."""
        left = self._left_behind - set(self._jobs)
        if not left:
            return
        try:
            states = await self._cancel(left, ended=True)
        except SdError as exc:
            log.warning("ComfyUI: cannot take off the %d job(s) an earlier run left (%s); trying again at the next "
                        "run", len(left), exc.message)
            return
        self._left_behind = set()
        said = {PENDING: "dropped from the queue", RUNNING: "interrupted",
                ENDED: "had finished (their images are not collected)",
                UNKNOWN: "are unknown to ComfyUI (it restarted since)"}
        parts = [f"{', '.join(sorted(ids))} {words}" for state, words in said.items()
                 if (ids := [prompt_id for prompt_id, found in states.items() if found == state])]
        log.warning("ComfyUI: %d job(s) an earlier run sent and never collected: %s", len(left), "; ".join(parts))

    # --- the socket ------------------------------------------------------------------------------------

    def _start_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="comfyui-socket")

    async def _listen(self) -> None:
        """Follow the socket for as long as this client lives, reconnecting whenever it drops."""
        ws_url = "ws" + self._url.removeprefix("http") + f"/ws?clientId={self._client_id}"
        async for websocket in connect(ws_url, additional_headers=self._headers, max_size=_MAX_MESSAGE,
                                       process_exception=_retry_any, reconnect_delays=_reconnect_delays):
            self._socket_up = True
            try:
                await websocket.send(FEATURE_FLAGS)  # previews then say whose they are; older servers ignore it
                await self._read(websocket)
            except WebSocketException as exc:
                log.info("ComfyUI socket dropped (%s); polling the history until it is back", exc)
            finally:
                self._socket_up = False
                for job in self._jobs.values():
                    job.news.set()  # poll now: the end of a job may be lost with the socket

    async def _read(self, websocket: ClientConnection) -> None:
        async for message in websocket:
            if isinstance(message, bytes):
                self._on_frame(message)
                continue
            try:
                parsed = json.loads(message)
            except ValueError:
                continue
            if isinstance(parsed, dict) and isinstance(parsed.get("data"), dict):
                self._on_message(str(parsed.get("type")), parsed["data"])

    def _on_message(self, kind: str, data: dict[str, Any]) -> None:
        prompt_id = data.get("prompt_id")
        job = self._jobs.get(prompt_id) if isinstance(prompt_id, str) else None
        if kind == "executing":
            if data.get("node") is None:
                if job is not None:
                    job.hear(ended=True)
                if prompt_id == self._running:
                    self._running = None
            elif isinstance(prompt_id, str):
                if prompt_id != self._running:
                    self.preview = None  # the last job's picture is not this one's
                    self.nodes = {}
                self._running = prompt_id
        elif kind == "progress":
            job = job or self._jobs.get(self._running or "")  # older ComfyUI sends no prompt_id here
            value, steps = data.get("value"), data.get("max")
            if job is not None and isinstance(value, int) and isinstance(steps, int):
                step, _, started = self._step
                fresh = value <= step or not started  # a new sampler (or the first message we see of it)
                self._step = (value, steps, time.monotonic() if fresh else started)
        elif kind == "progress_state" and job is not None and isinstance(data.get("nodes"), dict):
            self.nodes = {str(node): _obj(state) for node, state in data["nodes"].items()}
        elif kind in ("execution_success", "execution_error", "execution_interrupted") and job is not None:
            if kind != "execution_success":
                job.failure = (kind, data)
            job.hear(ended=True)
            return
        if job is not None:
            job.hear()

    def _on_frame(self, frame: bytes) -> None:
        """A binary message: a preview frame of the job running. Event 1: 4-byte event and format, then the
        image, which is taken to be the running job's; event 4: 4-byte event and metadata length, the metadata
        (JSON, with the prompt id), then the image, kept only when the job is ours."""
        if len(frame) <= 8:
            return
        event, size = struct.unpack(">II", frame[:8])
        if event == PREVIEW_IMAGE and self._running in self._jobs:
            self.preview = frame[8:]
            self._jobs[self._running or ""].hear()
        elif event == PREVIEW_IMAGE_WITH_METADATA:
            try:
                prompt_id = _obj(json.loads(frame[8:8 + size])).get("prompt_id")
            except ValueError:
                return
            if isinstance(prompt_id, str) and prompt_id in self._jobs:
                if prompt_id != self._running:
                    self._running = prompt_id
                self.preview = frame[8 + size:]
                self._jobs[prompt_id].hear()

    # --- HTTP --------------------------------------------------------------------------------------------

    @staticmethod
    def _parse(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _raise_for_status(self, response: httpx.Response, body: Any) -> None:
        status = response.status_code
        if response.is_success:
            return
        text = validation_text(body) if isinstance(body, dict) else quote(response.text) or response.reason_phrase
        if status in (401, 403):
            text += f" ({self._credentials_hint()})"
        raise SdError(status, f"ComfyUI error {status} {text}", retryable=status >= 500 or status in (408, 429))

    def _credentials_hint(self) -> str:
        settings = self._settings
        if settings.username:
            return f"check sd.username and the password in ${settings.password_env}"
        if settings.comfyui.token_env:
            return f"check the token in ${settings.comfyui.token_env}"
        return "the proxy in front of ComfyUI wants credentials: set sd.username or [sd.comfyui] token_env"

    async def _send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """One request to the server, with the reverse proxy's credentials."""
        return await send(self._http, method, url, server=self._server, headers=self._headers, **options)

    async def _json(self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                    expect_json: bool = True) -> Any:
        """One request; the parsed JSON body, or SdError for every way it can fail."""
        response = await self._send(method, self._url + path, json=json, params=params)
        body = self._parse(response)
        self._raise_for_status(response, body)
        if expect_json and body is None:
            raise SdError(response.status_code, f"ComfyUI sent an unusable answer to {path}: it is not JSON: "
                                                f"{quote(response.text)!r}", retryable=True)
        return body

    # --- life cycle --------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await super().aclose()
