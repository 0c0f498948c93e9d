"""Both simulated machine APIs answer exactly what the vendors' own OpenAPI documents promise.

Every answer the simulator gives during a full session (the provider's whole life cycle, each fault,
a wrong key, a wrong id, the owner's own calls) is recorded off the real HTTP connection and validated
with openapi-core against the response schema of the same route in the vendor's document (required
fields, types, enums, nullability, no extra fields where the schema forbids them). What is checked comes
from `tests/specs/`: excerpts of the vendors' documents holding only the routes the product calls and
their schemas (see tests/specs/README.md), so the suite needs nothing outside the checkout.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_schema_validator import OAS30Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from avatargen.config import GpuSettings, Secret
from avatargen.gpu import MachineError, api_provider
from avatargen.simulator import SimulatedGpu
from tests.simhelpers import sim_settings
from tests.specs.extract import ROUTES, render, vendor_documents

SPECS = Path(__file__).resolve().parent / "specs"
SPEC_FILES = {"paperspace": "paperspace-v1-machines.openapi.json", "runpod": "runpod-rest-v1.openapi.json"}
GPU = GpuSettings(poll_every=0.02, stop_timeout=5.0)


def load_spec(api: str) -> tuple[OpenAPI, dict[str, Any]]:
    path = SPECS / SPEC_FILES[api]
    document = json.loads(path.read_text())
    # The excerpts pass the strict check of OpenAPI documents (RunPod's whole document repeats an
    # operationId, left out of the excerpt with the other prose).
    return OpenAPI.from_dict(document), document


@dataclass
class VendorRequest:
    """An answered request as openapi-core reads it, addressed to the vendor's own server."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    body: bytes | None
    content_type: str


@dataclass
class VendorResponse:
    status_code: int
    data: bytes
    content_type: str
    headers: Headers


def as_vendor(response: httpx.Response, server: str) -> tuple[VendorRequest, VendorResponse]:
    """The exchange as if made with the vendor's server (its spec names https://api.../v1)."""
    vendor, request = urlsplit(server), response.request
    query = ImmutableMultiDict(list(request.url.params.multi_items()))
    parameters = RequestParameters(query=query, header=Headers(dict(request.headers)))
    return (VendorRequest(f"{vendor.scheme}://{vendor.netloc}", request.url.path, request.method.lower(), parameters,
                          request.content or None, request.headers.get("content-type", "")),
            VendorResponse(response.status_code, response.content, response.headers.get("content-type", ""),
                           Headers(dict(response.headers))))


@pytest.fixture(params=sorted(SPEC_FILES))
async def session(request: pytest.FixtureRequest
                  ) -> AsyncIterator[tuple[SimulatedGpu, httpx.AsyncClient, list[httpx.Response]]]:
    """A simulated GPU, and a connection pool that records every answer it gets."""
    answers: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        answers.append(response)

    async with SimulatedGpu(sim_settings(api=request.param)) as sim, httpx.AsyncClient(
            event_hooks={"response": [keep]}, timeout=10) as http:
        yield sim, http, answers


async def live_a_session(sim: SimulatedGpu, http: httpx.AsyncClient) -> None:
    """What avatargen does with a machine, plus every fault and mistake the simulator can answer."""
    provider = sim.provider(GPU, http=http, backoff=0.01, max_retries=3)
    assert await provider.check() is not None
    await provider.start()
    await provider.wait_ready(5, lambda state: None)
    await provider.stop(lambda state: None)
    await sim.machine.wait_for("off")
    for faults in (["api_429", "api_500"], ["stop_500"], ["start_error"], ["zero_gpu"], ["never_ready"]):
        sim.set_faults(faults)
        with contextlib.suppress(MachineError):
            await provider.start()
            await provider.wait_ready(0.3, lambda state: None)
        await provider.stop(lambda state: None)
        await sim.machine.wait_for("off")
    sim.set_faults([])
    for key, machine_id in (("wrong-key", sim.machine_id), (sim.api_key, "nope42")):
        stranger = api_provider(GPU, sim.api, api_url=sim.api_url, api_key=Secret(key), machine_id=machine_id,
                                sd_url=sim.sd_url, http=http, max_retries=0)
        for attempt in (stranger.check, stranger.start):
            with contextlib.suppress(MachineError):
                await attempt()
    owner = {"Authorization": f"Bearer {sim.api_key}"}
    if sim.api == "paperspace":  # the owner's own calls: the backstop, the event list
        machine_url = f"{sim.api_url}/machines/{sim.machine_id}"
        await http.put(machine_url, headers=owner, json={"autoShutdownEnabled": False})
        await http.put(machine_url, headers=owner, json={"autoShutdownEnabled": True, "autoShutdownTimeout": 2})
        await http.put(machine_url, headers=owner, json={"diskSize": 50})
        await http.get(f"{sim.api_url}/machine-events", headers=owner, params={"limit": 2})
    else:
        await provider.start()
        sim.machine.terminate()
        await http.get(f"{sim.api_url}/pods/{sim.machine_id}", headers=owner)
        await http.post(f"{sim.api_url}/pods/{sim.machine_id}/start", headers=owner)
    await provider.aclose()


