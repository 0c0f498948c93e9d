"""A simulated Stable Diffusion web UI API (AUTOMATIC1111 `--api`), for demo mode and tests.

It answers the `/sdapi/v1` routes avatargen uses with the same status codes and bodies as the real
web UI: txt2img applies the web UI's defaults, answers 422 in FastAPI's shape for a wrong type and
500 `{"error", "detail", "body", "errors"}` for a failure, and returns real PNGs drawn by
`avatargen.simulator.drawing`. Jobs run one at a time, first in first out, and take time:

    seconds per job = steps * step_time * batch_factor * n_iter,  batch_factor = 1 + 0.18 * (batch_size - 1)

so a batch of two takes 1.18 times as long as one image (about 1.7x the images per second, as
measured on an A100) and larger batches keep gaining a little. Progress rises with the sampling step;
interrupt makes the pending txt2img return early with the (blurred, half-denoised) images it has.
Live previews follow the web UI's options (`live_previews_enable`, `show_progress_every_n_steps`, also
as a request's `override_settings`): progress's `current_image` is the first image of the batch being
sampled, a PNG at full size going from noise to the final picture, renewed every N steps (-1: none
while sampling; the web UI's grid of a whole batch, `show_progress_grid`, is not drawn).
After each `boot()` the routes answer 404 for `sd_boot_delay`, as while the real web UI mounts them.

`gpu.simulated.webui` picks which web UI it is, where real ones differ behind the same API (seen on
AUTOMATIC1111 1.10 and on Forge Classic): AUTOMATIC1111 has `/sdapi/v1/schedulers`, reads a
request's `scheduler` and quietly uses its first sampler for an unknown name; Forge has no schedulers,
names the schedule in the sampler ("DPM++ 2M Karras" beside "DPM++ 2M"), answers 404 "Sampler not
found" for an unknown one, draws no live preview unless the options ask for one, and its
`options.sd_model_checkpoint` is null until a model is set. Both list models titled
`name.safetensors [shorthash]` and know each by the same names (`CheckpointInfo.ids`); a request's
`override_settings.sd_model_checkpoint` that is none of them quietly keeps the loaded model (the trap
`sd.checkpoint` guards against), and `POST /sdapi/v1/options` answers 500 for it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avatargen.config import SimulatedSettings
from avatargen.simulator.auth import basic_auth_matches
from avatargen.simulator.drawing import avatar_png, preview_png
from avatargen.simulator.faults import Faults
from avatargen.simulator.service import SimRoute, simulated_app

_MODELS_DIR = "/notebooks/stable-diffusion-webui/models/Stable-diffusion/"
MODEL: dict[str, Any] = {  # the owner's model, loaded at start
    "title": "cjs-dreambooth.safetensors [3f6a1c9e2b]",
    "model_name": "cjs-dreambooth",
    "hash": "3f6a1c9e2b",
    "sha256": "3f6a1c9e2b0d4e6a8c1b5f7d9e2a4c6b8d0f1e3a5c7b9d2f4e6a8c0b1d3f5e7a",
    "filename": _MODELS_DIR + "cjs-dreambooth.safetensors",
    "config": None,
}
STRANGER: dict[str, Any] = {  # a stock model beside it: what an unknown name would quietly give
    "title": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
    "model_name": "v1-5-pruned-emaonly",
    "hash": "6ce0161689",
    "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    "filename": _MODELS_DIR + "v1-5-pruned-emaonly.safetensors",
    "config": None,
}
MODELS = (MODEL, STRANGER)
DEFAULT_SAMPLER = "Euler"  # the request model's `sampler_index`, used when no sampler_name is given


def model_ids(model: dict[str, Any]) -> list[str]:
    """Every name the web UI knows a model by (AUTOMATIC1111's `CheckpointInfo.ids`, kept by Forge)."""
    name = model["title"].rsplit(" [", 1)[0]  # the path under the models folder
    name_for_extra = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    shorthash = model["sha256"][:10]
    return [model["hash"], model["model_name"], model["title"], name, name_for_extra, f"{name} [{model['hash']}]",
            shorthash, model["sha256"], f"{name} [{shorthash}]", f"{name_for_extra} [{shorthash}]"]


@dataclass(frozen=True)
class WebUiKind:
    """What sets one web UI apart from another behind the same `/sdapi/v1` API."""

    samplers: tuple[tuple[str, tuple[str, ...]], ...]  # (name, aliases) as /sdapi/v1/samplers lists them
    schedulers: tuple[str, ...]  # /sdapi/v1/schedulers' labels; none: the route answers 404
    unknown_sampler_is_404: bool  # Forge: 404 "Sampler not found"; AUTOMATIC1111: its first sampler, quietly
    live_previews: bool  # the options' live_previews_enable when nothing set it
    names_loaded_model: bool  # options.sd_model_checkpoint names the model from the start (Forge: null until set)

    def sampler_names(self) -> dict[str, str]:
        """Every name and alias -> the sampler it means."""
        return {alias: name for name, aliases in self.samplers for alias in (name, *aliases)}


WEBUIS = {
    "automatic1111": WebUiKind(  # 1.10
        samplers=(("DPM++ 2M", ("k_dpmpp_2m",)), ("DPM++ SDE", ("k_dpmpp_sde",)),
                  ("DPM++ 2M SDE", ("k_dpmpp_2m_sde",)), ("Euler a", ("k_euler_a", "k_euler_ancestral")),
                  ("Euler", ("k_euler",)), ("Heun", ("k_heun",)), ("DDIM", ()), ("UniPC", ()), ("LCM", ())),
        schedulers=("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
                    "Simple", "Normal", "DDIM", "Beta"),
        unknown_sampler_is_404=False, live_previews=True, names_loaded_model=True),
    "forge": WebUiKind(  # Forge Classic, February 2025
        samplers=(("DPM++ 2M Karras", ("k_dpmpp_2m_ka",)), ("DPM++ SDE Karras", ("k_dpmpp_sde_ka",)),
                  ("Euler a", ("k_euler_a", "k_euler_ancestral")), ("Euler", ("k_euler",)), ("Heun", ("k_heun",)),
                  ("DPM++ 2M", ("k_dpmpp_2m",)), ("DPM++ SDE", ("k_dpmpp_sde",)),
                  ("DPM++ 2M SDE", ("k_dpmpp_2m_sde_ka",)), ("DPM++ 2M SDE Karras", ("k_dpmpp_2m_sde_ka",)),
                  ("DDIM", ()), ("UniPC", ()), ("LCM", ())),
        schedulers=(), unknown_sampler_is_404=True, live_previews=False, names_loaded_model=False),
}
BATCH_COST = 0.18  # each extra image in a batch adds this share of a one-image batch's time
SLOW_FIRST_FACTOR = 5.0  # sd_slow_first: the first job after a boot takes this many times as long

# txt2img fields: (kind, default). A kind ending in "?" also accepts null. Unknown fields are ignored,
# as the web UI's request model does.
_TXT2IMG_FIELDS: dict[str, tuple[str, Any]] = {
    "prompt": ("str", ""),
    "negative_prompt": ("str", ""),
    "styles": ("list", []),
    "seed": ("int", -1),
    "subseed": ("int", -1),
    "subseed_strength": ("float", 0.0),
    "sampler_name": ("str?", None),
    "scheduler": ("str?", None),
    "batch_size": ("int", 1),
    "n_iter": ("int", 1),
    "steps": ("int", 50),
    "cfg_scale": ("float", 7.0),
    "width": ("int", 512),
    "height": ("int", 512),
    "restore_faces": ("bool?", None),
    "tiling": ("bool?", None),
    "override_settings": ("dict?", None),
    "override_settings_restore_afterwards": ("bool", True),
    "send_images": ("bool", True),
    "save_images": ("bool", False),
}
_LIMITS = {"steps": (1, 150), "batch_size": (1, 16), "n_iter": (1, 100), "width": (64, 2048),
           "height": (64, 2048)}
_GONE = Response(status_code=503)  # the answer of a request whose machine went off: nobody receives it
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


class _Invalid(Exception):
    """A value of the wrong type, worded as pydantic (v1, which the web UI uses) words it."""

    def __init__(self, msg: str, kind: str) -> None:
        super().__init__(msg)
        self.msg, self.kind = msg, kind


def _coerce(kind: str, value: Any) -> Any:
    """Check and convert one field the way pydantic v1 does (it accepts "20" for an int, for example)."""
    if value is None:
        if kind.endswith("?"):
            return None
        raise _Invalid("none is not an allowed value", "type_error.none.not_allowed")
    kind = kind.rstrip("?")
    if kind == "int":
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise _Invalid("value is not a valid integer", "type_error.integer")
    if kind == "float":
        try:
            if isinstance(value, int | float | str):
                return float(value)
        except ValueError:
            pass
        raise _Invalid("value is not a valid float", "type_error.float")
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _Invalid("str type expected", "type_error.str")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | str) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise _Invalid("value could not be parsed to a boolean", "type_error.bool")
    if kind == "dict":
        if isinstance(value, dict):
            return value
        raise _Invalid("value is not a valid dict", "type_error.dict")
    if isinstance(value, list):
        return value
    raise _Invalid("value is not a valid list", "type_error.list")


