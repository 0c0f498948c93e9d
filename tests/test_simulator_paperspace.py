"""The simulated Paperspace API speaks Paperspace v1 over real HTTP: auth, errors, states, events, faults."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from avatargen.simulator import FAULTS, SimulatedGpu
from tests.simhelpers import cloud_api, sim_settings

ROOT = Path(__file__).resolve().parent.parent
FAST_BOOT = sim_settings().boot_delay


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedGpu]:
    async with SimulatedGpu(sim_settings()) as gpu:
        yield gpu


@pytest.fixture
async def api(sim: SimulatedGpu) -> AsyncIterator[httpx.AsyncClient]:
    async with cloud_api(sim) as client:
        yield client


async def record_states(sim: SimulatedGpu, until: str) -> list[str]:
    """The machine's states as they change, up to and including `until`."""
    states: list[str] = []
    while not states or states[-1] != until:
        await sim.machine.next_change().wait()
        states.append(sim.machine.state)
    return states


async def test_requests_without_the_right_key_get_401_unauthorized(sim: SimulatedGpu) -> None:
    async with httpx.AsyncClient(base_url=sim.api_url) as client:
        missing = await client.get(f"/machines/{sim.machine_id}")
        wrong = await client.get(f"/machines/{sim.machine_id}", headers={"Authorization": "Bearer nope"})
        old_style = await client.get(f"/machines/{sim.machine_id}", headers={"X-Api-Key": sim.api_key})
    for response in (missing, wrong, old_style):
        assert response.status_code == 401
        assert response.json()["code"] == "UNAUTHORIZED"
        assert response.json()["message"]


async def test_unknown_machine_event_or_route_is_404_not_found(api: httpx.AsyncClient) -> None:
    for path in ("/machines/psnope", "/machines/psnope/start", "/machine-events/esnope", "/nothing-here"):
        response = await (api.patch(path) if path.endswith("start") else api.get(path))
        assert response.status_code == 404, path
        assert response.json()["code"] == "NOT_FOUND"


