"""The Starlette app: visitors' /avatar, the owner's admin API, and the generator, owned by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatargen.buckets import check_and_frame, open_buckets
from avatargen.config import Settings
from avatargen.events import EventHub, EventLogHandler
from avatargen.generator import Generator
from avatargen.gpu import make_provider
from avatargen.ledger import CostLedger
from avatargen.lock import GeneratorLock
from avatargen.owner_actions import OwnerActions
from avatargen.redact import RedactingFilter
from server.admin import admin_api
from server.admin_token import resolve_admin_token
from server.errors import http_error
from server.services import Services
from server.visitor import VisitorService

log = logging.getLogger("avatargen.server")


async def healthz(request: Request) -> Response:
    state: Services | None = getattr(request.app.state, "services", None)
    body: dict[str, Any] = {"status": "ok"}
    if state is not None:
        body.update(generator=state.engine.state if state.engine else "elsewhere",
                    buckets={name: bucket.count() for name, bucket in state.buckets.items()})
    return JSONResponse(body)


def create_app(settings: Settings) -> Starlette:
    """Build the app; nothing starts until the lifespan runs (uvicorn, or a test's lifespan manager)."""
    buckets = open_buckets(settings)
    visitor = VisitorService(settings, buckets)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            settings.server.data_dir.mkdir(parents=True, exist_ok=True)
            for bucket in buckets.values():
                recovery = await asyncio.to_thread(bucket.recover)
                if recovery.summary():
                    log.info("bucket %s recovered at start-up: %s", bucket.name, recovery.summary())
            events = EventHub()
            handler = EventLogHandler(events, asyncio.get_running_loop())
            handler.addFilter(RedactingFilter())  # the owner's live log hides URL credentials as the file does
            product_log = logging.getLogger("avatargen")
            if product_log.getEffectiveLevel() > logging.INFO:
                product_log.setLevel(logging.INFO)  # the owner's live log shows what the generator does
            product_log.addHandler(handler)
            stack.callback(product_log.removeHandler, handler)
            ledger = await asyncio.to_thread(CostLedger, settings.server.data_dir / "ledger.sqlite3")
            stack.callback(ledger.close_db)
            token, source = resolve_admin_token(settings)
            actions = OwnerActions(settings, buckets, events, forget=visitor.forget)
            services = Services(settings, buckets, events, ledger, actions, token=token)
            app.state.services = services
            log.info("data in %s; provider %s; admin token %s", settings.server.data_dir, settings.gpu.provider,
                     source)
            if source.startswith("generated") and sys.stderr.isatty():
                print(f"\n  admin token (shown once): {token.reveal()}\n", file=sys.stderr)

            lock = GeneratorLock(settings.server.data_dir)
            if lock.acquire():
                stack.callback(lock.release)
                if settings.gpu.provider == "simulated":
                    from avatargen.simulator import SimulatedGpu  # demo mode only: production never loads it

                    # The simulated machine costs what the owner configured, whichever API says so.
                    simulated = await stack.enter_async_context(
                        SimulatedGpu(settings.gpu.simulated, hourly_price=settings.gpu.hourly_cost,
                                     backend=settings.sd.backend))
                    log.info("simulated GPU: %s API at %s, SD server (%s) at %s", simulated.api, simulated.api_url,
                             settings.sd.backend, simulated.sd_url)
                    provider = simulated.provider(settings.gpu)
                else:
                    provider = make_provider(settings)
                engine = Generator(settings, buckets, provider, ledger, events)
                services.engine = engine
                await engine.start()
                stack.push_async_callback(engine.close)
                for bucket in buckets.values():  # one process checks and frames: the generator's
                    tending = asyncio.create_task(check_and_frame(bucket), name=f"{bucket.name} bucket check")
                    stack.callback(tending.cancel)
            else:
                services.generator_elsewhere = f"the generator runs in another process (pid {lock.holder()})"
                log.warning("%s; this one serves visitors only", services.generator_elsewhere)

            await visitor.start()
            stack.push_async_callback(visitor.close)
            watcher = asyncio.create_task(services.watch_levels())
            stack.callback(watcher.cancel)
            # What start-up made lives as long as the process: frozen out of the collector's sight, it is no
            # longer walked by every full collection (50 ms each, a pause visitors see). Collected first, so
            # no garbage is frozen with it.
            gc.collect()
            gc.freeze()
            yield

    # The visitor routes come first: Starlette tries routes in order, and /avatar is the hot path.
    routes = [*visitor.routes(), Route("/healthz", healthz, methods=["GET"]), admin_api()]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.visitor = visitor  # its status() says what visitors were spared (for the admin API)
    return app
