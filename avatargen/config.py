"""Typed settings loaded from config.toml.

The schema is the dataclasses below: a field's type says how a TOML value is checked and converted,
and its metadata adds the unit (durations, paths) and the allowed range. One generic walker turns a
TOML document into these objects, so every key gets the same clear errors: the file, the dotted key,
the line, and what is wrong (with the closest valid name for a typo).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import parse_qs, urlsplit

import tomlkit

from avatargen import wordlists
from avatargen.durations import format_duration, parse_duration
from avatargen.redact import redact_url

PROVIDERS = ("paperspace", "runpod", "runpod_serverless", "always_on", "simulated")
PROVIDER_APIS = ("paperspace", "runpod", "runpod_serverless")  # the cloud GPU APIs avatargen speaks (and simulates)
SIMULATED_WEBUIS = ("automatic1111", "forge")  # the web UIs the simulator can be: see avatargen.simulator.sdwebui
SD_BACKENDS = ("a1111", "comfyui")
BUCKET_NAMES = ("unique", "fallback")
STORAGE_BACKENDS = ("files", "redis")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class ConfigError(Exception):
    """A configuration problem, worded for the owner: file, key, line and what is wrong."""

    def __init__(self, message: str, *, key: str | None = None, file: Path | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file) + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class Secret:
    """A secret string that never shows itself in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


