"""The long-lived things one server process owns, built and torn down by the app's lifespan."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from avatargen.api.wire import BucketsChange, Status, encode_event
from avatargen.config import PromptSettings, Secret, Settings, update_prompts
from avatargen.config_writer import save_prompts
from avatargen.events import EventHub
from avatargen.generator import AvatarGenerator, bucket_levels, cost_summary
from avatargen.notify import Notifier
from avatargen.owner_actions import OwnerActions
from avatargen.storage.protocols import Ledger, StoredBucket
from server.forwarding import Forwarder

log = logging.getLogger("avatargen.server")


@dataclass
class Services:
    settings: Settings
    buckets: Mapping[str, StoredBucket]
    events: EventHub
    ledger: Ledger
    actions: OwnerActions  # the owner's word on stored images
    token: Secret = field(default_factory=lambda: Secret(""))
    engine: AvatarGenerator | None = None  # while this process runs the generator
    forwarder: Forwarder | None = None  # how the owner's requests reach the generator in another process
    generator_elsewhere: str | None = None  # why this process does not run the generator
    notifier: Notifier | None = None  # the owner's messages ([notify]), sent from the generator's process
    prompts: PromptSettings = field(init=False)
    admin_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(init=False)
    _edit_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        self.prompts = self.settings.prompts
        self.admin_networks = [ipaddress.ip_network(net, strict=False) for net in self.settings.admin.allow_from]

    async def edit_prompts(self, changes: Mapping[str, Any]) -> PromptSettings:
        """Apply a partial update on top of the latest settings, persist it to config.toml (atomically), then
        use it for the next prompt. Edits are read, applied and written one at a time, so two at once both
        land; invalid changes raise ConfigError and nothing is written."""
        async with self._edit_lock:
            new = update_prompts(self.prompts, changes)
            if self.settings.path is not None:
                await asyncio.to_thread(save_prompts, self.settings.path, new)
                log.info("prompt settings saved to %s", self.settings.path)
            else:
                log.warning("prompt settings changed for this process only: no config file to save them to")
            self.prompts = new
            if self.engine is not None:
                self.engine.prompts = new
        return new

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
        if self.engine is not None:
            status = self.engine.view()
            if self.notifier is None:
                return status
            return replace(status, notifications=self.notifier.sender.health.view())
        # Another process runs the generator: report what this one can see (the shared folders and ledger).
        return Status(state="idle", run=None, last_run=None, buckets=bucket_levels(self.settings, self.buckets),
                      provider=self.settings.gpu.provider, machine_state=None,
                      cost=cost_summary(self.settings, await self.ledger.spend()),
                      paused_reason=self.generator_elsewhere)