async def test_every_answer_is_valid_under_the_vendor_s_openapi_document(
        session: tuple[SimulatedGpu, httpx.AsyncClient, list[httpx.Response]]) -> None:
    sim, http, answers = session
    await live_a_session(sim, http)
    spec, document = load_spec(sim.api)
    server = document["servers"][0]["url"]
    checked: set[tuple[str, str, int]] = set()
    undocumented: set[int] = set()
    for answer in answers:
        request, response = as_vendor(answer, server)
        route = request.path.replace(sim.machine_id, "{id}").replace("nope42", "{id}")
        if route.startswith("/v1/machine-events"):
            route = "/v1/machine-events/{id}" if route.count("/") == 3 else route
            # Not in the machines document: its events are the ones the start and stop answers hold.
            body = answer.json()
            for event in body.get("items", [body]) if answer.is_success else []:
                OAS30Validator(paperspace_event_schema(document)).validate(event)
            checked.add((request.method, route, response.status_code))
            continue
        try:
            spec.validate_response(request, response)
        except ResponseNotFound:  # a status the document lists no answer for on this route
            undocumented.add(response.status_code)
            continue
        checked.add((request.method, route, response.status_code))
    # What a document cannot judge is only what real clouds send undocumented: a refused key, a rate limit,
    # an outage.
    assert undocumented <= {401, 429, 500}, undocumented
    assert EXPECTED[sim.api] <= checked, EXPECTED[sim.api] - checked


def paperspace_event_schema(document: dict[str, Any]) -> dict[str, Any]:
    start = document["paths"]["/machines/{id}/start"]["patch"]["responses"]["200"]
    return start["content"]["application/json"]["schema"]["properties"]["event"]


EXPECTED = {  # (method, route, status) the session must have produced and validated, at the least
    "paperspace": {("get", "/v1/machines/{id}", 200), ("patch", "/v1/machines/{id}/start", 200),
                   ("patch", "/v1/machines/{id}/stop", 200), ("put", "/v1/machines/{id}", 200),
                   ("put", "/v1/machines/{id}", 400), ("get", "/v1/machines/{id}", 401),
                   ("get", "/v1/machines/{id}", 404), ("get", "/v1/machines/{id}", 429),
                   ("get", "/v1/machines/{id}", 500), ("patch", "/v1/machines/{id}/stop", 500),
                   ("get", "/v1/machine-events/{id}", 200), ("get", "/v1/machine-events", 200)},
    "runpod": {("get", "/v1/pods/{id}", 200), ("post", "/v1/pods/{id}/start", 200),
               ("post", "/v1/pods/{id}/stop", 200), ("post", "/v1/pods/{id}/start", 400),
               ("get", "/v1/pods/{id}", 404)},
}


def test_the_excerpts_say_what_the_vendors_documents_say() -> None:
    """Where the whole documents are at hand (shared/reference/specs/ above the checkout, as in CI), the
    excerpts in tests/specs/ are exactly what `python -m tests.specs.extract` makes of them."""
    source = vendor_documents()
    if source is None:
        pytest.skip("the vendors' whole OpenAPI documents (shared/reference/specs/) are not above this checkout; "
                    "the excerpts in tests/specs/ are used as committed")
    for name, routes in ROUTES.items():
        made = render(json.loads((source / name).read_text()), routes)
        assert (SPECS / name).read_text() == made, f"tests/specs/{name} is stale: run python -m tests.specs.extract"
