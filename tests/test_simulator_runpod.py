"""The simulated RunPod API speaks REST v1 over real HTTP: auth, the pod object's life, faults."""

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

from avatargen.simulator import SimulatedGpu
from tests.simhelpers import cloud_api, sim_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedGpu]:
    async with SimulatedGpu(sim_settings(api="runpod"), hourly_price=0.69) as gpu:
        yield gpu


@pytest.fixture
async def api(sim: SimulatedGpu) -> AsyncIterator[httpx.AsyncClient]:
    async with cloud_api(sim) as client:
        yield client


async def test_requests_without_the_right_key_get_401(sim: SimulatedGpu) -> None:
    async with httpx.AsyncClient(base_url=sim.api_url) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            response = await client.get(f"/pods/{sim.machine_id}", headers=headers)
            assert response.status_code == 401


async def test_an_unknown_pod_is_404_to_read_and_400_to_start(api: httpx.AsyncClient) -> None:
    assert (await api.get("/pods/nope")).status_code == 404
    assert (await api.post("/pods/nope/start")).status_code == 400
    assert (await api.post("/pods/nope/stop")).status_code == 400


async def test_a_pod_runs_gets_its_address_then_exits(sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    pod = (await api.get(f"/pods/{sim.machine_id}")).json()
    assert (pod["desiredStatus"], pod["publicIp"], pod["portMappings"]) == ("EXITED", None, {})
    assert (pod["costPerHr"], pod["adjustedCostPerHr"], pod["gpu"]["count"]) == (0.69, 0.69, 1)
    started = await api.post(f"/pods/{sim.machine_id}/start")
    assert (started.status_code, started.content) == (200, b"")
    pod = (await api.get(f"/pods/{sim.machine_id}")).json()
    assert (pod["desiredStatus"], pod["publicIp"], pod["portMappings"]) == ("RUNNING", None, {})  # initialising
    await sim.machine.wait_for("serviceready")
    pod = (await api.get(f"/pods/{sim.machine_id}")).json()
    sd_port = int(sim.sd_url.rsplit(":", 1)[1])
    assert (pod["publicIp"], pod["portMappings"]) == ("127.0.0.1", {"7860": sd_port})
    assert (await api.post(f"/pods/{sim.machine_id}/stop")).status_code == 200
    assert (await api.get(f"/pods/{sim.machine_id}")).json()["desiredStatus"] == "EXITED"
    await sim.machine.wait_for("off")
    assert (await api.post(f"/pods/{sim.machine_id}/stop")).status_code == 200  # harmless when stopped


async def test_start_error_is_refused_at_once_and_zero_gpu_resumes_without_a_gpu(
        sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    sim.set_faults(["start_error"])
    refused = await api.post(f"/pods/{sim.machine_id}/start")
    assert refused.status_code == 400 and "not enough free GPUs" in refused.json()["error"]
    assert sim.machine.state == "off"
    assert sim.faults.hits("start_error") == 1  # counted, as the soak reads it from /_sim/faults
    sim.set_faults(["zero_gpu"])
    await api.post(f"/pods/{sim.machine_id}/start")
    pod = (await api.get(f"/pods/{sim.machine_id}")).json()
    assert (pod["desiredStatus"], pod["gpu"]["count"]) == ("RUNNING", 0)
    assert sim.faults.hits("zero_gpu") == 1


async def test_external_terminate_ends_the_pod_for_good_after_the_first_image() -> None:
    async with SimulatedGpu(sim_settings(api="runpod", faults=("external_terminate",))) as sim, \
            httpx.AsyncClient(base_url=sim.api_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as api:
        await api.post(f"/pods/{sim.machine_id}/start")
        await sim.machine.wait_for("ready")
        async with httpx.AsyncClient() as client:  # the web UI mounts at once (sd_boot_delay 0)
            answer = await client.post(f"{sim.sd_url}/sdapi/v1/txt2img",
                                       json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert answer.status_code == 200
        await sim.machine.wait_for("terminated")
        pod = (await api.get(f"/pods/{sim.machine_id}")).json()
        again = await api.post(f"/pods/{sim.machine_id}/start")
        billed = sim.machine.billed_seconds
        await asyncio.sleep(0.05)
        assert sim.machine.billed_seconds == billed  # a terminated pod is billed no more
    assert pod["desiredStatus"] == "TERMINATED"
    assert again.status_code == 400 and "terminated" in again.json()["error"]


async def test_api_faults_strike_every_third_request(sim: SimulatedGpu, api: httpx.AsyncClient) -> None:
    sim.set_faults(["api_429"])
    limited = [await api.get(f"/pods/{sim.machine_id}") for _ in range(4)]
    assert [response.status_code for response in limited] == [429, 200, 200, 429]
    assert limited[0].headers["Retry-After"] == "1"
    sim.set_faults(["api_500"])
    assert (await api.get(f"/pods/{sim.machine_id}")).status_code == 500
    sim.set_faults(["stop_500"])
    codes = [(await api.post(f"/pods/{sim.machine_id}/stop")).status_code for _ in range(4)]
    assert codes == [500, 500, 500, 200]


def test_standalone_process_speaks_runpod_when_asked_at_the_price_asked() -> None:
    process = subprocess.Popen([sys.executable, "-m", "avatargen.simulator", "--api", "runpod",
                                "--hourly-price", "3600"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        where = json.loads(process.stdout.readline())
        assert where["api"] == "runpod"
        headers = {"Authorization": f"Bearer {where['api_key']}"}
        pod = httpx.get(f"{where['api_url']}/pods/{where['machine_id']}", headers=headers).json()
        assert (pod["desiredStatus"], pod["costPerHr"]) == ("EXITED", 3600)  # the soak's machine: 1 a second
        machine = httpx.get(where["api_url"].removesuffix("/v1") + "/_sim/machine", headers=headers).json()
        assert (machine["state"], machine["billedSeconds"]) == ("off", 0)
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors


@pytest.mark.parametrize("price", ["-1", "free", "inf"])
def test_standalone_process_refuses_a_price_that_is_not_one(price: str) -> None:
    done = subprocess.run([sys.executable, "-m", "avatargen.simulator", "--hourly-price", price],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and f"an hourly price is a number of 0 or more, got {price!r}" in done.stderr
