"""Images held back for review are counted off the visitors' path: `.review/` (200,000 images there stalled
every visitor of a worker for 229 ms every 2 s) is never listed by the thread that runs the event loop.

The server runs as a real process under an audit hook (PEP 578) that writes down every listing of a
`.review` folder made by its main thread, which runs uvicorn's event loop: a listing there is one every
visitor of that process waits for, however fast the disk happens to be today.
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import httpx
from PIL import Image

from avatargen.api import AdminClient
from avatargen.config import load_settings
from avatargen.storage.files.bucket import open_buckets
from avatargen.testing import Service, free_port, serve_command
from tests.support import write_config
from tests.test_storage_faults import status_until

TOKEN = "held-count-token"

# Runs `avatargen serve` with the hook installed; the first argument is the file the listings go to.
UNDER_AUDIT = """
import sys, threading
record = open(sys.argv.pop(1), "a", buffering=1)
def hook(event, args):
    if event in ("os.listdir", "os.scandir") and threading.current_thread() is threading.main_thread() \\
            and str(args[0]).rstrip("/").endswith(".review"):
        record.write(f"{event} {args[0]}\\n")
sys.addaudithook(hook)
from server.cli import main
sys.exit(main())
"""


def webp(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (shade, 40, 90)).save(out, format="WEBP")
    return out.getvalue()


async def test_the_event_loop_never_lists_the_held_images(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    fallback = open_buckets(load_settings(config))["fallback"]
    for shade in range(3):
        fallback.held.hold(webp(shade), {"prompt": "held", "review": {"held": True, "reasons": ["test"]}})
    fallback.images.publish(webp(200), {"prompt": "served"})
    listings = tmp_path / "listings.txt"
    port = free_port()
    command = [sys.executable, "-c", UNDER_AUDIT, str(listings), *serve_command(config, port)[3:]]
    server = Service("avatargen serve (audited)", command, port=port, log=tmp_path / "server.log",
                     env={"AVATARGEN_ADMIN_TOKEN": TOKEN})
    await asyncio.to_thread(server.start)
    try:
        async with AdminClient(server.url, TOKEN, timeout=30) as admin, httpx.AsyncClient(timeout=30) as visitor:
            assert (await admin.status()).buckets["fallback"].held == 3
            for _ in range(5):
                assert (await visitor.get(f"{server.url}/avatar")).status_code == 200
            # Another process holds one more back: the count follows, from a worker thread's listing.
            fallback.held.hold(webp(9), {"prompt": "held", "review": {"held": True, "reasons": ["test"]}})
            await status_until(admin, lambda status: status.buckets["fallback"].held == 4)
    finally:
        await asyncio.to_thread(server.stop)
    assert not listings.exists() or listings.read_text() == "", listings.read_text()