def check_http_url(url: str) -> str:
    """The URL if it is http:// or https:// with a host and a port in range; else ValueError saying why."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {redact_url(url)!r}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"the port must be a number from 0 to 65535, got {redact_url(url)!r}") from None
    return url


def _placeholders_filled(url: str) -> str:
    """`url` with the machine placeholders the GPU provider fills at each start (`{public_ip}`, `{pod_id}`,
    `{port:7860}`; see avatargen.gpu.address) standing in as a host part and a port, for checking the rest.
    A placeholder that is not written right is a ConfigError naming it (which ones a provider fills is
    checked with the provider)."""
    if "{" in (rest := _ANY_PLACEHOLDER.sub("", url)) or "}" in rest:
        raise ConfigError(f"unbalanced brace in {url!r}: write a placeholder as {{public_ip}}, {{pod_id}} or "
                          "{port:7860}", key="url")
    for name in _ANY_PLACEHOLDER.findall(url):
        if name.startswith("port:") and not (_PORT_NUMBER.fullmatch(name) and 0 < int(name[5:]) < 65536):
            raise ConfigError(f"placeholder {{{name}}}: the machine's internal port must be a number from 1 to "
                              "65535, as in {port:7860}", key="url")
    return _PLACEHOLDER.sub(lambda match: match.group(1) or "placeholder", url)


_PLACEHOLDER = re.compile(r"\{(?:port:(\d+)|[^{}]*)\}")
_ANY_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PORT_NUMBER = re.compile(r"port:\d{1,5}")


def _check_service_url(url: str, key: str, credentials: str) -> None:
    """A service's URL: http(s), and no user info, since credentials come from the environment, not the file
    (the file is shared, backed up and rewritten by the prompt editor)."""
    try:
        check_http_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None
    if "@" in urlsplit(url).netloc:
        raise ConfigError(f"must not hold a user name or password (got {redact_url(url)!r}): {credentials}",
                          key=key)


def _m(*, kind: str | None = None, low: float | None = None, high: float | None = None,
       choices: tuple[str, ...] | None = None, nonempty: bool = False) -> dict[str, Any]:
    return {"kind": kind, "low": low, "high": high, "choices": choices, "nonempty": nonempty}


def _f(default: Any, **meta: Any) -> Any:
    if isinstance(default, list | dict) or is_dataclass(default):
        return field(default_factory=lambda: default, metadata=_m(**meta))
    return field(default=default, metadata=_m(**meta))


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = _f(8080, low=0, high=65535)
    trusted_proxies: tuple[str, ...] = _f(("127.0.0.1", "::1"), kind="network")
    data_dir: Path = _f(Path("data"), kind="path")
    workers: int = _f(1, low=1, high=64)  # uvicorn worker processes on this machine, one port
    log_max_bytes: int = _f(5_000_000, low=10_000)  # <data_dir>/avatargen.log is rotated at this size
    log_backups: int = _f(3, low=0, high=100)  # rotated log files kept (avatargen.log.1, ...)


@dataclass(frozen=True)
class ServingSettings:
    unique_every: float = _f(600.0, kind="duration")
    unique_burst: int = _f(6, low=0)
    unique_per_visitor: float = _f(86400.0, kind="duration")
    unique_per_network: str = _f("/64", choices=("/32", "/40", "/48", "/56", "/60", "/64"))  # IPv6 visitor key
    cache_max_age: float = _f(86400.0, kind="duration")
    fallback_retire_every: float = _f(3600.0, kind="duration")
    sizes: tuple[int, ...] = _f((32, 64, 128, 256), low=8)  # /avatar?s= snaps up to one of these edges, px
    same_face_for: float = _f(60.0, kind="duration")  # one visitor's repeat requests get the same image this long

    def check(self) -> None:
        if list(self.sizes) != sorted(set(self.sizes)):
            raise ConfigError(f"must list each size once, smallest first, got {list(self.sizes)}", key="sizes")


@dataclass(frozen=True)
class AdminSettings:
    token: Secret = _f(Secret(""))
    allow_from: tuple[str, ...] = _f(("127.0.0.1/32", "::1/128"), kind="network")


@dataclass(frozen=True)
class BucketSettings:
    dir: Path = _f(Path("data/unique"), kind="path")
    min: int = _f(1000, low=0)
    max: int = _f(2000, low=0)

    def check(self) -> None:
        if self.min > self.max:
            raise ConfigError(f"min ({self.min}) is greater than max ({self.max})", key="min")


@dataclass(frozen=True)
class BucketsSettings:
    unique: BucketSettings = _f(BucketSettings(Path("data/unique"), 1000, 2000))
    fallback: BucketSettings = _f(BucketSettings(Path("data/fallback"), 1000, 2500))

    def items(self) -> list[tuple[str, BucketSettings]]:
        return [(name, getattr(self, name)) for name in BUCKET_NAMES]

    def check(self) -> None:
        """Each bucket in a folder of its own, side by side: a bucket inside another's folder would sit in
        the way of its work folders (`.review/` holds what the gate held back, `.claimed/` what was served,
        `.tmp/` half-written files), whose images it would then serve."""
        unique, fallback = self.unique.dir.resolve(), self.fallback.dir.resolve()
        if unique == fallback:
            raise ConfigError("the unique and fallback buckets need different folders", key="fallback.dir")
        for inner, outer in (("unique", "fallback"), ("fallback", "unique")):
            inside, around = getattr(self, inner).dir, getattr(self, outer).dir
            if inside.resolve().is_relative_to(around.resolve()):
                raise ConfigError(f"{inside} is inside the {outer} bucket's folder {around}, where the "
                                  f"{outer} bucket keeps its own files and work folders; give each bucket a "
                                  f"folder of its own (e.g. data/unique and data/fallback)", key=f"{inner}.dir")


@dataclass(frozen=True)
class GeneratorSettings:
    check_every: float = _f(600.0, kind="duration")
    concurrency: int = _f(2, low=1, high=16)
    image_size: int = _f(256, low=32, high=2048)
    webp_quality: int = _f(60, low=0, high=100)
    max_consecutive_failures: int = _f(5, low=1)
    image_retries: int = _f(2, low=0, high=10)
    max_run_duration: float = _f(7200.0, kind="duration")
    preview_every: float = _f(1.0, kind="duration")  # live previews to the owner at most this often; 0: none


@dataclass(frozen=True)
class PaperspaceSettings:
    api_url: str = "https://api.paperspace.com/v1"
    api_key_env: str = "PAPERSPACE_API_KEY"
    machine_id: str = ""
    auto_shutdown: float = _f(0.0, kind="duration")  # set the machine's own backstop at start-up; 0: leave it

    def api_key(self) -> Secret:
        return Secret(os.environ.get(self.api_key_env, ""))

    def check(self) -> None:
        _check_service_url(self.api_url, "api_url", f"the API key comes from the environment variable named by "
                                                    f"api_key_env ({self.api_key_env})")
        if self.auto_shutdown and (self.auto_shutdown < 3600 or self.auto_shutdown % 3600):
            raise ConfigError(f"Paperspace shuts machines down after whole hours: use \"1h\" or more in whole "
                              f"hours, got {self.auto_shutdown:g}s", key="auto_shutdown")


@dataclass(frozen=True)
class RunPodSettings:
    api_url: str = "https://rest.runpod.io/v1"
    api_key_env: str = "RUNPOD_API_KEY"
    pod_id: str = ""

    def api_key(self) -> Secret:
        return Secret(os.environ.get(self.api_key_env, ""))

    def check(self) -> None:
        _check_service_url(self.api_url, "api_url", f"the API key comes from the environment variable named by "
                                                    f"api_key_env ({self.api_key_env})")


@dataclass(frozen=True)
class RunPodServerlessSettings:
    """[gpu.runpod_serverless]: a queue-based RunPod Serverless endpoint running worker-comfyui (see
    avatargen.gpu.serverless): no machine to start or stop, workers billed per second while they run."""

    endpoint_id: str = ""
    api_url: str = "https://api.runpod.ai/v2"
    api_key_env: str = "RUNPOD_API_KEY"
    max_in_flight: int = _f(4, low=1, high=100)  # jobs queued or running at once: the owner's cap on parallel spend
    idle_timeout: float = _f(5.0, kind="duration")  # the endpoint's idle timeout: billed after each worker's last job

    def api_key(self) -> Secret:
        return Secret(os.environ.get(self.api_key_env, ""))

    def check(self) -> None:
        _check_service_url(self.api_url, "api_url", f"the API key comes from the environment variable named by "
                                                    f"api_key_env ({self.api_key_env})")
        if "/" in self.endpoint_id:
            raise ConfigError(f"an endpoint id, not a URL (got {self.endpoint_id!r}): the id shown on the endpoint's "
                              "page, e.g. \"abc123xyz\"", key="endpoint_id")


@dataclass(frozen=True)
class SimulatedSettings:
    """The built-in GPU machine and SD web UI (demo mode); see avatargen.simulator."""

    api: str = _f("paperspace", choices=PROVIDER_APIS)  # the cloud machine API the simulated GPU speaks
    webui: str = _f("automatic1111", choices=SIMULATED_WEBUIS)  # which web UI the simulated a1111 backend is
    boot_delay: float = _f(8.0, kind="duration")
    stop_delay: float = _f(3.0, kind="duration")
    sd_boot_delay: float = _f(2.0, kind="duration")
    step_time: float = _f(0.05, kind="duration")
    faults: tuple[str, ...] = ()  # names checked where the simulator starts: the core never imports it


@dataclass(frozen=True)
class GpuSettings:
    provider: str = _f("simulated", choices=PROVIDERS)
    ready_timeout: float = _f(600.0, kind="duration")
    stop_timeout: float = _f(600.0, kind="duration")
    poll_every: float = _f(5.0, kind="duration")
    hourly_cost: float = _f(0.76, low=0)
    daily_budget: float = _f(5.0, low=0)
    paperspace: PaperspaceSettings = _f(PaperspaceSettings())
    runpod: RunPodSettings = _f(RunPodSettings())
    runpod_serverless: RunPodServerlessSettings = _f(RunPodServerlessSettings())
    simulated: SimulatedSettings = _f(SimulatedSettings())

    def check(self) -> None:
        if self.provider == "paperspace" and not self.paperspace.machine_id:
            raise ConfigError("required when provider = \"paperspace\"", key="paperspace.machine_id")
        if self.provider == "runpod" and not self.runpod.pod_id:
            raise ConfigError("required when provider = \"runpod\"", key="runpod.pod_id")
        if self.provider == "runpod_serverless" and not self.runpod_serverless.endpoint_id:
            raise ConfigError("required when provider = \"runpod_serverless\"", key="runpod_serverless.endpoint_id")


@dataclass(frozen=True)
class ComfyUiSettings:
    """[sd.comfyui]: the owner's workflow and, for an unusual graph, which of its nodes take the settings.

    The workflow is read and checked by `avatargen.sd.workflow` (at `check-config` and start-up), which
    says what a graph lacks in terms of its nodes and inputs.
    """

    workflow: str = ""  # API-format JSON ("Save (API)"), relative to the config file; empty: the built-in graph
    scheduler: str = ""  # empty: the schedule that goes with sd.sampler
    token_env: str = ""  # the env variable holding a bearer token for a reverse proxy in front of ComfyUI
    sampler_node: str = ""
    positive_node: str = ""
    negative_node: str = ""
    latent_node: str = ""
    checkpoint_node: str = ""
    output_node: str = ""

    def token(self) -> Secret:
        return Secret(os.environ.get(self.token_env, "") if self.token_env else "")

    def check(self) -> None:
        from avatargen.sd.samplers import COMFYUI_SCHEDULERS

        if self.scheduler and self.scheduler not in COMFYUI_SCHEDULERS:
            raise ConfigError(f"must be empty or one of {', '.join(map(repr, COMFYUI_SCHEDULERS))}, "
                              f"got {self.scheduler!r}", key="scheduler")


@dataclass(frozen=True)
class SdSettings:
    backend: str = _f("a1111", choices=SD_BACKENDS)
    url: str = "http://127.0.0.1:7860"
    username: str = ""
    password_env: str = "SD_API_PASSWORD"
    checkpoint: str = ""
    batch_size: int = _f(2, low=1, high=16)
    sampler: str = "DPM++ 2M"
    steps: int = _f(20, low=1, high=150)
    cfg_scale: float = _f(7.0, low=1, high=30)
    width: int = _f(512, low=64, high=2048)
    height: int = _f(512, low=64, high=2048)
    negative_prompt: str = ""
    comfyui: ComfyUiSettings = _f(ComfyUiSettings())

    def password(self) -> Secret:
        return Secret(os.environ.get(self.password_env, ""))

    def check(self) -> None:
        _check_service_url(_placeholders_filled(self.url), "url", "set sd.username, and put the password in the "
                           f"environment variable named by sd.password_env ({self.password_env})")
        if self.backend == "comfyui":
            from avatargen.sd.samplers import comfyui_sampler

            try:
                comfyui_sampler(self.sampler)
            except ValueError as exc:
                raise ConfigError(str(exc), key="sampler") from None
            if self.username and self.comfyui.token_env:
                raise ConfigError("a reverse proxy takes either Basic auth (sd.username) or a bearer token, "
                                  "not both", key="comfyui.token_env")
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise ConfigError(f"must be a multiple of 8, got {getattr(self, name)}", key=name)


# How long a safety gate that held back most of a run's images pauses automatic runs, at most and at least.
PAUSE_FOR_MIN, PAUSE_FOR_MAX = 60.0, 30 * 86400.0


@dataclass(frozen=True)
class ReviewSettings:
    """The safety gate before publishing (optional extra avatargen[review]); see avatargen.review.

    Off unless `enabled`: the detector is an optional extra, and a gate that cannot run holds every
    image back, so a plain install must not turn it on by itself.
    """

    enabled: bool = False
    require_face: bool = False
    face_score: float = _f(0.4, low=0, high=1)
    block: dict[str, float] = _f({name: 0.4 for name in (
        "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED")}, low=0, high=1)
    # A run whose images were mostly held back pauses automatic runs until the owner acts, or this long.
    pause_for: float = _f(86400.0, kind="duration")

    def check(self) -> None:
        from avatargen.review import CLASSES  # the detector's own class names

        for name in self.block:
            if name not in CLASSES:
                close = difflib.get_close_matches(name, CLASSES, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known classes: {', '.join(CLASSES)}"
                raise ConfigError(f"unknown detector class {name!r}; {hint}", key=f"block.{name}")
        if not PAUSE_FOR_MIN <= self.pause_for <= PAUSE_FOR_MAX:
            raise ConfigError(f"must be from 1m to 30d, got {format_duration(self.pause_for)}", key="pause_for")
        if self.enabled and not self.block and not self.require_face:
            raise ConfigError("the gate is enabled but blocks no class and does not require a face; "
                              "list classes in [review.block], set require_face = true, or enabled = false",
                              key="enabled")


@dataclass(frozen=True)
class PromptSettings:
    subject: str = _f("cjs", nonempty=True)
    film_only: float = _f(0.2, low=0, high=1)
    artist_only: float = _f(0.7, low=0, high=1)
    both: float = _f(0.1, low=0, high=1)
    suffix_min: int = _f(1, low=0)
    suffix_max: int = _f(10, low=0)
    prefixes: tuple[str, ...] = _f(wordlists.PREFIXES, nonempty=True)
    artists: tuple[str, ...] = _f(wordlists.ARTISTS, nonempty=True)
    films: tuple[str, ...] = _f(wordlists.FILMS, nonempty=True)
    suffixes: tuple[str, ...] = _f(wordlists.SUFFIXES, nonempty=True)

    def check(self) -> None:
        total = self.film_only + self.artist_only + self.both
        if total > 1 + 1e-9:
            raise ConfigError(
                f"film_only + artist_only + both must be at most 1, got {total:g}", key="both"
            )
        if self.suffix_min > self.suffix_max:
            raise ConfigError(
                f"suffix_min ({self.suffix_min}) is greater than suffix_max ({self.suffix_max})",
                key="suffix_min",
            )
        if self.suffix_max > len(self.suffixes):
            raise ConfigError(
                f"suffix_max ({self.suffix_max}) is more than the {len(self.suffixes)} suffixes listed",
                key="suffix_max",
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings under their config names, lists as JSON arrays."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


@dataclass(frozen=True)
class StorageSettings:
    """Where the buckets, the visitor limits and the cost ledger live: the folders, or a Redis that replicas share."""

    backend: str = _f("files", choices=STORAGE_BACKENDS)
    url: str = ""
    password_env: str = "AVATARGEN_REDIS_PASSWORD"
    key_prefix: str = _f("avatargen", nonempty=True)  # several sites may share one Redis under their own prefixes
    timeout: float = _f(0.5, kind="duration")  # a Redis slower than this counts as down: visitors get the placeholder

    def password(self) -> Secret:
        return Secret(os.environ.get(self.password_env, ""))

    def check(self) -> None:
        if self.timeout <= 0:
            raise ConfigError(f"must be more than 0, got {self.timeout:g}s", key="timeout")
        if self.backend != "redis":
            return
        if not self.url:
            raise ConfigError('required when backend = "redis" (for example "redis://10.0.0.5:6379/0")', key="url")
        if not self.url.startswith(REDIS_SCHEMES):
            raise ConfigError(f"must start with {', '.join(REDIS_SCHEMES)}, got {self.url!r}", key="url")
        parts = urlsplit(self.url)
        query = parse_qs(parts.query, keep_blank_values=True)  # redis-py takes ?password= too
        if "@" in parts.netloc or "password" in (name.lower() for name in query):
            raise ConfigError(f"must not hold a user name or password (got {redact_url(self.url)!r}): put the "
                              f"password in the environment variable named by storage.password_env "
                              f"({self.password_env})", key="url")


NOTIFY_EVENTS = ("money", "run_failed", "runs_paused", "held", "bucket_empty", "storage", "generator_moved")


@dataclass(frozen=True)
class NotifySettings:
    """Messages to the owner through Apprise URLs (ntfy, Pushover, e-mail, a JSON webhook, ...)."""

    urls: tuple[str, ...] = ()
    urls_env: str = "AVATARGEN_NOTIFY_URLS"  # more URLs (space-separated) from the environment: they hold secrets
    events: tuple[str, ...] = _f(NOTIFY_EVENTS)
    min_interval: float = _f(3600.0, kind="duration")  # one kind of event at most this often ("money": always)

    def all_urls(self) -> tuple[str, ...]:
        """The configured URLs and those from the environment variable named by urls_env."""
        return self.urls + tuple(os.environ.get(self.urls_env, "").split()) if self.urls_env else self.urls

    def check(self) -> None:
        for event in self.events:
            if event not in NOTIFY_EVENTS:
                close = difflib.get_close_matches(event, NOTIFY_EVENTS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"events are {', '.join(NOTIFY_EVENTS)}"
                raise ConfigError(f"no event {event!r}; {hint}", key="events")
        for url in self.urls:
            if "://" not in url:
                raise ConfigError(f"not an Apprise URL (scheme://...): {redact_url(url)!r}", key="urls")


@dataclass(frozen=True)
class MetricsSettings:
    """`GET /metrics` for Prometheus: from admin.allow_from, with this read-only token (never the admin's)."""

    token: Secret = _f(Secret(""))


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = _f(ServerSettings())
    serving: ServingSettings = _f(ServingSettings())
    admin: AdminSettings = _f(AdminSettings())
    buckets: BucketsSettings = _f(BucketsSettings())
    generator: GeneratorSettings = _f(GeneratorSettings())
    gpu: GpuSettings = _f(GpuSettings())
    sd: SdSettings = _f(SdSettings())
    prompts: PromptSettings = _f(PromptSettings())
    review: ReviewSettings = _f(ReviewSettings())
    storage: StorageSettings = _f(StorageSettings())
    notify: NotifySettings = _f(NotifySettings())
    metrics: MetricsSettings = _f(MetricsSettings())
    # Where the settings came from (None: built-in defaults); not a config key.
    path: Path | None = field(default=None, metadata={"internal": True})

    @property
    def admin_token_file(self) -> Path:
        """Where the server keeps a generated admin token, and where the TUI looks for it."""
        return self.server.data_dir / "admin_token"

    def admin_token(self) -> Secret:
        """The configured admin token: AVATARGEN_ADMIN_TOKEN wins over the file; may be empty."""
        return Secret(os.environ.get("AVATARGEN_ADMIN_TOKEN", "")) or self.admin.token

    @property
    def sizes(self) -> tuple[int, ...]:
        """The edges /avatar serves, smallest first: `serving.sizes` below the stored edge, and the stored edge
        (`generator.image_size`) as the largest, since nothing larger can be made without blurring."""
        edge = self.generator.image_size
        return (*(size for size in self.serving.sizes if size < edge), edge)

    def metrics_token(self) -> Secret:
        """The token /metrics asks for: AVATARGEN_METRICS_TOKEN wins over the file; may be empty."""
        return Secret(os.environ.get("AVATARGEN_METRICS_TOKEN", "")) or self.metrics.token

    def error(self, message: str, key: str) -> ConfigError:
        """A problem with a loaded setting found later (a folder that cannot be written), located in the file
        as a loading error would be."""
        try:
            text = self.path.read_text(encoding="utf-8") if self.path is not None else ""
        except (OSError, UnicodeDecodeError):
            text = ""
        return _Context(self.path, text, Path.cwd()).error(message, key)


# --- the generic walker -------------------------------------------------------------------------------


_HEADER = re.compile(r"^\s*\[\[?([^\[\]]+)\]\]?\s*(#.*)?$")  # [table] or [[array of tables]]
_KEY = re.compile(r"^\s*([\w\-.\"' ]+?)\s*=")
_TOMLLIB_WHERE = re.compile(r"\(at line (\d+), column \d+\)$")
_TOMLKIT_WHERE = re.compile(r" at line \d+ col \d+$")


def _dotted(key: str) -> str:
    """`"buckets" . unique` as written in TOML, as the dotted name errors use: buckets.unique."""
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


class _Context:
    def __init__(self, file: Path | None, text: str, base_dir: Path) -> None:
        self.file = file
        self.lines = text.splitlines()
        self.base_dir = base_dir

    def line_of(self, dotted: str) -> int | None:
        """The line that sets a dotted key, found by following [table] headers; None if not in the file."""
        table, _, key = dotted.rpartition(".")
        current = ""
        key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number, line in enumerate(self.lines, start=1):
            header = _HEADER.match(line)
            if header:
                current = _dotted(header.group(1))
                if current == dotted:
                    return number
            elif current == table and key_re.match(line):
                return number
        return None

    def key_at(self, line: int) -> str | None:
        """The dotted key a line sets, or the table its header opens; None for blank and comment lines."""
        table = ""
        for text in self.lines[:line]:
            if header := _HEADER.match(text):
                table = _dotted(header.group(1))
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        if _HEADER.match(text):
            return table
        if key := _KEY.match(text):
            return ".".join(part for part in (table, _dotted(key.group(1))) if part)
        return None

    def error(self, message: str, dotted: str) -> ConfigError:
        return ConfigError(message, key=dotted, file=self.file, line=self.line_of(dotted))


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _check_network(item: str, dotted: str, ctx: _Context) -> None:
    """An address or a CIDR range; a range with host bits set (127.0.0.2/8) is refused, not guessed at:
    uvicorn silently ignores such an entry, so the proxy it names would not be believed."""
    try:
        ipaddress.ip_network(item)
    except ValueError:
        try:
            meant = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ctx.error(f"{item!r} is not an IP address or CIDR range", dotted) from None
        raise ctx.error(f"{item!r} has host bits set; did you mean {str(meant)!r}?", dotted) from None


def _check_no_nul(texts: Any, dotted: str, ctx: _Context) -> None:
    """No text setting may hold a NUL: the OS refuses one in a path or an environment variable's name (a
    ValueError deep inside start-up), and in a prompt or a URL it is a mistake."""
    if any("\0" in text for text in texts):
        raise ctx.error("must not contain a NUL character (\\u0000)", dotted)


def _convert(hint: Any, meta: Mapping[str, Any], raw: Any, dotted: str, ctx: _Context) -> Any:
    kind = meta.get("kind")
    if kind == "duration":
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise ctx.error(str(exc), dotted) from None
    if hint is bool:
        if not isinstance(raw, bool):
            raise ctx.error(f"expected true or false, got {_type_name(raw)} ({raw!r})", dotted)
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ctx.error(f"expected an integer, got {_type_name(raw)} ({raw!r})", dotted)
        value: Any = raw
    elif hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ctx.error(f"expected a number, got {_type_name(raw)} ({raw!r})", dotted)
        value = float(raw)
        if not math.isfinite(value):  # TOML has nan and inf; no setting means either
            raise ctx.error(f"must be a finite number, got {raw}", dotted)
    elif hint in (str, Path, Secret):
        if not isinstance(raw, str):
            raise ctx.error(f"expected a string, got {_type_name(raw)} ({raw!r})", dotted)
        _check_no_nul([raw], dotted, ctx)
        if meta.get("nonempty") and not raw.strip():
            raise ctx.error("must not be empty", dotted)
        if hint is Path:
            path = Path(raw).expanduser()
            return path if path.is_absolute() else ctx.base_dir / path
        return Secret(raw) if hint is Secret else raw
    elif hint == tuple[str, ...]:
        if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
            raise ctx.error(f"expected a list of strings, got {_type_name(raw)} ({raw!r})", dotted)
        _check_no_nul(raw, dotted, ctx)
        items = tuple(item.strip() for item in raw)
        if meta.get("nonempty") and not items:
            raise ctx.error("the list must not be empty", dotted)
        if meta.get("nonempty") and any(not item for item in items):
            raise ctx.error("the list must not contain empty entries", dotted)
        if kind == "network":
            for item in items:
                _check_network(item, dotted, ctx)
        return items
    elif hint == tuple[int, ...]:
        if not isinstance(raw, list | tuple) or not raw:
            raise ctx.error(f"expected a non-empty list of integers, got {_type_name(raw)} ({raw!r})", dotted)
        return tuple(_convert(int, meta, item, dotted, ctx) for item in raw)
    elif hint == dict[str, float]:
        if not isinstance(raw, Mapping):
            raise ctx.error(f"expected a table of numbers, got {_type_name(raw)} ({raw!r})", dotted)
        return {str(name): _convert(float, meta, score, f"{dotted}.{name}", ctx) for name, score in raw.items()}
    else:  # pragma: no cover - a schema mistake, not a config mistake
        raise TypeError(f"unsupported setting type {hint!r} for {dotted}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and value < low:
        raise ctx.error(f"must be at least {low:g}, got {value:g}", dotted)
    if high is not None and value > high:
        raise ctx.error(f"must be at most {high:g}, got {value:g}", dotted)
    return value


def _value(hint: Any, meta: Mapping[str, Any], raw: Any, dotted: str, ctx: _Context) -> Any:
    """One setting's value, converted and checked against its type, range and choices."""
    value = _convert(hint, meta, raw, dotted, ctx)
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ctx.error(f"must be one of {', '.join(map(repr, choices))}, got {value!r}", dotted)
    return value


def _walk(cls: type, table: Mapping[str, Any], default: Any, prefix: str, ctx: _Context) -> Any:
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls) if not f.metadata.get("internal")]
    for key in table:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(known)}"
            raise ctx.error(f"unknown key{hint}", dotted)
    values: dict[str, Any] = {}
    for name in known:
        hint = hints[name]
        meta = next(f.metadata for f in fields(cls) if f.name == name)
        dotted = f"{prefix}.{name}" if prefix else name
        current = getattr(default, name)
        if isinstance(hint, type) and is_dataclass(hint):
            sub = table.get(name, {})
            if not isinstance(sub, Mapping):
                raise ctx.error(f"expected a table [{dotted}], got {_type_name(sub)}", dotted)
            values[name] = _walk(hint, sub, current, dotted, ctx)
        elif name in table:
            raw = table[name]
            values[name] = _value(hint, meta, raw.unwrap() if hasattr(raw, "unwrap") else raw, dotted, ctx)
        elif hint is Path and not current.is_absolute():
            values[name] = ctx.base_dir / current
        else:
            values[name] = current
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            dotted = f"{prefix}.{exc.key}" if prefix and exc.key else (exc.key or prefix)
            raise ctx.error(exc.message, dotted) from None
    return obj


