"""Where the SD backend answers on a rented machine: `sd.url` with the machine's own parts filled in.

Placeholders: `{public_ip}`, the machine's current public address (a dynamic one changes at each start);
`{pod_id}`, for RunPod's proxy (`https://{pod_id}-7860.proxy.runpod.net`); `{port:7860}`, the public port
RunPod maps to the pod's internal port 7860 when that port is exposed over TCP.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PORT = re.compile(r"port:(\d{1,5})")


@dataclass(frozen=True)
class Address:
    """What is known of a machine's address right now (the public parts are None or empty while it boots)."""

    machine_id: str
    public_ip: str | None = None
    ports: Mapping[int, int] = field(default_factory=dict)  # internal port -> public port


def _kind(name: str) -> str:
    return "port:N" if _PORT.fullmatch(name) else name


def template_problem(template: str, allowed: Collection[str]) -> str | None:
    """What is wrong with the placeholders of `template` for a provider that fills `allowed` ones, or None."""
    for name in _PLACEHOLDER.findall(template):
        if _kind(name) not in allowed:
            known = ", ".join("{" + kind + "}" for kind in allowed) or "none"
            return f"unknown placeholder {{{name}}} (this provider fills: {known})"
    return None


def fill(template: str, address: Address) -> str | None:
    """`template` with its placeholders filled, or None while a part of the address is not known yet."""
    missing = False

    def part(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        value: object = None
        if name == "pod_id":
            value = address.machine_id
        elif name == "public_ip":
            value = address.public_ip
        elif port := _PORT.fullmatch(name):
            value = address.ports.get(int(port.group(1)))
        if not value:
            missing = True
            return ""
        return str(value)

    url = _PLACEHOLDER.sub(part, template)
    return None if missing else url
