"""What every benchmark needs beyond `avatargen.testing`: its config, its token, the admin API, images.

Benchmarks measure the product as the owner runs it: `avatargen serve` as its own process (the same
command line), the simulated GPU as a process of its own when a machine must outlive a server (both
from `avatargen.testing`, which the tests share), and buckets filled with `Bucket.images.publish`, as the
generator fills them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from avatargen import testing
from avatargen.api import AdminClient, RunView, ServerEvent, StateChange, Status
from avatargen.imaging import to_avatar_webp
from avatargen.simulator.drawing import draw_avatar
from avatargen.storage.files.bucket import Bucket
from avatargen.testing import START_TIMEOUT, Service

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "benchmark-admin-token"
EventTest = Callable[[ServerEvent], bool]  # whether an event is the one awaited
T = TypeVar("T")

# A config that runs on its own: no automatic runs (min 0), small timings, the simulated GPU.
BASE_CONFIG: dict[str, Any] = {
    "server": {"data_dir": "data", "port": 0},
    "serving": {"unique_burst": 0},
    "buckets": {
        "unique": {"dir": "data/unique", "min": 0, "max": 0},
        "fallback": {"dir": "data/fallback", "min": 0, "max": 0},
    },
    "generator": {"check_every": "24h"},
    "gpu": {
        "provider": "simulated", "poll_every": "50ms", "ready_timeout": "30s", "stop_timeout": "30s",
        "simulated": {"boot_delay": "300ms", "stop_delay": "200ms", "sd_boot_delay": "100ms", "step_time": "2ms"},
    },
}


def parse_args(description: str, add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """`--quick` for every script, plus the script's own options. A `kill` (SIGTERM) then ends the script as
    Ctrl-C does, through its `with` blocks: the servers, simulators and Redis it started stop with it, where
    Python's default would leave them running, orphaned."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny durations: checks that the script works, its figures mean nothing")
    if add is not None:
        add(parser)
    return parser.parse_args()


def write_config(directory: Path, *layers: Mapping[str, Any]) -> Path:
    """`directory/config.toml`: BASE_CONFIG with the layers merged on top."""
    return testing.write_config(directory, BASE_CONFIG, *layers)


def avatargen_server(config: Path, log: Path, *, port: int | None = None,
                     env: Mapping[str, str] | None = None) -> Service:
    """`avatargen serve --config CONFIG --port PORT`, with the benchmark's admin token."""
    return testing.avatargen_server(config, log, token=ADMIN_TOKEN, port=port, env=env)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A scratch folder, removed afterwards; readable by others (nginx's worker runs unprivileged)."""
    with tempfile.TemporaryDirectory(prefix="avatargen-bench-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def sample_avatars(count: int, size: int = 256, quality: int = 60) -> list[bytes]:
    """Distinct avatar WebPs as the generator stores them (drawn by the simulator's painter)."""
    return [to_avatar_webp(draw_avatar(f"A painting of cjs, benchmark {n}", n, size, size), size, quality)
            for n in range(count)]


def publish(bucket: Bucket, images: Sequence[bytes]) -> list[str]:
    """Publish images into a bucket as the generator does; their ids."""
    return [bucket.images.publish(image, {"prompt": "benchmark", "backend": "benchmark"}).id for image in images]


class Admin:
    """The admin API of a running server through the product's own client, for synchronous scripts."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, action: Callable[[AdminClient], Awaitable[T]], timeout: float | None = None) -> T:
        async def call() -> T:
            async with AdminClient(self.url, ADMIN_TOKEN) as client, asyncio.timeout(timeout):
                return await action(client)

        return asyncio.run(call())

    def status(self) -> Status:
        return self._call(lambda client: client.status())

    def refill(self, buckets: Sequence[str]) -> RunView:
        return self._call(lambda client: client.refill(buckets))

    def abort(self) -> RunView:
        return self._call(lambda client: client.abort())

    def wait_generator_started(self, timeout: float = START_TIMEOUT) -> None:
        """Until the generator has made its start-up check (a machine found on is stopped first).

        A refill sent before that check could see its own machine taken for one a crash left running.
        Nothing announces the check across processes: poll the status, with a deadline.
        """
        async def started(client: AdminClient) -> None:
            while (await client.status()).next_check_at is None:
                await asyncio.sleep(0.02)

        try:
            self._call(started, timeout)
        except TimeoutError:
            raise TimeoutError("the generator did not make its start-up check in time") from None

    def wait_event(self, matches: EventTest, timeout: float = 60.0) -> ServerEvent:
        """The first event (the server's history included) that `matches`."""
        return self._call(lambda client: client.first_event(matches, since="0"), timeout)


def run_in_state(run_id: str, state: str) -> EventTest:
    """Matches the event saying that run `run_id` reached `state`."""
    return lambda event: isinstance(event, StateChange) and event.run is not None and event.run.id == run_id \
        and event.run.state == state


def run_ended(run_id: str) -> EventTest:
    """Matches the event saying that run `run_id` is over, its machine confirmed off."""
    return lambda event: isinstance(event, StateChange) and event.run is None and event.last_run is not None \
        and event.last_run.run.id == run_id