def _error_line(text: str, exc: tomlkit.exceptions.TOMLKitError) -> int | None:
    """Where a TOML error is. tomlkit does not say for every error (a key set twice in a table) and points
    past a table set twice; the standard library's parser, which agrees on what is valid, says exactly.
    Not for nesting, which tomlkit places right and on which the standard parser takes quadratic time (a
    dotted key of 100,000 parts: minutes) or runs out of stack."""
    line = getattr(exc, "line", None)
    if "nested more than" in str(exc):
        return int(line) if line else None
    try:
        tomllib.loads(text)
    except RecursionError:
        pass
    except tomllib.TOMLDecodeError as found:
        if where := _TOMLLIB_WHERE.search(str(found)):
            return int(where.group(1))
    return int(line) if line else None


def _parse_text(text: str, ctx: _Context) -> Mapping[str, Any]:
    try:
        return tomlkit.parse(text).unwrap()
    except RecursionError:  # arrays or inline tables nested thousands deep: no setting is
        raise ConfigError("not valid TOML for avatargen: a value is nested too deeply", file=ctx.file) from None
    except tomlkit.exceptions.TOMLKitError as exc:  # a syntax error, a key or table set twice, ...
        line = _error_line(text, exc)
        problem = _TOMLKIT_WHERE.sub("", str(exc))
        if "already exists" in problem or "Redefinition" in problem:
            problem = "set twice (each key and table may appear only once)"
        raise ConfigError(f"not valid TOML: {problem}", key=ctx.key_at(line) if line else None, file=ctx.file,
                          line=line) from None