def parse_txt2img(body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The request with the web UI's defaults applied, and FastAPI-style errors (empty when valid)."""
    try:
        document = json.loads(body or b"{}")
    except ValueError as exc:
        return {}, [{"loc": ["body", getattr(exc, "pos", 0)], "msg": str(exc).split(":")[0],
                     "type": "value_error.jsondecode"}]
    if not isinstance(document, dict):
        return {}, [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    params: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name, (kind, default) in _TXT2IMG_FIELDS.items():
        try:
            params[name] = _coerce(kind, document[name]) if name in document else default
        except _Invalid as exc:
            errors.append({"loc": ["body", name], "msg": exc.msg, "type": exc.kind})
    return params, errors


def batch_factor(batch_size: int) -> float:
    """How much longer a batch takes than one image: the GPU computes a batch's images together."""
    return 1 + BATCH_COST * (batch_size - 1)


def _detail(status: int, message: str) -> JSONResponse:
    """FastAPI's error answer (an unknown route, a refused request): `{"detail": ...}`."""
    return JSONResponse({"detail": message}, status_code=status)


def _failure(error: str, detail: str, status: int = 500) -> JSONResponse:
    """The web UI's answer for an exception in a request: `{"error", "detail", "body", "errors"}`."""
    return JSONResponse({"error": error, "detail": detail, "body": "", "errors": detail}, status_code=status)


@dataclass
class _Job:
    """The txt2img being computed, as /progress reports it."""

    params: dict[str, Any]
    seed: int
    options: dict[str, Any]  # the web UI's options with the request's override_settings applied
    step_seconds: float
    iteration: int = 0
    step: int = 0
    interrupted: bool = False
    skipped: bool = False
    denoised: list[float] = field(default_factory=list)  # one entry per batch computed so far
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))
    preview: tuple[tuple[int, int], str] | None = None  # (iteration, step) it shows, base64 PNG

    @property
    def steps(self) -> int:
        return int(self.params["steps"])

    @property
    def iterations(self) -> int:
        return int(self.params["n_iter"])

    def preview_step(self) -> int:
        """The step the live preview shows now (0: none yet), as the web UI renews it every N steps."""
        every = int(self.options.get("show_progress_every_n_steps", 10))
        if not self.options.get("live_previews_enable", True) or every < 0:
            return 0
        return self.step if every == 0 else self.step // every * every


