"""The long-lived things one server process owns, built once by the app's lifespan (`server.app`) and torn
down by it: nothing is assigned to them afterwards. What changes while the server runs is owned by the
object it belongs to: where the generator runs (`GeneratorPlace`), the owner's prompt settings (`Prompts`)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from avatargen.api.wire import BucketsChange, Status, encode_event
from avatargen.config import PromptSettings, Secret, Settings, update_prompts
from avatargen.config_writer import save_prompts
from avatargen.events import EventHub
from avatargen.generator import bucket_levels, cost_summary
from avatargen.notify import Notifier
from avatargen.owner_actions import OwnerActions
from avatargen.storage.protocols import Ledger, StoredBucket
from server.generator_place import GeneratorPlace

log = logging.getLogger("avatargen.server")


class Prompts:
    """The owner's [prompts] settings as the admin API edits them: saved to config.toml, and used by the
    generator (when it runs here) from its next prompt."""

    def __init__(self, settings: Settings, place: GeneratorPlace) -> None:
        self.current: PromptSettings = settings.prompts
        self._path = settings.path
        self._place = place
        self._edit_lock = asyncio.Lock()

    async def edit(self, changes: Mapping[str, Any]) -> PromptSettings:
        """Apply a partial update on top of the latest settings, persist it to config.toml (atomically), then
        use it for the next prompt. Edits are read, applied and written one at a time, so two at once both
        land; invalid changes raise ConfigError and nothing is written."""
        async with self._edit_lock:
            new = update_prompts(self.current, changes)
            if self._path is not None:
                await asyncio.to_thread(save_prompts, self._path, new)
                log.info("prompt settings saved to %s", self._path)
            else:
                log.warning("prompt settings changed for this process only: no config file to save them to")
            self.current = new
            if self._place.here is not None:
                self._place.here.prompts = new
        return new


@dataclass(frozen=True)
class Services:
    settings: Settings
    buckets: Mapping[str, StoredBucket]
    events: EventHub
    ledger: Ledger
    actions: OwnerActions  # the owner's word on stored images
    token: Secret  # the admin token
    notifier: Notifier  # the owner's messages ([notify]), sent from the generator's process
    place: GeneratorPlace  # where the generator runs: here, or elsewhere through the forwarder
    prompts: Prompts

    @cached_property
    def admin_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The addresses the admin API (and /metrics) answers: `admin.allow_from`."""
        return [ipaddress.ip_network(net, strict=False) for net in self.settings.admin.allow_from]

    async def watch_levels(self, every: float = 2.0) -> None:
        """Announce bucket levels when they change for reasons the generator does not see (visitors taking
        uniques, retired fallbacks, another process), so the owner's gauges stay live."""
        last = bucket_levels(self.settings, self.buckets)
        while True:
            await asyncio.sleep(every)
            levels = bucket_levels(self.settings, self.buckets)
            if levels != last:
                self.events.publish(*encode_event(BucketsChange(levels)))
                last = levels

    async def status(self) -> Status:
        generator = self.place.here
        if generator is not None:
            return replace(generator.view(), notifications=self.notifier.sender.health.view())
        # Another process runs the generator: report what this one can see (the shared folders and ledger).
        return Status(state="idle", run=None, last_run=None, buckets=bucket_levels(self.settings, self.buckets),
                      provider=self.settings.gpu.provider, machine_state=None,
                      cost=cost_summary(self.settings, await self.ledger.spend()),
                      paused_reason=self.place.why_elsewhere)
