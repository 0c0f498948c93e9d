"""The simulated SD web UI answers like AUTOMATIC1111's API, over real HTTP; and it lives with the machine."""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import time
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from avatargen.sd import SdClient, SdError
from avatargen.simulator import SimulatedGpu
from avatargen.simulator.drawing import avatar_png, draw_avatar
from avatargen.simulator.sdwebui import BATCH_COST, MODEL, MODELS, STRANGER
from avatargen.sockets import bound_socket
from tests.simhelpers import decode_image, sd_settings, sd_webui, sim_settings, wait_sd_ready
from tests.support import wait_until


async def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{url}/sdapi/v1/txt2img", json=body, **kwargs)


async def first_answer(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """The first answer from a server that is coming up (connections refused until it listens)."""
    async with asyncio.timeout(2):
        while True:
            try:
                return await client.get(url)
            except httpx.ConnectError:
                await asyncio.sleep(0.005)


async def test_an_empty_request_gets_the_web_ui_defaults() -> None:
    async with sd_webui() as (_, url):
        response = await post(url, {})
    assert response.status_code == 200
    body = response.json()
    assert body["parameters"]["steps"] == 50
    assert body["parameters"]["batch_size"] == 1
    assert body["parameters"]["seed"] == -1
    info = json.loads(body["info"])  # a JSON document inside a string
    assert info["seed"] != -1  # a random seed was drawn
    assert info["sampler_name"] == "Euler"
    image = decode_image(body["images"][0])
    assert (image.format, image.size) == ("PNG", (512, 512))


async def test_a_batch_gives_valid_pngs_at_the_size_with_consecutive_seeds() -> None:
    request = {"prompt": "A painting of cjs", "seed": 1000, "batch_size": 3, "steps": 5, "width": 192,
               "height": 128, "sampler_name": "DPM++ 2M", "cfg_scale": 6.5}
    async with sd_webui() as (_, url):
        first, again = await post(url, request), await post(url, request)
    body = first.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [1000, 1001, 1002]
    assert info["sampler_name"] == "DPM++ 2M"
    assert info["sd_model_name"] == MODEL["model_name"]
    assert "Seed: 1001" in info["infotexts"][1]
    images = [decode_image(encoded) for encoded in body["images"]]
    assert [(image.format, image.size) for image in images] == [("PNG", (192, 128))] * 3
    assert len({image.tobytes() for image in images}) == 3  # each seed draws another avatar
    assert again.json()["images"] == body["images"]  # a fixed seed draws the same again
    assert body["parameters"]["cfg_scale"] == 6.5


async def test_an_unknown_sampler_silently_falls_back_and_numbers_as_strings_are_accepted() -> None:
    async with sd_webui() as (_, url):
        response = await post(url, {"sampler_name": "Imaginary", "steps": "3", "width": 64.0, "height": 64})
    assert response.status_code == 200
    assert json.loads(response.json()["info"])["sampler_name"] == "DPM++ 2M"  # AUTOMATIC1111 1.10: its first sampler
    assert response.json()["parameters"]["steps"] == 3


@pytest.mark.parametrize(("body", "loc", "kind"), [
    ({"steps": "many"}, ["body", "steps"], "type_error.integer"),
    ({"width": [512]}, ["body", "width"], "type_error.integer"),
    ({"cfg_scale": "high"}, ["body", "cfg_scale"], "type_error.float"),
    ({"override_settings": "cjs"}, ["body", "override_settings"], "type_error.dict"),
    ({"send_images": "maybe"}, ["body", "send_images"], "type_error.bool"),
    ({"prompt": None}, ["body", "prompt"], "type_error.none.not_allowed"),
    (["not", "an", "object"], ["body"], "type_error.dict"),
])
async def test_wrong_types_get_422_in_fastapi_shape(body: Any, loc: list[Any], kind: str) -> None:
    async with sd_webui() as (_, url):
        response = await post(url, body)
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == loc
    assert problem["type"] == kind
    assert problem["msg"]


async def test_a_body_that_is_not_json_gets_422() -> None:
    async with sd_webui() as (_, url), httpx.AsyncClient() as client:
        response = await client.post(f"{url}/sdapi/v1/txt2img", content=b"{prompt: cjs")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "value_error.jsondecode"


async def test_impossible_values_fail_in_the_web_ui_error_shape() -> None:
    async with sd_webui() as (_, url):
        response = await post(url, {"steps": 0})
    assert response.status_code == 500
    assert set(response.json()) == {"error", "detail", "body", "errors"}
    assert response.json()["error"] == "ValueError"
    assert "steps" in response.json()["detail"]


async def test_jobs_run_one_at_a_time_first_in_first_out() -> None:
    async with sd_webui(sim_settings(step_time=0.01)) as (webui, url):
        tasks = []

        def queued(length: int) -> bool:
            return webui.queue_length == length

        for number in range(3):  # each job takes 0.3 s: time to see it queue behind the others
            tasks.append(asyncio.create_task(post(url, {"prompt": f"job {number}", "steps": 30})))
            await wait_until(functools.partial(queued, number + 1), timeout=5)
        responses = await asyncio.gather(*tasks)
    assert [response.status_code for response in responses] == [200] * 3
    assert webui.completed == ["job 0", "job 1", "job 2"]


async def test_progress_rises_with_the_sampling_step_and_is_zero_when_idle() -> None:
    async with sd_webui(sim_settings(step_time=0.01)) as (_, url), httpx.AsyncClient() as client:
        idle = (await client.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "true"})).json()
        assert idle["progress"] == 0
        assert idle["state"]["job_count"] == 0
        job = asyncio.create_task(post(url, {"steps": 40, "batch_size": 3}))
        seen: list[dict[str, Any]] = []
        while not job.done():
            seen.append((await client.get(f"{url}/sdapi/v1/progress")).json())
        assert (await job).status_code == 200
    running = [sample for sample in seen if sample["state"]["job_count"]]
    assert len(running) >= 3
    steps = [sample["state"]["sampling_step"] for sample in running]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert all(0 <= sample["progress"] <= 1 for sample in running)
    sample = running[len(running) // 2]
    assert sample["state"]["sampling_steps"] == 40
    assert sample["progress"] == pytest.approx(sample["state"]["sampling_step"] / 40)
    # a batch of three takes 1 + 2 * 0.18 times the time of one image per step
    remaining = 40 - sample["state"]["sampling_step"]
    assert sample["eta_relative"] == pytest.approx(remaining * 0.01 * (1 + 2 * BATCH_COST))


def _distance(encoded: str, final: Image.Image) -> float:
    """Mean absolute difference per channel value (0..255) between a preview and the final image."""
    preview = decode_image(encoded).convert("RGB")
    assert preview.size == final.size
    return sum(ImageStat.Stat(ImageChops.difference(preview, final)).mean) / 3


async def _previews(url: str, body: dict[str, Any], *, skip: str = "false") -> tuple[list[tuple[int, str]], str]:
    """Each live preview seen while the job ran, with the step progress gave with it, and the final image."""
    async with httpx.AsyncClient(timeout=30) as client:
        job = asyncio.create_task(post(url, body))
        seen: list[tuple[int, str]] = []
        while not job.done():
            progress = (await client.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": skip})).json()
            image = progress["current_image"]
            if image is not None and (not seen or seen[-1][1] != image):
                seen.append((progress["state"]["sampling_step"], image))
        response = await job
    assert response.status_code == 200
    return seen, response.json()["images"][0]


async def test_live_previews_go_from_noise_to_the_final_image() -> None:
    body = {"prompt": "A painting of cjs", "seed": 7, "steps": 20, "width": 128, "height": 96, "batch_size": 2,
            "override_settings": {"show_progress_every_n_steps": 2}}
    async with sd_webui(sim_settings(step_time=0.02)) as (_, url):
        seen, final_image = await _previews(url, body)
    final = decode_image(final_image).convert("RGB")
    assert len(seen) >= 4
    assert all(step >= 2 for step, _ in seen)  # nothing before the first preview step
    distances = [_distance(image, final) for _, image in seen]
    assert distances == sorted(distances, reverse=True)  # each preview nearer the final picture
    assert distances[0] > 3 * distances[-1] and distances[0] > 20  # it starts as noise


async def test_live_previews_follow_the_web_ui_options() -> None:
    body = {"prompt": "cjs", "seed": 7, "steps": 20, "width": 64, "height": 64}
    async with sd_webui(sim_settings(step_time=0.005)) as (_, url), httpx.AsyncClient() as client:
        every_ten, _ = await _previews(url, body)  # the web UI's default period: 10 steps
        assert every_ten and all(step >= 10 for step, _ in every_ten)
        assert (await _previews(url, body, skip="true"))[0] == []
        off = {**body, "override_settings": {"live_previews_enable": False}}
        assert (await _previews(url, off))[0] == []
        assert (await _previews(url, {**body, "override_settings": {"show_progress_every_n_steps": -1}}))[0] == []
        options = (await client.get(f"{url}/sdapi/v1/options")).json()
    # a request's override_settings last for that request only
    assert options["live_previews_enable"] is True and options["show_progress_every_n_steps"] == 10


async def test_interrupt_makes_the_pending_txt2img_return_early_with_its_images() -> None:
    async with sd_webui(sim_settings(step_time=0.02)) as (_, url), httpx.AsyncClient() as client:
        started = time.monotonic()
        job = asyncio.create_task(post(url, {"steps": 150, "batch_size": 2, "n_iter": 3}))  # 3 x 3.5 s
        progress = {"state": {"sampling_step": 0}}
        async with asyncio.timeout(5):
            while progress["state"]["sampling_step"] < 2:
                progress = (await client.get(f"{url}/sdapi/v1/progress")).json()
        assert (await client.post(f"{url}/sdapi/v1/interrupt")).json() == {}
        response = await job
    assert time.monotonic() - started < 3
    assert response.status_code == 200
    assert len(response.json()["images"]) == 2  # the first batch, half-denoised; later batches skipped
    assert decode_image(response.json()["images"][0]).size == (512, 512)


async def test_skip_ends_only_the_current_batch() -> None:
    async with sd_webui(sim_settings(step_time=0.02)) as (_, url), httpx.AsyncClient() as client:
        job = asyncio.create_task(post(url, {"steps": 150, "n_iter": 2}))
        progress = {"state": {"job_no": 0, "sampling_step": 0}}
        async with asyncio.timeout(5):
            while progress["state"]["sampling_step"] < 1:
                progress = (await client.get(f"{url}/sdapi/v1/progress")).json()
            await client.post(f"{url}/sdapi/v1/skip")
            while progress["state"]["job_no"] < 1:
                progress = (await client.get(f"{url}/sdapi/v1/progress")).json()
            await client.post(f"{url}/sdapi/v1/interrupt")
        response = await job
    assert len(response.json()["images"]) == 2  # one image from each batch


async def test_models_samplers_and_options_answer() -> None:
    async with sd_webui() as (_, url), httpx.AsyncClient(base_url=url) as client:
        models = (await client.get("/sdapi/v1/sd-models")).json()
        samplers = (await client.get("/sdapi/v1/samplers")).json()
        schedulers = (await client.get("/sdapi/v1/schedulers")).json()
        options = (await client.get("/sdapi/v1/options")).json()
        assert (await client.post("/sdapi/v1/options", json={"samples_format": "webp"})).json() is None
        changed = (await client.get("/sdapi/v1/options")).json()
        refused = await client.post("/sdapi/v1/options", json=["webp"])
    assert models == list(MODELS)
    assert models[0]["title"] == "cjs-dreambooth.safetensors [3f6a1c9e2b]"  # name [first 10 of the sha256]
    assert all(model["title"].endswith(f" [{model['sha256'][:10]}]") for model in models)
    assert {"DPM++ 2M", "Euler"} <= {sampler["name"] for sampler in samplers}
    assert "Karras" in {scheduler["label"] for scheduler in schedulers}
    assert options["sd_model_checkpoint"] == MODEL["title"]
    assert changed["samples_format"] == "webp"
    assert refused.status_code == 422


async def test_forge_has_no_schedulers_names_the_schedule_in_the_sampler_and_refuses_unknown_ones() -> None:
    async with sd_webui(sim_settings(webui="forge")) as (_, url), httpx.AsyncClient(base_url=url) as client:
        samplers = {sampler["name"] for sampler in (await client.get("/sdapi/v1/samplers")).json()}
        schedulers = await client.get("/sdapi/v1/schedulers")
        options = (await client.get("/sdapi/v1/options")).json()
        karras = await post(url, {"prompt": "cjs", "steps": 2, "sampler_name": "DPM++ 2M Karras",
                                  "scheduler": "Exponential"})
        unknown = await post(url, {"prompt": "cjs", "steps": 2, "sampler_name": "DPM++ 9M"})
        default = await post(url, {"prompt": "cjs", "steps": 2})
    assert {"DPM++ 2M", "DPM++ 2M Karras"} <= samplers
    assert schedulers.status_code == 404
    assert options["sd_model_checkpoint"] is None  # until a model is set
    assert options["live_previews_enable"] is False
    info = json.loads(karras.json()["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M Karras", None)  # the scheduler field ignored
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Sampler not found"})
    assert json.loads(default.json()["info"])["sampler_name"] == "Euler"


async def test_automatic1111_splits_the_schedule_off_and_quietly_replaces_an_unknown_sampler() -> None:
    async with sd_webui() as (_, url):
        karras = await post(url, {"prompt": "cjs", "steps": 2, "sampler_name": "DPM++ 2M Karras"})
        unknown = await post(url, {"prompt": "cjs", "steps": 2, "sampler_name": "DPM++ 9M"})
    assert (json.loads(karras.json()["info"])["sampler_name"], json.loads(karras.json()["info"])["scheduler"]) == (
        "DPM++ 2M", "Karras")
    assert unknown.status_code == 200
    assert json.loads(unknown.json()["info"])["sampler_name"] == "DPM++ 2M"


@pytest.mark.parametrize("name", ["cjs-dreambooth.safetensors [3f6a1c9e2b]", "cjs-dreambooth.safetensors",
                                  "cjs-dreambooth", "3f6a1c9e2b", MODEL["sha256"]])
async def test_a_request_gets_the_model_by_any_of_its_names(name: str) -> None:
    async with sd_webui() as (webui, url), httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": STRANGER["title"]})).json() is None
        answer = await post(url, {"prompt": "cjs", "steps": 2, "override_settings": {"sd_model_checkpoint": name}})
    assert json.loads(answer.json()["info"])["sd_model_name"] == "cjs-dreambooth"
    assert webui.loaded is STRANGER  # an override is for that request only


async def test_an_unknown_model_quietly_keeps_the_loaded_one_and_options_refuse_it_with_500() -> None:
    async with sd_webui(sim_settings(webui="forge")) as (webui, url), httpx.AsyncClient(base_url=url) as client:
        answer = await post(url, {"prompt": "cjs", "steps": 2,
                                  "override_settings": {"sd_model_checkpoint": "cjs-dreambooth.ckpt"}})
        refused = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "cjs-dreambooth.ckpt"})
        set_by_file_name = await client.post("/sdapi/v1/options",
                                             json={"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors"})
        options = (await client.get("/sdapi/v1/options")).json()
    assert json.loads(answer.json()["info"])["sd_model_name"] == "cjs-dreambooth"  # no error: the loaded model
    assert refused.status_code == 500
    assert refused.json()["detail"] == "model 'cjs-dreambooth.ckpt' not found"
    assert set_by_file_name.status_code == 200
    assert options["sd_model_checkpoint"] == "v1-5-pruned-emaonly.safetensors"  # as it was set
    assert webui.loaded is STRANGER


async def test_basic_auth_guards_every_route_when_set() -> None:
    async with sd_webui(auth=("owner", "s3cret")) as (_, url), httpx.AsyncClient(base_url=url) as client:
        missing = await client.get("/sdapi/v1/sd-models")
        wrong = await client.get("/sdapi/v1/sd-models", auth=("owner", "guess"))
        right = await client.get("/sdapi/v1/sd-models", auth=("owner", "s3cret"))
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Basic"
    assert missing.json() == {"detail": "Incorrect username or password"}
    assert right.status_code == 200


async def test_sd_500_fault_answers_cuda_out_of_memory_in_the_documented_shape() -> None:
    async with sd_webui(faults=["sd_500"]) as (_, url):
        response = await post(url, {"steps": 2})
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert body["error"] == "OutOfMemoryError"
    assert body["detail"].startswith("CUDA out of memory")


async def test_sd_garbage_fault_alternates_a_proxy_page_and_cut_off_json() -> None:
    async with sd_webui(faults=["sd_garbage"]) as (_, url):
        proxy, cut = await post(url, {"steps": 2}), await post(url, {"steps": 2})
    assert proxy.status_code == 502
    assert proxy.headers["content-type"].startswith("text/html")
    assert cut.status_code == 200
    with pytest.raises(ValueError):
        cut.json()


async def test_sd_invalid_image_fault_sends_base64_that_is_not_an_image_then_not_base64() -> None:
    async with sd_webui(faults=["sd_invalid_image"]) as (_, url):
        bytes_, text = await post(url, {"steps": 2}), await post(url, {"steps": 2})
    with pytest.raises(Exception):  # noqa: B017 - Pillow's error for unreadable images
        decode_image(bytes_.json()["images"][0])
    assert text.json()["images"][0] == "not base64 at all!"


async def test_sd_slow_first_fault_slows_only_the_first_job_after_boot() -> None:
    async with sd_webui(sim_settings(step_time=0.02), faults=["sd_slow_first"]) as (webui, url):
        timings = []
        for _ in range(2):
            started = time.monotonic()
            await post(url, {"steps": 10})
            timings.append(time.monotonic() - started)
        webui.boot()
        started = time.monotonic()
        await post(url, {"steps": 10})
        after_reboot = time.monotonic() - started
    assert timings[0] >= 1.0 and after_reboot >= 1.0  # 10 steps x 20 ms x 5, a lower bound however busy
    assert timings[1] < timings[0] / 2  # 0.2 s: room for a busy machine's overhead


async def test_the_web_ui_is_refused_while_the_machine_is_off_and_404_while_it_mounts() -> None:
    settings = sim_settings(sd_boot_delay=0.2)
    async with SimulatedGpu(settings) as sim, httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{sim.sd_url}/sdapi/v1/progress")
        sim.machine.start()
        await sim.machine.wait_for("serviceready")
        with pytest.raises(httpx.ConnectError):  # "serviceready" is not ready: the web UI is not up
            await client.get(f"{sim.sd_url}/sdapi/v1/progress")
        await sim.machine.wait_for("ready")
        mounting = await first_answer(client, f"{sim.sd_url}/sdapi/v1/sd-models")
        assert mounting.status_code == 404
        assert mounting.json() == {"detail": "Not Found"}
        async with SdClient(sd_settings(), url=sim.sd_url) as sd:
            await wait_sd_ready(sd)
        assert (await client.get(f"{sim.sd_url}/sdapi/v1/sd-models")).status_code == 200
        sim.machine.stop()
        await sim.machine.wait_for("off")
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{sim.sd_url}/sdapi/v1/progress")


@pytest.mark.parametrize("backend", ["a1111", "comfyui"])
async def test_no_other_server_can_take_the_sd_port_while_the_machine_is_off(backend: str) -> None:
    # Before a boot and between two, another process's server on that port would answer the run's probe.
    async with SimulatedGpu(sim_settings(), backend=backend) as sim, httpx.AsyncClient() as client:
        port = int(sim.sd_url.rsplit(":", 1)[1])
        for _ in range(2):
            with pytest.raises(OSError) as taken:
                bound_socket("127.0.0.1", port).close()  # as uvicorn binds: SO_REUSEADDR
            assert taken.value.errno == errno.EADDRINUSE
            sim.machine.start()
            await sim.machine.wait_for("ready")
            await first_answer(client, f"{sim.sd_url}/system_stats")  # served on that port
            sim.machine.stop()
            await sim.machine.wait_for("off")


async def test_external_stop_fault_stops_the_machine_after_the_first_answer() -> None:
    async with SimulatedGpu(sim_settings(faults=("external_stop",))) as sim:
        sim.machine.start()
        await sim.machine.wait_for("ready")
        async with SdClient(sd_settings(), url=sim.sd_url) as sd:
            await wait_sd_ready(sd)
            result = await sd.txt2img("A sketch of cjs", batch_size=1)
            assert len(result.images) == 1
            await sim.machine.wait_for("off")
            with pytest.raises(SdError) as failure:
                await sd.txt2img("A sketch of cjs", batch_size=1)
    assert failure.value.retryable
    assert failure.value.status is None


async def test_stopping_the_machine_drops_a_request_in_flight() -> None:
    async with SimulatedGpu(sim_settings(step_time=0.05)) as sim:
        sim.machine.start()
        await sim.machine.wait_for("ready")
        async with SdClient(sd_settings(steps=100), url=sim.sd_url) as sd:
            await wait_sd_ready(sd)
            job = asyncio.create_task(sd.txt2img("cjs", batch_size=1))
            await wait_until(lambda: sim.sd.queue_length == 1, timeout=5)
            sim.machine.stop()
            with pytest.raises(SdError) as failure:
                await job
    assert failure.value.retryable


def test_avatars_are_drawn_fast_and_differ_with_prompt_and_seed() -> None:
    durations = []
    for seed in range(5):
        started = time.perf_counter()
        avatar_png("A painting of cjs", seed, 512, 512)
        durations.append(time.perf_counter() - started)
    assert min(durations) < 0.05
    base = draw_avatar("A painting of cjs", 1, 96, 96).tobytes()
    assert draw_avatar("A painting of cjs", 1, 96, 96).tobytes() == base
    assert draw_avatar("A painting of cjs", 2, 96, 96).tobytes() != base
    assert draw_avatar("A photograph of cjs", 1, 96, 96).tobytes() != base
    sketch = draw_avatar("A charcoal sketch of cjs", 1, 64, 64)
    red, green, blue = sketch.split()
    assert red.tobytes() == green.tobytes() == blue.tobytes()
    assert draw_avatar("cjs", 1, 300, 200).size == (300, 200)
    with pytest.raises(ValueError, match="positive"):
        draw_avatar("cjs", 1, 0, 10)