async def test_start_boots_through_serviceready_to_ready_then_stop_to_off(
        sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    machine = (await api.get(f"/machines/{sim.machine_id}")).json()
    assert machine["state"] == "off"
    assert machine["publicIp"] is None

    booting = asyncio.create_task(record_states(sim, "ready"))
    await asyncio.sleep(0)  # let the recorder wait before the first change
    started = (await api.patch(f"/machines/{sim.machine_id}/start")).json()
    assert started["data"]["state"] == "starting"
    assert started["event"]["name"] == "start"
    assert started["event"]["state"] == "new"
    assert await booting == ["starting", "serviceready", "ready"]

    machine = (await api.get(f"/machines/{sim.machine_id}")).json()
    assert machine["publicIp"] == "127.0.0.1"
    event = (await api.get(f"/machine-events/{started['event']['id']}")).json()
    assert event["state"] == "done"
    assert event["dtStarted"] and event["dtFinished"]

    stopping = asyncio.create_task(record_states(sim, "off"))
    await asyncio.sleep(0)
    stopped = (await api.patch(f"/machines/{sim.machine_id}/stop")).json()
    assert stopped["data"]["state"] == "stopping"
    assert await stopping == ["stopping", "off"]
    machine = (await api.get(f"/machines/{sim.machine_id}")).json()
    assert machine["state"] == "off"
    assert machine["publicIp"] is None
    assert (await api.get(f"/machine-events/{stopped['event']['id']}")).json()["state"] == "done"


async def test_billed_seconds_count_every_state_but_off(sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    assert sim.machine.billed_seconds == 0
    await api.patch(f"/machines/{sim.machine_id}/start")
    await sim.machine.wait_for("ready")
    await api.patch(f"/machines/{sim.machine_id}/stop")
    await sim.machine.wait_for("off")
    billed = sim.machine.billed_seconds
    assert 0.4 <= billed < 0.8  # boot_delay 0.3 s + stop_delay 0.1 s, and some scheduling slack
    report = (await api.get(sim.api_url.removesuffix("/v1") + "/_sim/machine")).json()
    assert report == {"id": sim.machine_id, "state": "off", "billedSeconds": pytest.approx(billed, abs=0.001),
                      "calls": ["start", "stop"]}  # who touched the machine, oldest first
    assert sim.machine.billed_seconds == billed  # the clock does not run while off


async def test_start_and_stop_are_harmless_when_already_done(sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    stopped = (await api.patch(f"/machines/{sim.machine_id}/stop")).json()
    assert stopped["data"]["state"] == "off"
    assert stopped["event"]["state"] == "done"
    await api.patch(f"/machines/{sim.machine_id}/start")
    again = (await api.patch(f"/machines/{sim.machine_id}/start")).json()
    assert again["data"]["state"] == "starting"
    assert again["event"]["state"] == "done"


async def test_start_while_stopping_is_a_conflict() -> None:
    # A stop that lasts a minute: however busy the machine, the second start comes while it is stopping.
    async with SimulatedGpu(sim_settings(stop_delay=60.0)) as sim, cloud_api(sim) as api:
        await api.patch(f"/machines/{sim.machine_id}/start")
        first = (await api.patch(f"/machines/{sim.machine_id}/stop")).json()
        second = (await api.patch(f"/machines/{sim.machine_id}/stop")).json()
        assert second["event"]["id"] == first["event"]["id"]  # the stop in progress
        response = await api.patch(f"/machines/{sim.machine_id}/start")
    assert response.status_code == 409
    assert response.json()["code"] == "CONFLICT"


async def test_stop_during_boot_cancels_the_start_event(sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    started = (await api.patch(f"/machines/{sim.machine_id}/start")).json()
    await api.patch(f"/machines/{sim.machine_id}/stop")
    assert (await api.get(f"/machine-events/{started['event']['id']}")).json()["state"] == "cancelled"
    await sim.machine.wait_for("off")


async def test_machine_events_are_listed_newest_first_in_pages(sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    await api.patch(f"/machines/{sim.machine_id}/start")
    await api.patch(f"/machines/{sim.machine_id}/stop")
    await sim.machine.wait_for("off")
    first = (await api.get("/machine-events", params={"machineId": sim.machine_id, "limit": 1})).json()
    assert first["hasMore"] is True
    assert [item["name"] for item in first["items"]] == ["stop"]
    rest = (await api.get("/machine-events", params={"limit": 5, "after": first["nextPage"]})).json()
    assert rest == {"hasMore": False, "items": rest["items"], "nextPage": None}
    assert [item["name"] for item in rest["items"]] == ["start"]
    assert (await api.get("/machine-events", params={"machineId": "psother"})).json()["items"] == []
    bad = await api.get("/machine-events", params={"limit": "lots"})
    assert bad.status_code == 400
    assert "limit" in bad.json()["message"]


async def test_start_error_fault_ends_the_event_in_error_and_the_machine_off() -> None:
    async with SimulatedGpu(sim_settings(faults=("start_error",))) as sim, httpx.AsyncClient(
            base_url=sim.api_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as api:
        started = (await api.patch(f"/machines/{sim.machine_id}/start")).json()
        assert await record_states(sim, "off") == ["off"]
        event = (await api.get(f"/machine-events/{started['event']['id']}")).json()
        assert sim.faults.hits("start_error") == 1  # counted, as the soak reads it from /_sim/faults
    assert event["state"] == "error"
    assert "capacity" in event["error"]


async def test_never_ready_fault_keeps_the_machine_starting_until_stopped() -> None:
    async with SimulatedGpu(sim_settings(faults=("never_ready",))) as sim:
        sim.machine.start()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sim.machine.wait_for("serviceready"), timeout=2 * FAST_BOOT)
        assert sim.machine.state == "starting"
        sim.machine.stop()
        await sim.machine.wait_for("off")


async def test_rate_limit_and_server_error_faults_strike_every_third_request(
        sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    sim.set_faults(["api_429"])
    codes = [(await api.get(f"/machines/{sim.machine_id}")).status_code for _ in range(4)]
    assert codes == [429, 200, 200, 429]
    limited = await api.get(f"/machines/{sim.machine_id}")
    assert limited.status_code == 200
    sim.set_faults(["api_500"])  # resets the count
    response = await api.get(f"/machines/{sim.machine_id}")
    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL_SERVER_ERROR"
    sim.set_faults(["api_429"])
    response = await api.get(f"/machines/{sim.machine_id}")
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "TOO_MANY_REQUESTS"


async def test_stop_500_fault_fails_three_stop_requests_in_a_row(sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    sim.set_faults(["stop_500"])
    codes = [(await api.patch(f"/machines/{sim.machine_id}/stop")).status_code for _ in range(5)]
    assert codes == [500, 500, 500, 200, 500]


async def test_faults_change_at_runtime_over_http_and_reject_unknown_names(
        sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    faults_url = sim.api_url.removesuffix("/v1") + "/_sim/faults"
    response = await api.put(faults_url, json={"faults": ["sd_500", "stop_500"]})
    assert response.json() == {"faults": ["sd_500", "stop_500"], "hits": {"sd_500": 0, "stop_500": 0}}
    assert "sd_500" in sim.faults
    unknown = await api.put(faults_url, json={"faults": ["gremlins"]})
    assert unknown.status_code == 400
    assert "'gremlins'" in unknown.json()["message"]
    assert "sd_500" in unknown.json()["message"]  # lists the known faults
    malformed = await api.put(faults_url, content=b"sd_500")
    assert malformed.status_code == 400
    await api.patch(f"/machines/{sim.machine_id}/stop")  # stop_500 strikes once
    assert (await api.get(faults_url)).json() == {"faults": ["sd_500", "stop_500"],
                                                  "hits": {"sd_500": 0, "stop_500": 1}}
    with pytest.raises(ValueError, match="gremlins"):
        sim.set_faults(["gremlins"])
    with pytest.raises(ValueError, match="unknown simulator fault"):
        SimulatedGpu(sim_settings(faults=("typo",)))


def test_every_fault_is_described() -> None:
    assert set(FAULTS) >= {"api_429", "api_500", "start_error", "never_ready", "stop_500", "sd_500",
                           "sd_garbage", "sd_invalid_image", "sd_slow_first", "external_stop"}
    assert all(len(description) > 30 for description in FAULTS.values())


def test_standalone_process_prints_where_it_is_and_exits_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "avatargen.simulator", "--boot-delay", "200ms", "--fault", "stop_500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        where = json.loads(process.stdout.readline())
        assert where["api_url"].endswith("/v1")
        headers = {"Authorization": f"Bearer {where['api_key']}"}
        machine = httpx.get(f"{where['api_url']}/machines/{where['machine_id']}", headers=headers).json()
        assert machine["state"] == "off"
        faults_url = where["api_url"].removesuffix("/v1") + "/_sim/faults"
        assert httpx.get(faults_url, headers=headers).json() == {"faults": ["stop_500"], "hits": {"stop_500": 0}}
        with pytest.raises(httpx.ConnectError):  # the machine is off: no web UI
            httpx.get(f"{where['sd_url']}/sdapi/v1/progress")
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors


def test_standalone_process_rejects_a_bad_duration() -> None:
    result = subprocess.run([sys.executable, "-m", "avatargen.simulator", "--boot-delay", "soon"],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2
    assert "bad duration 'soon'" in result.stderr
