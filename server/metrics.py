"""`GET /metrics` for Prometheus, and the timing of every request.

Who may scrape: an address in `admin.allow_from` (403 otherwise), with `Authorization: Bearer <[metrics]
token>` when a token is set (401 otherwise). Without a token it answers only while allow_from is loopback
only. The admin token is never accepted here, and the metrics token opens nothing else.

What it says: the counters every process keeps (avatargen.metrics; with several workers, summed over all
of them from prometheus_client's multiprocess files), then what the generator's status says now (bucket
levels, the generator's state, the spend), read from the process that runs the generator.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avatargen.api.wire import Status
from avatargen.config import Settings
from avatargen.metrics import AVATARS_SERVED, DURATION_BUCKETS, REQUEST_DURATION, ROUTES, SERVED_KINDS
from avatargen.run import State
from server.admin_guard import address_allowed, token_matches
from server.forwarding import GeneratorUnreachable, read_answer
from server.services import Services

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
STATES: tuple[State, ...] = ("idle", "booting", "generating", "shutting_down")


def only_loopback(settings: Settings) -> bool:
    """Whether every admin.allow_from network is a loopback one (then /metrics needs no token)."""
    return all(ipaddress.ip_network(net, strict=False).is_loopback for net in settings.admin.allow_from)


def check_scraper(request: Request, services: Services) -> None:
    """403 outside allow_from; 401 without the metrics token (or with none set while allow_from reaches
    beyond loopback)."""
    if not address_allowed(request.client.host if request.client else None, services.admin_networks):
        raise HTTPException(403, "/metrics does not answer this address (see [admin] allow_from)")
    token = services.settings.metrics_token()
    if token:
        if not token_matches(request.headers.get("authorization", ""), token.reveal()):
            raise HTTPException(401, "missing or wrong metrics token ([metrics] token)",
                                headers={"WWW-Authenticate": "Bearer"})
    elif not only_loopback(services.settings):
        raise HTTPException(401, "set [metrics] token: admin.allow_from reaches beyond loopback",
                            headers={"WWW-Authenticate": "Bearer"})


class StatusCollector(Collector):
    """The gauges of one status, as Prometheus reads them."""

    def __init__(self, status: Status, here: bool) -> None:
        self.status = status
        self.here = here  # whether the status is the generator's own (else its state is not known)

    def collect(self) -> Iterator[Metric]:
        status = self.status
        images = GaugeMetricFamily("avatargen_bucket_images", "Images in the bucket, ready for visitors",
                                   labels=["bucket"])
        held = GaugeMetricFamily("avatargen_bucket_held", "Images of the bucket held for the owner's review",
                                 labels=["bucket"])
        for name, level in status.buckets.items():
            images.add_metric([name], level.count)
            held.add_metric([name], level.held)
        yield images
        yield held
        if self.here:
            state = GaugeMetricFamily("avatargen_generator_state", "1 for the generator's current state",
                                      labels=["state"])
            for name in STATES:
                state.add_metric([name], 1.0 if status.state == name else 0.0)
            yield state
        yield GaugeMetricFamily("avatargen_spend_today", "GPU spend today (UTC), in the configured currency",
                                value=status.cost.today)
        yield GaugeMetricFamily("avatargen_budget_daily", "The daily budget that stops automatic runs",
                                value=status.cost.daily_budget)


def counters() -> CollectorRegistry:
    """The registry of the counters: every worker's, summed, when the workers share a multiprocess folder."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


async def generator_status(request: Request, services: Services) -> tuple[Status, bool]:
    """The generator's status from its process, and whether it came from there (else this process's view)."""
    if not services.place.forwards():
        return await services.status(), True
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/admin/api/status", "query_string": b"",
                             "headers": [], "client": request.scope.get("client")}

    async def nothing() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    try:
        answer = await services.place.forward(Request(scope, nothing))
        return Status.from_json(json.loads(await read_answer(answer))), answer.status_code == 200
    except (GeneratorUnreachable, ValueError):
        return await services.status(), False


def metrics_route(registry: CollectorRegistry, tally: Tally) -> Any:
    async def metrics(request: Request) -> Response:
        services: Services = request.app.state.services
        check_scraper(request, services)
        tally.flush()
        status, here = await generator_status(request, services)
        gauges = CollectorRegistry(auto_describe=False)
        gauges.register(StatusCollector(status, here))
        return Response(generate_latest(registry) + generate_latest(gauges), media_type=CONTENT_TYPE_LATEST)

    return metrics


FLUSH_EVERY = 1.0  # seconds: how stale another worker's counts may be in a scrape


def route_of(path: str) -> str | None:
    """The `route` label of a request path (one of ROUTES); None for what is not timed (the event stream
    lasts for hours, /metrics would time itself)."""
    if path.startswith("/avatar"):
        return "avatar"
    if path.startswith("/admin/api/"):
        return None if path == "/admin/api/events" else "admin"
    if path == "/":
        return "demo"
    if path == "/healthz":
        return "healthz"
    return None if path == "/metrics" else "other"


class _Durations:
    """One route's request times not yet in the histogram: a count per bucket (as Histogram.observe would
    add them) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last: over the largest bound (+Inf)
        self.total = 0.0


class Tally:
    """This process's request counts, kept in plain numbers on the event loop (no lock, no shared file per
    request: the visitor path pays a few additions) and added to the Prometheus metrics by `flush`: before
    this process answers a scrape, and every FLUSH_EVERY (another worker may answer the next scrape)."""

    def __init__(self) -> None:
        self.served = dict.fromkeys((kind.encode() for kind in SERVED_KINDS), 0)
        self.durations = {route: _Durations() for route in ROUTES}

    def flush(self) -> None:
        for kind, count in self.served.items():
            if count:
                AVATARS_SERVED.labels(kind.decode()).inc(count)
                self.served[kind] = 0
        for route, pending in self.durations.items():
            if not any(pending.counts):
                continue
            child = REQUEST_DURATION.labels(route)
            # Histogram has no public call to add many observations at once; its per-bucket values are
            # what observe() adds to (prometheus_client < 1 is pinned).
            for index, count in enumerate(pending.counts):
                if count:
                    child._buckets[index].inc(count)
                    pending.counts[index] = 0
            child._sum.inc(pending.total)
            pending.total = 0.0

    async def run(self) -> None:
        """Flush every FLUSH_EVERY, for ever (cancel it at shutdown)."""
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.flush()


class Measured:
    """ASGI middleware: each request's time to its last body byte, by route, and the kind of each avatar
    sent (its X-Avatar-Kind), counted in the tally."""

    def __init__(self, app: ASGIApp, tally: Tally) -> None:
        self.app = app
        self.tally = tally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        pending = self.tally.durations[route]
        served = self.tally.served if route == "avatar" else None

        async def measured(message: Message) -> None:
            if message["type"] == "http.response.start":
                if served is not None:
                    for name, value in message["headers"]:
                        if name == b"x-avatar-kind":
                            if value in served:
                                served[value] += 1
                            break
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                elapsed = time.perf_counter() - started
                pending.counts[bisect.bisect_left(DURATION_BUCKETS, elapsed)] += 1
                pending.total += elapsed
            await send(message)

        await self.app(scope, receive, measured)
