#!/usr/bin/env python3
"""A watchdog on the GPU machine itself: it stops its own machine once the SD server has had no job for
--idle, in case the avatargen that started the machine died for good and cannot stop it.

RunPod pods cannot shut themselves down (Paperspace machines can, after whole hours); a pod left running
bills until someone notices. Start this beside the SD server on the machine (in the pod template's start
command, see docs/watchdog.md). Every --every it asks the SD server whether it has a job: the web UI's
/sdapi/v1/progress (a job count, or a job name) or ComfyUI's /queue (a running or pending prompt). A server
that does not answer counts as having no job (still booting, or crashed). After --idle without a job it
asks the provider's API to stop this machine, retrying until the stop is accepted, then exits.

--idle must be longer than a boot plus the longest gap between two jobs of a run (avatargen keeps the SD
server busy while a run lasts; the gaps are milliseconds): the default, 20 minutes, leaves a wide margin
and costs at most 20 minutes of billing when it has to act.

Python's standard library only: it must run in any SD template's Python (3.8 or later).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request

log = logging.getLogger("gpu_watchdog")

PROVIDERS = {
    # provider: (API base URL, env of the machine id, env of the API key, stop route and method)
    "runpod": ("https://rest.runpod.io/v1", "RUNPOD_POD_ID", "RUNPOD_API_KEY", ("/pods/{id}/stop", "POST")),
    "paperspace": ("https://api.paperspace.com/v1", "PAPERSPACE_MACHINE_ID", "PAPERSPACE_API_KEY",
                   ("/machines/{id}/stop", "PATCH")),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
TIMEOUT = 10.0  # seconds for any one HTTP request


def duration(text: str) -> float:
    """A duration such as 20m, 90s, 1.5h or 500ms (a bare number is seconds); more than zero."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 20m, 90s, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def get_json(url: str, auth: str | None = None) -> object:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        return json.loads(answer.read().decode("utf-8"))


def webui_busy(data: object) -> bool:
    """/sdapi/v1/progress: a job under way (its count or name), or sampling progress."""
    if not isinstance(data, dict):
        raise ValueError("not the web UI's progress")
    state = data.get("state") or {}
    return bool(state.get("job_count") or state.get("job") or (data.get("progress") or 0) > 0)


def comfyui_busy(data: object) -> bool:
    """/queue: a prompt running or waiting."""
    if not isinstance(data, dict) or "queue_running" not in data:
        raise ValueError("not ComfyUI's queue")
    return bool(data.get("queue_running") or data.get("queue_pending"))


KINDS = {"a1111": ("/sdapi/v1/progress?skip_current_image=true", webui_busy), "comfyui": ("/queue", comfyui_busy)}


def has_job(sd_url: str, kind: str, auth: str | None) -> tuple[bool, str]:
    """Whether the SD server has a job now, and which kind of server answered ("" when none did)."""
    for name in ((kind,) if kind != "auto" else tuple(KINDS)):
        path, busy = KINDS[name]
        try:
            return busy(get_json(sd_url.rstrip("/") + path, auth)), name
        except (OSError, ValueError) as exc:  # refused, timed out, 4xx/5xx, not JSON: try the next kind
            log.debug("%s at %s: %s", name, sd_url, exc)
    return False, ""


def stop_machine(provider: str, api_url: str, machine_id: str, key: str) -> None:
    """Ask the provider's API to stop this machine; raises OSError when it is not accepted."""
    route, method = PROVIDERS[provider][3]
    request = urllib.request.Request(api_url.rstrip("/") + route.format(id=machine_id), method=method, data=b"",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        log.info("the %s API accepted the stop of %s (HTTP %d)", provider, machine_id, answer.status)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=duration, default=duration("20m"),
                        help="stop the machine after the SD server has had no job for this long (default 20m)")
    parser.add_argument("--every", type=duration, default=duration("30s"),
                        help="how often to ask the SD server (default 30s)")
    parser.add_argument("--sd-url", default="http://127.0.0.1:7860",
                        help="the SD server on this machine (default http://127.0.0.1:7860; ComfyUI: port 8188)")
    parser.add_argument("--sd-kind", choices=("auto", *KINDS), default="auto",
                        help="a1111 (the web UI), comfyui, or auto: whichever answers (default)")
    parser.add_argument("--sd-auth-env", default="SD_API_AUTH",
                        help="env variable with user:password for the web UI's --api-auth (default SD_API_AUTH)")
    parser.add_argument("--provider", choices=tuple(PROVIDERS), default=None,
                        help="runpod or paperspace (default: runpod where RUNPOD_POD_ID is set, else paperspace)")
    parser.add_argument("--api-url", default=None, help="the provider's API (default: its public API)")
    parser.add_argument("--machine-id", default=None,
                        help="this machine's id (default: env RUNPOD_POD_ID or PAPERSPACE_MACHINE_ID)")
    parser.add_argument("--key-env", default=None,
                        help="env variable holding the API key (default RUNPOD_API_KEY or PAPERSPACE_API_KEY)")
    args = parser.parse_args(argv)
    args.provider = args.provider or ("runpod" if os.environ.get("RUNPOD_POD_ID") else "paperspace")
    default_url, id_env, key_env, _ = PROVIDERS[args.provider]
    args.api_url = args.api_url or default_url
    args.machine_id = args.machine_id or os.environ.get(id_env, "")
    args.key_env = args.key_env or key_env
    if not args.machine_id:
        parser.error(f"no machine id: pass --machine-id or set {id_env}")
    if not os.environ.get(args.key_env):
        parser.error(f"no API key: set {args.key_env} (or name another variable with --key-env)")
    return args


def watch(args: argparse.Namespace) -> int:
    key = os.environ[args.key_env]
    auth = os.environ.get(args.sd_auth_env) or None
    log.info("watching %s (%s); this %s machine %s stops after %gs without a job", args.sd_url, args.sd_kind,
             args.provider, args.machine_id, args.idle)
    last_job = time.monotonic()  # the boot counts as idle time: a machine whose SD server never comes up stops too
    answered = ""
    while True:
        busy, kind = has_job(args.sd_url, answered or args.sd_kind, auth)  # the one that answered last, else all
        if kind != answered:
            log.info("SD server: %s", f"{kind} answers" if kind else "not answering")
            answered = kind
        now = time.monotonic()
        if busy:
            last_job = now
        elif now - last_job >= args.idle:
            log.warning("no SD job for %.0fs: stopping this machine", now - last_job)
            try:
                stop_machine(args.provider, args.api_url, args.machine_id, key)
                return 0
            except (OSError, ValueError) as exc:
                detail = exc.read().decode("utf-8", "replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
                log.error("the stop was not accepted, retrying: %s %s", exc, detail)
        time.sleep(args.every)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu_watchdog %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        return watch(parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
