"""Client of the Stable Diffusion web UI API (AUTOMATIC1111 `--api`, and Forge / SD.Next which keep it).

Every way the web UI (or a proxy in front of it) can fail becomes one `SdError` with a message the
owner can act on, e.g. "SD web UI error 500 OutOfMemoryError: CUDA out of memory", and a `retryable`
flag that tells the generator whether asking again may help. `probe` is the readiness check of a
run: the machine being ready says nothing about the web UI, which opens its port before mounting its
routes and loads the checkpoint after that.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from avatargen.config import SdSettings
from avatargen.http_client import HttpClient
from avatargen.imaging import sniff_format
from avatargen.redact import redact_url
from avatargen.sd.base import Generated, SdError, SdNotReady, SdProgress, quote, send
from avatargen.sd.checkpoints import resolve_checkpoint
from avatargen.sd.samplers import webui_sampler

log = logging.getLogger(__name__)

TXT2IMG_TIMEOUT = 900.0  # seconds: txt2img answers only when the images are done, a big batch takes minutes
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
PREVIEWS_PER_IMAGE = 5  # live previews asked of the web UI per image, when previews are on
# The web UI's cheapest preview: a fixed linear map of the latent, no model to load. Forge's default (TAESD)
# downloads a decoder at the first preview, which a machine without internet never gets (no preview at all);
# the panel shows a thumbnail of a few kB, for which this is plenty.
PREVIEW_METHOD = "Approx cheap"
_NOT_JSON = object()
PROXY_TIMEOUT = 524  # Cloudflare's "a timeout occurred": RunPod's proxy cuts every request at 100 s


@dataclass(frozen=True)
class Txt2ImgResult:
    """One txt2img answer: base64 images (PNG unless the web UI is set otherwise), the seed of each
    (-1 where the web UI did not say), the parsed `info` and the echoed request `parameters`."""

    images: list[str]
    seeds: list[int]
    info: dict[str, Any]
    parameters: dict[str, Any]


def _error_text(body: Any, raw: str) -> str:
    """What went wrong, from each error shape the web UI and FastAPI produce."""
    if isinstance(body, dict) and body.get("error"):  # an exception: {"error", "detail", "body", "errors"}
        detail = body.get("detail") or body.get("errors")
        return quote(f"{body['error']}: {detail}" if detail else str(body["error"]))
    if isinstance(body, dict) and isinstance(body.get("detail"), list):  # FastAPI's 422
        problems = []
        for item in body["detail"]:
            item = item if isinstance(item, dict) else {"msg": item}
            where = ".".join(str(part) for part in item.get("loc", []) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return "invalid request: " + "; ".join(problems)
    if isinstance(body, dict) and body.get("detail"):
        return quote(str(body["detail"]))
    if body is _NOT_JSON:
        return f"the answer is not JSON: {quote(raw)!r}"
    return quote(raw)


def _unusable(text: str) -> SdError:
    """A 200 answer that cannot be used (garbled, cut off): worth asking again."""
    return SdError(200, f"SD web UI sent an unusable answer: {text}", retryable=True)


def _check_image(index: int, image: Any) -> None:
    """Refuse what cannot be an image before it reaches a bucket."""
    if not isinstance(image, str):
        raise _unusable(f"image {index} is not a base64 string")
    try:
        data = base64.b64decode(image, validate=True)
    except binascii.Error:
        raise _unusable(f"image {index} is not valid base64: {image[:40]!r}") from None
    if sniff_format(data) is None:
        raise _unusable(f"image {index} is not a PNG, JPEG or WebP image (it starts with {data[:12]!r})")


def _parse_info(info: Any) -> dict[str, Any]:
    """`info` is a JSON document encoded as a string (some forks send the object itself)."""
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            return {}
    return info if isinstance(info, dict) else {}


def _seeds(info: dict[str, Any], count: int) -> list[int]:
    """The seed of each image: `all_seeds`, else `seed` + i as the web UI numbers them, else -1."""
    all_seeds = info.get("all_seeds")
    if isinstance(all_seeds, list) and len(all_seeds) >= count and all(isinstance(s, int) for s in all_seeds):
        return all_seeds[:count]
    seed = info.get("seed")
    return [seed + index if isinstance(seed, int) else -1 for index in range(count)]


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value or 0)
    except (TypeError, ValueError):
        raise _unusable(f"progress holds {value!r} where a number belongs") from None


def _preview(image: Any) -> bytes | None:
    """The live preview's image file, or None when there is none or it is not a usable image (it only
    decorates the progress bar, so a bad one is dropped rather than failing anything)."""
    if not isinstance(image, str) or not image:
        return None
    try:
        data = base64.b64decode(image.partition("base64,")[2] or image, validate=True)
    except binascii.Error:
        return None
    return data if sniff_format(data) else None


class SdClient(HttpClient):
    """The web UI routes avatargen uses; Basic auth when `sd.username` is set (password from the env).

    It is the `a1111` backend (`avatargen.sd.base.SdBackend`): AUTOMATIC1111, Forge, reForge and SD.Next
    all keep this API. With `live_previews`, each txt2img asks the web UI (for that request only:
    `override_settings`) to draw a live preview of the image every few steps, which `progress(preview=True)`
    fetches.
    """

    name = "a1111"

    def __init__(self, settings: SdSettings, *, url: str | None = None, http: httpx.AsyncClient | None = None,
                 txt2img_timeout: float = TXT2IMG_TIMEOUT, live_previews: bool = False) -> None:
        super().__init__(http, timeout=_TIMEOUT)
        self._settings = settings
        self._live_previews = live_previews
        self._url = (url or settings.url).rstrip("/")
        self.shown_url = redact_url(self._url)  # for messages: they end up in logs, events and the status
        self._txt2img_timeout = httpx.Timeout(txt2img_timeout, connect=10.0)
        self._auth = httpx.BasicAuth(settings.username, settings.password().reveal()) if settings.username else None
        # What the server calls the owner's model and sampler, settled by `probe` (the config's words until then)
        self._checkpoint = settings.checkpoint
        self._sampler = settings.sampler
        self._preview_every = max(1, settings.steps // PREVIEWS_PER_IMAGE)
        self._previews_seen = False  # whether the web UI has drawn one: if not, the owner is told once
        self.settled = ""  # what `probe` settled of the model and sampler, in words (for the log and check-config)

    def __repr__(self) -> str:
        return f"SdClient({self.shown_url!r}, username={self._settings.username!r})"

    async def txt2img(self, prompt: str, *, batch_size: int, seed: int = -1) -> Txt2ImgResult:
        """Generate `batch_size` images in one pass; waits until they are done (a long read timeout)."""
        settings = self._settings
        payload: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": settings.negative_prompt, "seed": seed,
            "sampler_name": self._sampler, "steps": settings.steps, "cfg_scale": settings.cfg_scale,
            "width": settings.width, "height": settings.height, "batch_size": batch_size,
        }
        overrides: dict[str, Any] = {}
        if self._checkpoint:
            overrides["sd_model_checkpoint"] = self._checkpoint
        if self._live_previews:  # one image, not the grid of the whole batch, a few times per image
            overrides.update(live_previews_enable=True, show_progress_grid=False,
                             show_progress_every_n_steps=self._preview_every, show_progress_type=PREVIEW_METHOD)
        if overrides:
            payload["override_settings"] = overrides
        body = await self._call("POST", "/sdapi/v1/txt2img", json=payload, timeout=self._txt2img_timeout)
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images:
            raise _unusable("it has no images (the 'images' list is missing or empty)")
        for index, image in enumerate(images):
            _check_image(index, image)
        info = _parse_info(body.get("info"))
        parameters = body.get("parameters")
        return Txt2ImgResult(images=images, seeds=_seeds(info, len(images)), info=info,
                             parameters=parameters if isinstance(parameters, dict) else {})

    async def generate(self, prompt: str, *, count: int, seed: int = -1) -> Generated:
        """One txt2img of `count` images, with the model the web UI names in its answer."""
        result = await self.txt2img(prompt, batch_size=count, seed=seed)
        return Generated(images=result.images, seeds=result.seeds,
                         metadata={"backend": self.name, "model": result.info.get("sd_model_name")})

    async def progress(self, *, preview: bool = False) -> SdProgress:
        """The current job's progress; with `preview`, also its live preview (a few hundred kB: ask sparingly)."""
        skip = "false" if preview else "true"
        body = await self._call("GET", "/sdapi/v1/progress", params={"skip_current_image": skip})
        state = body.get("state") if isinstance(body, dict) else None
        if not isinstance(state, dict):
            raise _unusable("the progress answer has no 'state'")
        return SdProgress(
            progress=_number(body.get("progress"), float), eta_relative=_number(body.get("eta_relative"), float),
            sampling_step=_number(state.get("sampling_step"), int),
            sampling_steps=_number(state.get("sampling_steps"), int), job_count=_number(state.get("job_count"), int),
            preview=self._live_preview(body, state) if preview else None,
        )

    def _live_preview(self, body: dict[str, Any], state: dict[str, Any]) -> bytes | None:
        """The job's live preview; when a job is past two preview periods without one, the log says once
        that this web UI draws none (its options or version), and the panel shows the step bar alone."""
        picture = _preview(body.get("current_image"))
        if picture is not None:
            self._previews_seen = True
        elif not self._previews_seen and _number(state.get("sampling_step"), int) > 2 * self._preview_every:
            self._previews_seen = True
            log.info("the SD web UI at %s draws no live previews (asked for every %d steps, method %r): the panel "
                     "shows the step bar without a picture", self.shown_url, self._preview_every, PREVIEW_METHOD)
        return picture

    async def interrupt(self) -> None:
        """Stop the current job early: its pending txt2img still answers, with the images it has."""
        await self._call("POST", "/sdapi/v1/interrupt")

    async def cancel(self) -> None:
        """The web UI computes one job at a time and queues nothing of ours: interrupting it is enough."""
        await self.interrupt()

    async def sd_models(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/sdapi/v1/sd-models")
        if not isinstance(body, list) or not all(isinstance(model, dict) for model in body):
            raise _unusable("sd-models is not a list of models")
        return body

    async def samplers(self) -> dict[str, list[str]]:
        """The server's samplers: name -> aliases."""
        body = await self._call("GET", "/sdapi/v1/samplers")
        if not isinstance(body, list) or not all(isinstance(item, dict) and item.get("name") for item in body):
            raise _unusable("samplers is not a list of samplers")
        return {str(item["name"]): [str(alias) for alias in item.get("aliases") or []] for item in body}

    async def has_schedulers(self) -> bool:
        """Whether the server splits samplers and schedules (AUTOMATIC1111 1.9+); Forge Classic does not."""
        try:
            await self._call("GET", "/sdapi/v1/schedulers")
        except SdError as exc:
            if exc.status in (404, 405):
                return False
            raise
        return True

    async def probe(self, checkpoint: str) -> None:
        """Return when the web UI can generate; SdNotReady while it boots (poll again), SdError otherwise.

        With `checkpoint` set it must name exactly one of the web UI's models, as the web UI matches names
        (`avatargen.sd.checkpoints`): for an unknown one the web UI silently falls back to its default
        model, and the owner would pay for avatars of a stranger. `sd.sampler` must be one the server has
        (it would silently use its default sampler too); where the server has no schedulers, the name
        with the schedule AUTOMATIC1111 pairs with it is sent instead.
        """
        try:
            models = await self.sd_models()
        except SdNotReady:
            raise
        except SdError as exc:
            if exc.retryable or exc.status == 404:  # refused, 5xx from a proxy, routes not mounted yet
                raise SdNotReady(f"the SD web UI is not ready: {exc.message}", exc.status) from exc
            raise
        if not models:
            raise SdNotReady("the SD web UI lists no models yet (still loading)", 200)
        try:
            self._checkpoint = resolve_checkpoint(checkpoint, models) if checkpoint else ""
            self._sampler, note = webui_sampler(self._settings.sampler, await self.samplers(),
                                                has_schedulers=await self.has_schedulers())
        except ValueError as exc:  # CheckpointMismatch, or an unknown sampler
            raise SdError(None, str(exc), retryable=False) from None
        self.settled = "; ".join(filter(None, [
            f"sd.checkpoint {checkpoint!r} is the SD web UI's {self._checkpoint!r}" if checkpoint else "",
            note or f"sampler {self._sampler!r}"]))
        log.info("SD web UI at %s: %s", self.shown_url, self.settled)

    async def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
                    timeout: httpx.Timeout | None = None) -> Any:
        """One request; the parsed JSON body, or SdError for every way it can fail."""
        response = await send(self._http, method, self._url + path, server=f"the SD web UI at {self.shown_url}",
                              json=json, params=params, auth=self._auth or httpx.USE_CLIENT_DEFAULT,
                              timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        try:
            body = response.json()
        except ValueError:
            body = _NOT_JSON
        status = response.status_code
        if response.is_success:
            if body is _NOT_JSON:
                raise _unusable(_error_text(body, response.text))
            return body
        text = _error_text(body, response.text)
        if status == 401:
            text += f" (check sd.username and the password in ${self._settings.password_env})"
        if status == PROXY_TIMEOUT:
            text = ("the proxy in front of the web UI (RunPod's, Cloudflare) cut the request after 100 s: make "
                    "batches smaller (sd.batch_size, sd.steps, generator.concurrency) or expose the port over TCP")
        raise SdError(status, f"SD web UI error {status} {text}", retryable=status >= 500 or status in (408, 429))