class SimulatedSdWebUi:
    """The simulated web UI's state (job queue, boot phase, options) and its Starlette app (`.app`).

    Tests may read `queue_length` (txt2img requests waiting or computing), `completed` (prompts in
    the order their jobs finished) and `busy_seconds` (time spent on jobs: what the GPU works of the
    billed time, which the GPU efficiency benchmark compares).
    """

    def __init__(self, settings: SimulatedSettings, faults: Faults, *, auth: tuple[str, str] | None = None,
                 after_txt2img: Callable[[], Awaitable[None]] | None = None) -> None:
        self._settings = settings
        self._faults = faults
        self._auth = auth
        self._after_txt2img = after_txt2img
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters first come, first served: FIFO jobs
        self._job: _Job | None = None
        self.kind = WEBUIS[settings.webui]
        self._models = {name: model for model in MODELS for name in model_ids(model)}
        self.loaded = MODEL  # the model the web UI has loaded: a request's override applies to that request only
        self._options: dict[str, Any] = {
            "sd_model_checkpoint": MODEL["title"] if self.kind.names_loaded_model else None,
            "samples_format": "png", "sd_checkpoint_hash": MODEL["sha256"],
            "live_previews_enable": self.kind.live_previews, "show_progress_every_n_steps": 10,
            "show_progress_grid": True}
        self.queue_length = 0
        self.completed: list[str] = []
        self._power_cycle = 0  # counts power-offs: a request from before one has no one to answer
        self.busy_seconds = 0.0
        self._mounted_at = 0.0
        self._first_job_pending = True
        self.boot()
        routes = [
            SimRoute("/sdapi/v1/txt2img", self._txt2img, ("POST",)),
            SimRoute("/sdapi/v1/progress", self._progress),
            SimRoute("/sdapi/v1/interrupt", self._interrupt, ("POST",)),
            SimRoute("/sdapi/v1/skip", self._skip, ("POST",)),
            SimRoute("/sdapi/v1/sd-models", self._sd_models),
            SimRoute("/sdapi/v1/options", self._options_route, ("GET", "POST")),
            SimRoute("/sdapi/v1/samplers", self._samplers),
            *([SimRoute("/sdapi/v1/schedulers", self._schedulers)] if self.kind.schedulers else []),
        ]
        self.app: Starlette = simulated_app(routes, faults=faults, gate=self._refuse, sim_gate=self._unauthorized,
                                            error=_detail)

    def boot(self) -> None:
        """The web UI process starts: routes mount after `sd_boot_delay`, the first job may be slow."""
        self._mounted_at = time.monotonic() + self._settings.sd_boot_delay
        self._first_job_pending = True

    def power_off(self) -> None:
        """The machine goes down: the job computing ends now, jobs waiting for their turn end on it."""
        self._power_cycle += 1
        if self._job is not None:
            self._job.interrupted = True

    def _refuse(self, request: Request) -> Response | None:
        """404 while the routes are not mounted yet, 401 for wrong Basic credentials, else None."""
        if time.monotonic() < self._mounted_at:
            return _detail(404, "Not Found")
        return self._unauthorized(request)

    def _unauthorized(self, request: Request) -> Response | None:
        """401 for wrong Basic credentials when the web UI runs with --api-auth, else None."""
        if self._auth is None:
            return None
        if not basic_auth_matches(request.headers.get("authorization", ""), self._auth):
            return JSONResponse({"detail": "Incorrect username or password"}, status_code=401,
                                headers={"WWW-Authenticate": "Basic"})
        return None

    async def _txt2img(self, request: Request) -> Response:
        params, errors = parse_txt2img(await request.body())
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        for name, (low, high) in _LIMITS.items():
            if not low <= params[name] <= high:
                return _failure("ValueError", f"{name} must be from {low} to {high}, got {params[name]}")
        sampler = self._sampler(params)
        if sampler is None:
            return _detail(404, "Sampler not found")
        params["sampler_name"], params["scheduler"] = sampler
        self.queue_length += 1
        power_cycle = self._power_cycle
        try:
            async with self._lock:
                began = time.monotonic()
                try:
                    return await self._run_job(params, power_cycle)
                finally:
                    self.busy_seconds += time.monotonic() - began
        finally:
            self.queue_length -= 1

    async def _run_job(self, params: dict[str, Any], power_cycle: int) -> Response:
        """Compute one txt2img under the lock and build its answer (or the fault asked for)."""
        if self._power_cycle != power_cycle:
            return _GONE
        if self._faults.hit("sd_500"):
            return _failure("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                                "15.73 GiB total capacity; 13.12 GiB already allocated)")
        slow = SLOW_FIRST_FACTOR if self._first_job_pending and "sd_slow_first" in self._faults else 1.0
        self._first_job_pending = False
        seed = params["seed"] if params["seed"] != -1 else random.randrange(2**32)
        options = {**self._options, **(params["override_settings"] or {})}
        model = self._models.get(options["sd_model_checkpoint"] or "", self.loaded)  # unknown: quietly the loaded one
        job = _Job(params, seed, options,
                   step_seconds=self._settings.step_time * batch_factor(params["batch_size"]) * slow)
        self._job = job
        try:
            await self._compute(job)
        finally:
            self._job = None
        if self._power_cycle != power_cycle:
            return _GONE
        self.completed.append(params["prompt"])
        if (garbage := self._faults.hit("sd_garbage")) is not None:
            if garbage % 2:
                return Response("<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", status_code=502,
                                media_type="text/html")
            return Response('{"images": ["iVBORw0KGgoAAAANSUhEUgAA', media_type="application/json")
        images = await asyncio.to_thread(self._draw, params, seed, job.denoised)
        if (invalid := self._faults.hit("sd_invalid_image")) is not None:
            fake = base64.b64encode(b"\x00not an image\x00" * 8).decode() if invalid % 2 else "not base64 at all!"
            images = [fake for _ in images]
        info = self._info(params, seed, model, job)
        background = BackgroundTask(self._after_txt2img) if self._after_txt2img else None
        return JSONResponse({"images": images if params["send_images"] else [], "parameters": params,
                             "info": json.dumps(info)}, background=background)

    async def _compute(self, job: _Job) -> None:
        """Sleep through the sampling steps, batch after batch, honouring interrupt and skip."""
        for iteration in range(job.iterations):
            job.iteration, job.step, job.skipped = iteration, 0, False
            while job.step < job.steps and not (job.interrupted or job.skipped):
                await asyncio.sleep(job.step_seconds)
                job.step += 1
            job.denoised.append(job.step / job.steps)
            if job.interrupted:
                return

    @staticmethod
    def _draw(params: dict[str, Any], seed: int, denoised: list[float]) -> list[str]:
        batch = params["batch_size"]
        return [
            base64.b64encode(avatar_png(params["prompt"], seed + index, params["width"], params["height"],
                                        denoised=denoised[index // batch])).decode()
            for index in range(batch * len(denoised))
        ]

    def _sampler(self, params: dict[str, Any]) -> tuple[str, str | None] | None:
        """The (sampler, schedule) a request gets: AUTOMATIC1111 splits a schedule off the name and uses its
        first sampler for an unknown one; Forge takes the name as it is and refuses an unknown one (None)."""
        names, kind = self.kind.sampler_names(), self.kind
        wanted = params["sampler_name"] or DEFAULT_SAMPLER
        if not kind.schedulers:
            return (names[wanted], None) if wanted in names else None
        schedule = params["scheduler"] or "Automatic"
        for label in kind.schedulers:
            if wanted.endswith(" " + label):
                wanted, schedule = wanted.removesuffix(" " + label), label
        return names.get(wanted, kind.samplers[0][0]), schedule

    @staticmethod
    def _info(params: dict[str, Any], seed: int, model: dict[str, Any], job: _Job) -> dict[str, Any]:
        count = params["batch_size"] * params["n_iter"]
        all_seeds = [seed + index for index in range(count)]
        infotexts = [
            f"{params['prompt']}\nNegative prompt: {params['negative_prompt']}\nSteps: {params['steps']}, "
            f"Sampler: {params['sampler_name']}, CFG scale: {params['cfg_scale']:g}, Seed: {image_seed}, "
            f"Size: {params['width']}x{params['height']}, Model hash: {model['hash']}, "
            f"Model: {model['model_name']}"
            for image_seed in all_seeds
        ]
        return {
            "prompt": params["prompt"], "all_prompts": [params["prompt"]] * count,
            "negative_prompt": params["negative_prompt"], "seed": seed, "all_seeds": all_seeds,
            "subseed": params["subseed"], "width": params["width"], "height": params["height"],
            "sampler_name": params["sampler_name"], "scheduler": params["scheduler"],
            "cfg_scale": params["cfg_scale"], "steps": params["steps"],
            "batch_size": params["batch_size"], "sd_model_name": model["model_name"],
            "sd_model_hash": model["hash"], "index_of_first_image": 0, "infotexts": infotexts,
            "job_timestamp": job.timestamp,
        }

    async def _progress(self, request: Request) -> Response:
        job = self._job
        if job is None:
            return JSONResponse({"progress": 0, "eta_relative": 0, "state": {
                "skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
                "job_no": 0, "sampling_step": 0, "sampling_steps": 0}, "current_image": None, "textinfo": None})
        total = job.iterations * job.steps
        done = job.iteration * job.steps + job.step
        return JSONResponse({
            "progress": done / total,
            "eta_relative": (total - done) * job.step_seconds,
            "state": {"skipped": job.skipped, "interrupted": job.interrupted, "job": f"Batch {job.iteration + 1}",
                      "job_count": job.iterations, "job_timestamp": job.timestamp, "job_no": job.iteration,
                      "sampling_step": job.step, "sampling_steps": job.steps},
            "current_image": None if request.query_params.get("skip_current_image") in _TRUE
            else await self._current_image(job),
            "textinfo": None,
        })

    @staticmethod
    async def _current_image(job: _Job) -> str | None:
        """The job's live preview, drawn when first asked for after the step it shows (a real web UI draws
        it whether asked or not; nobody can tell the difference)."""
        step = job.preview_step()
        if step == 0:
            return None
        shows = (job.iteration, step)
        if job.preview is None or job.preview[0] != shows:
            params = job.params
            seed = job.seed + job.iteration * params["batch_size"]  # the batch's first image
            png = await asyncio.to_thread(preview_png, params["prompt"], seed, params["width"], params["height"],
                                          denoised=step / job.steps)
            job.preview = shows, base64.b64encode(png).decode()
        return job.preview[1]

    async def _interrupt(self, request: Request) -> Response:
        if self._job is not None:
            self._job.interrupted = True
        return JSONResponse({})

    async def _skip(self, request: Request) -> Response:
        if self._job is not None:
            self._job.skipped = True
        return JSONResponse({})

    async def _sd_models(self, request: Request) -> Response:
        return JSONResponse(list(MODELS))

    async def _samplers(self, request: Request) -> Response:
        return JSONResponse([{"name": name, "aliases": list(aliases), "options": {}}
                             for name, aliases in self.kind.samplers])

    async def _schedulers(self, request: Request) -> Response:
        return JSONResponse([{"name": label.lower().replace(" ", "_"), "label": label, "aliases": None,
                              "default_rho": -1, "need_inner_model": False} for label in self.kind.schedulers])

    async def _options_route(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.body())
            except ValueError:
                changes = None
            if not isinstance(changes, dict):
                return JSONResponse({"detail": [{"loc": ["body"], "msg": "value is not a valid dict",
                                                 "type": "type_error.dict"}]}, status_code=422)
            if "sd_model_checkpoint" in changes:
                if (model := self._models.get(str(changes["sd_model_checkpoint"]))) is None:
                    return _failure("RuntimeError", f"model {changes['sd_model_checkpoint']!r} not found")
                self.loaded = model
            self._options.update(changes)
            return JSONResponse(None)
        return JSONResponse(self._options)