def load_settings(path: Path | None) -> Settings:
    """Load settings from a config file, or the built-in defaults (relative to the cwd) when path is None."""
    if path is None:
        ctx = _Context(None, "", Path.cwd())
        return _walk(Settings, {}, Settings(), "", ctx)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such config file", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}", file=path) from None
    ctx = _Context(path, text, path.resolve().parent)
    settings = _walk(Settings, _parse_text(text, ctx), Settings(), "", ctx)
    return replace(settings, path=path)


def find_config(explicit: Path | None) -> Path | None:
    """`--config PATH` if given, else ./config.toml if present, else None (built-in defaults)."""
    if explicit is not None:
        return explicit
    local = Path("config.toml")
    return local if local.is_file() else None


def option_value(dotted: str, text: str) -> Any:
    """A command-line value for a config key (`--port` for server.port), checked exactly as the same value
    in config.toml would be: one set of limits and messages, wherever a setting comes from."""
    cls: Any = Settings
    *tables, name = dotted.split(".")
    for table in tables:
        cls = get_type_hints(cls)[table]
    hint = get_type_hints(cls)[name]
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    raw: Any = text
    if hint in (int, float) and meta.get("kind") != "duration":
        try:
            raw = hint(text)
        except ValueError:
            expected = "an integer" if hint is int else "a number"
            raise ConfigError(f"expected {expected}, got {text!r}", key=dotted) from None
    return _value(hint, meta, raw, dotted, _Context(None, "", Path.cwd()))


def update_prompts(current: PromptSettings, changes: Mapping[str, Any]) -> PromptSettings:
    """Apply a partial update of [prompts] values, validated exactly as the config file is."""
    ctx = _Context(None, "", Path.cwd())
    return _walk(PromptSettings, changes, current, "prompts", ctx)
