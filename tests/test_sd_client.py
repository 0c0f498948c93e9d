"""SdClient against the simulated web UI (and fixed answers for shapes no fault produces), over loopback."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from starlette.responses import JSONResponse, Response

from avatargen.sd import SdClient, SdError, SdNotReady
from avatargen.simulator.sdwebui import MODEL, STRANGER
from tests.simhelpers import decode_image, fixed_answers, sd_settings, sd_webui, sim_settings
from tests.support import wait_until


async def sim_options(url: str, changes: dict[str, object]) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        (await client.post("/sdapi/v1/options", json=changes)).raise_for_status()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_txt2img_returns_pngs_at_the_size_with_seeds_from_the_seed() -> None:
    settings = sd_settings(sampler="DPM++ 2M", steps=7, cfg_scale=5.5, negative_prompt="blurry",
                           checkpoint="cjs-dreambooth")
    async with sd_webui() as (_, url), SdClient(settings, url=url) as sd:
        result = await sd.txt2img("A painting of cjs", batch_size=3, seed=42)
    assert result.seeds == [42, 43, 44]
    assert [decode_image(image).size for image in result.images] == [(128, 96)] * 3
    assert {decode_image(image).format for image in result.images} == {"PNG"}
    assert result.info["seed"] == 42
    sent = result.parameters
    assert (sent["sampler_name"], sent["steps"], sent["cfg_scale"], sent["negative_prompt"]) == (
        "DPM++ 2M", 7, 5.5, "blurry")
    assert sent["override_settings"] == {"sd_model_checkpoint": "cjs-dreambooth"}


async def test_txt2img_without_a_checkpoint_leaves_the_model_alone() -> None:
    async with sd_webui() as (_, url), SdClient(sd_settings(), url=url) as sd:
        result = await sd.txt2img("cjs", batch_size=1)
    assert result.parameters["override_settings"] is None
    assert result.seeds[0] != -1  # a random seed, reported back


async def test_out_of_memory_reads_as_the_web_ui_said_it_and_may_be_retried() -> None:
    async with sd_webui(faults=["sd_500"]) as (_, url), SdClient(sd_settings(), url=url) as sd:
        with pytest.raises(SdError) as failure:
            await sd.txt2img("cjs", batch_size=2)
    assert failure.value.status == 500
    assert failure.value.message.startswith("SD web UI error 500 OutOfMemoryError: CUDA out of memory")
    assert failure.value.retryable


async def test_garbage_answers_are_errors_not_crashes() -> None:
    async with sd_webui(faults=["sd_garbage"]) as (_, url), SdClient(sd_settings(), url=url) as sd:
        with pytest.raises(SdError) as proxy:
            await sd.txt2img("cjs", batch_size=1)
        with pytest.raises(SdError) as cut:
            await sd.txt2img("cjs", batch_size=1)
    assert proxy.value.status == 502
    assert "not JSON" in proxy.value.message and "502 Bad Gateway" in proxy.value.message
    assert proxy.value.retryable
    assert cut.value.status == 200
    assert "not JSON" in cut.value.message
    assert cut.value.retryable


async def test_images_that_are_not_images_are_refused() -> None:
    async with sd_webui(faults=["sd_invalid_image"]) as (_, url), SdClient(sd_settings(), url=url) as sd:
        with pytest.raises(SdError, match="image 0 is not a PNG, JPEG or WebP image"):
            await sd.txt2img("cjs", batch_size=1)
        with pytest.raises(SdError, match="image 0 is not valid base64"):
            await sd.txt2img("cjs", batch_size=1)


async def test_error_shapes_without_a_fault_are_read_too() -> None:
    answers = {
        "/422/sdapi/v1/txt2img": JSONResponse({"detail": [
            {"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"},
            {"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]}, status_code=422),
        "/detail/sdapi/v1/txt2img": JSONResponse({"detail": "Sampler not found"}, status_code=404),
        "/no-images/sdapi/v1/txt2img": JSONResponse({"parameters": {}, "info": "{}"}),
        "/empty/sdapi/v1/txt2img": JSONResponse({"images": [], "info": "{}"}),
        "/numbers/sdapi/v1/txt2img": JSONResponse({"images": [1, 2]}),
        "/plain/sdapi/v1/txt2img": Response("upstream timed out", status_code=504, media_type="text/plain"),
        "/proxy/sdapi/v1/txt2img": Response("<html><title>A timeout occurred | Cloudflare</title></html>",
                                            status_code=524, media_type="text/html"),
    }
    expected = {
        "/422": (422, False, "SD web UI error 422 invalid request: steps: value is not a valid integer; body: field "
                             "required"),
        "/detail": (404, False, "SD web UI error 404 Sampler not found"),
        "/no-images": (200, True, "SD web UI sent an unusable answer: it has no images"),
        "/empty": (200, True, "SD web UI sent an unusable answer: it has no images"),
        "/numbers": (200, True, "SD web UI sent an unusable answer: image 0 is not a base64 string"),
        "/plain": (504, True, "SD web UI error 504 the answer is not JSON: 'upstream timed out'"),
        "/proxy": (524, True, "SD web UI error 524 the proxy in front of the web UI (RunPod's, Cloudflare) cut the "
                              "request after 100 s"),
    }
    async with fixed_answers(answers) as url:
        for prefix, (status, retryable, message) in expected.items():
            async with SdClient(sd_settings(), url=url + prefix) as sd:
                with pytest.raises(SdError) as failure:
                    await sd.txt2img("cjs", batch_size=1)
            assert (failure.value.status, failure.value.retryable) == (status, retryable), prefix
            assert failure.value.message.startswith(message), failure.value.message
            assert str(failure.value) == failure.value.message


async def test_seeds_come_from_seed_when_all_seeds_is_missing_and_info_may_be_an_object() -> None:
    async with sd_webui() as (_, url), SdClient(sd_settings(), url=url) as sd:
        png = (await sd.txt2img("cjs", batch_size=1, seed=7)).images[0]
    answers = {
        "/seed/sdapi/v1/txt2img": JSONResponse({"images": [png, png], "info": {"seed": 10}}),
        "/none/sdapi/v1/txt2img": JSONResponse({"images": [png], "info": "not json"}),
    }
    async with fixed_answers(answers) as url:
        async with SdClient(sd_settings(), url=url + "/seed") as sd:
            assert (await sd.txt2img("cjs", batch_size=2)).seeds == [10, 11]
        async with SdClient(sd_settings(), url=url + "/none") as sd:
            result = await sd.txt2img("cjs", batch_size=1)
    assert (result.seeds, result.info) == ([-1], {})


async def test_an_unreachable_web_ui_is_a_retryable_error() -> None:
    async with SdClient(sd_settings(), url=closed_port_url()) as sd:
        with pytest.raises(SdError) as failure:
            await sd.txt2img("cjs", batch_size=1)
    assert failure.value.status is None
    assert failure.value.retryable
    assert "cannot reach the SD web UI at http://127.0.0.1:" in failure.value.message


async def test_a_txt2img_slower_than_its_timeout_is_a_retryable_error() -> None:
    async with sd_webui(sim_settings(step_time=0.05)) as (_, url), SdClient(
            sd_settings(steps=20), url=url, txt2img_timeout=0.2) as sd:
        with pytest.raises(SdError, match="did not answer in time") as failure:
            await sd.txt2img("cjs", batch_size=1)
    assert failure.value.retryable


async def test_basic_auth_uses_the_username_and_the_password_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_SD_PASSWORD", "s3cret")
    right = sd_settings(username="owner", password_env="SIM_SD_PASSWORD")
    async with sd_webui(auth=("owner", "s3cret")) as (_, url):
        async with SdClient(right, url=url) as sd:
            assert len((await sd.txt2img("cjs", batch_size=1)).images) == 1
            assert "s3cret" not in repr(sd)
        monkeypatch.setenv("SIM_SD_PASSWORD", "guess")
        async with SdClient(right, url=url) as sd:
            with pytest.raises(SdError) as failure:
                await sd.txt2img("cjs", batch_size=1)
        async with SdClient(sd_settings(), url=url) as anonymous:
            with pytest.raises(SdError) as probe_failure:
                await anonymous.probe("")
    assert failure.value.status == 401
    assert not failure.value.retryable
    assert "Incorrect username or password" in failure.value.message
    assert "$SIM_SD_PASSWORD" in failure.value.message
    assert "guess" not in failure.value.message
    assert not isinstance(probe_failure.value, SdNotReady)  # bad credentials never heal by waiting


async def test_progress_interrupt_and_models() -> None:
    async with sd_webui(sim_settings(step_time=0.02)) as (webui, url), SdClient(
            sd_settings(steps=150), url=url) as sd:
        idle = await sd.progress()
        assert (idle.progress, idle.job_count) == (0, 0)
        assert [model["title"] for model in await sd.sd_models()] == [MODEL["title"], STRANGER["title"]]
        started = time.monotonic()
        job = asyncio.create_task(sd.txt2img("cjs", batch_size=2))  # 150 steps: 3.5 s unless interrupted
        await wait_until(lambda: webui.queue_length == 1, timeout=5, every=0.005)
        progress = await sd.progress()
        while progress.sampling_step == 0:
            progress = await sd.progress()
        assert progress.job_count == 1
        assert progress.sampling_steps == 150
        assert 0 < progress.progress < 1
        assert progress.eta_relative > 0
        await sd.interrupt()
        result = await job
    assert time.monotonic() - started < 2
    assert len(result.images) == 2


async def test_probe_waits_through_a_refused_port_and_unmounted_routes() -> None:
    async with SdClient(sd_settings(), url=closed_port_url()) as sd:
        with pytest.raises(SdNotReady, match="not ready"):
            await sd.probe("")
    async with sd_webui(sim_settings(sd_boot_delay=5)) as (_, url), SdClient(sd_settings(), url=url) as sd:
        with pytest.raises(SdNotReady) as mounting:
            await sd.probe("")
    assert mounting.value.status == 404
    assert mounting.value.retryable
    async with fixed_answers({"/sdapi/v1/sd-models": JSONResponse([])}) as url, SdClient(
            sd_settings(), url=url) as sd:
        with pytest.raises(SdNotReady, match="no models yet"):
            await sd.probe("")


@pytest.mark.parametrize("webui", ["automatic1111", "forge"])
@pytest.mark.parametrize("checkpoint", [MODEL["title"], "cjs-dreambooth.safetensors", "cjs-dreambooth",
                                        "3f6a1c9e2b", MODEL["sha256"], MODEL["sha256"][:8]])
async def test_the_checkpoint_written_any_way_the_web_ui_knows_it_gets_the_owners_model(
        checkpoint: str, webui: str) -> None:
    async with sd_webui(sim_settings(webui=webui)) as (sim, url), SdClient(
            sd_settings(checkpoint=checkpoint), url=url) as sd:
        await sim_options(url, {"sd_model_checkpoint": STRANGER["title"]})  # the server has loaded another model
        await sd.probe(checkpoint)
        result = await sd.generate("cjs", count=1)
    assert result.metadata["model"] == "cjs-dreambooth"
    assert result.images and sim.loaded is STRANGER


async def test_without_a_checkpoint_the_probe_takes_the_web_uis_model() -> None:
    async with sd_webui() as (_, url), SdClient(sd_settings(), url=url) as sd:
        await sd.probe("")
        result = await sd.txt2img("cjs", batch_size=1)
    assert result.parameters["override_settings"] is None


@pytest.mark.parametrize("webui", ["automatic1111", "forge"])
async def test_probe_fails_for_good_when_the_checkpoint_is_missing(webui: str) -> None:
    async with sd_webui(sim_settings(webui=webui)) as (sim, url), SdClient(sd_settings(), url=url) as sd:
        with pytest.raises(SdError) as failure:
            await sd.probe("someone-else.safetensors")
    assert not isinstance(failure.value, SdNotReady)
    assert not failure.value.retryable
    assert "'someone-else.safetensors'" in failure.value.message
    assert "'cjs-dreambooth.safetensors [3f6a1c9e2b]' or 'cjs-dreambooth'" in failure.value.message  # what would do
    assert "'v1-5-pruned-emaonly.safetensors [6ce0161689]'" in failure.value.message
    assert sim.completed == []  # nothing paid for


async def test_a_name_two_models_answer_to_is_refused_naming_both() -> None:
    models = [{"title": f"{folder}/face.safetensors [{digest}]", "model_name": f"{folder}_face", "hash": digest,
               "sha256": digest + "0" * 54, "filename": f"/models/Stable-diffusion/{folder}/face.safetensors"}
              for folder, digest in (("2024", "1111111111"), ("2025", "2222222222"))]
    async with fixed_answers({"/sdapi/v1/sd-models": JSONResponse(models)}) as url, SdClient(
            sd_settings(), url=url) as sd:
        with pytest.raises(SdError) as failure:
            await sd.probe("face")
    assert "names 2 models" in failure.value.message
    assert "'2024/face.safetensors [1111111111]', '2025/face.safetensors [2222222222]'" in failure.value.message


@pytest.mark.parametrize(("webui", "sent"), [("automatic1111", "DPM++ 2M"), ("forge", "DPM++ 2M Karras")])
async def test_the_sampler_gets_the_schedule_automatic1111_pairs_with_it_on_either_server(webui: str,
                                                                                          sent: str) -> None:
    async with sd_webui(sim_settings(webui=webui)) as (_, url), SdClient(
            sd_settings(sampler="DPM++ 2M"), url=url) as sd:
        await sd.probe("")
        result = await sd.txt2img("cjs", batch_size=1)
    assert result.parameters["sampler_name"] == sent
    assert result.info["sampler_name"] == sent if webui == "forge" else result.info["scheduler"] == "Automatic"


@pytest.mark.parametrize("webui", ["automatic1111", "forge"])
async def test_a_sampler_the_server_lacks_fails_the_probe_naming_what_it_has(webui: str) -> None:
    async with sd_webui(sim_settings(webui=webui)) as (_, url), SdClient(
            sd_settings(sampler="DPM++ 9M"), url=url) as sd:
        with pytest.raises(SdError) as failure:
            await sd.probe("")
    assert not failure.value.retryable
    assert "no sampler 'DPM++ 9M'" in failure.value.message
    assert "Euler a" in failure.value.message


async def test_live_previews_are_asked_for_each_request_and_fetched_only_when_wanted() -> None:
    settings = sd_settings(steps=20, checkpoint="cjs-dreambooth")
    async with sd_webui(sim_settings(step_time=0.02)) as (_, url), SdClient(settings, url=url,
                                                                              live_previews=True) as sd:
        job = asyncio.create_task(sd.txt2img("cjs", batch_size=2, seed=3))
        progress = await sd.progress(preview=True)
        while progress.preview is None:
            progress = await sd.progress(preview=True)
        assert progress.sampling_step >= 4  # one preview every 20 // 5 steps
        assert (await sd.progress()).preview is None  # not fetched unless wanted: hundreds of kB each
        result = await job
    assert result.parameters["override_settings"] == {
        "sd_model_checkpoint": "cjs-dreambooth", "live_previews_enable": True, "show_progress_grid": False,
        "show_progress_every_n_steps": 4, "show_progress_type": "Approx cheap"}
    image = Image.open(io.BytesIO(progress.preview))
    assert (image.format, image.size) == ("PNG", (128, 96))


@pytest.mark.parametrize("current_image", ["not base64!", "bm90IGFuIGltYWdl", 42, ""])
async def test_a_preview_that_is_not_an_image_is_dropped(current_image: object) -> None:
    body = {"progress": 0.5, "eta_relative": 1, "state": {"sampling_step": 5, "sampling_steps": 10, "job_count": 1},
            "current_image": current_image}
    async with fixed_answers({"/sdapi/v1/progress": JSONResponse(body)}) as url, SdClient(sd_settings(), url=url) as sd:
        progress = await sd.progress(preview=True)
    assert (progress.sampling_step, progress.preview) == (5, None)  # the step bar still moves


async def test_a_web_ui_that_draws_no_previews_is_named_once_and_the_step_bar_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    body = {"progress": 0.6, "eta_relative": 1, "state": {"sampling_step": 12, "sampling_steps": 20, "job_count": 1},
            "current_image": None}
    async with fixed_answers({"/sdapi/v1/progress": JSONResponse(body)}) as url, SdClient(
            sd_settings(steps=20), url=url, live_previews=True) as sd:
        with caplog.at_level("INFO", logger="avatargen.sd.a1111"):
            first, second = await sd.progress(preview=True), await sd.progress(preview=True)
    assert (first.sampling_step, first.preview, second.preview) == (12, None, None)
    told = [record.getMessage() for record in caplog.records if "draws no live previews" in record.getMessage()]
    assert len(told) == 1
    assert "the panel shows the step bar without a picture" in told[0]


@pytest.mark.parametrize(("sd", "status", "said"), [
    ('checkpoint = "cjs-dreambooth.safetensors"', 0,
     "sd.checkpoint 'cjs-dreambooth.safetensors' is the SD web UI's 'cjs-dreambooth.safetensors [3f6a1c9e2b]'; "
     "the SD web UI has no schedulers (Forge, or AUTOMATIC1111 before 1.9): sending 'DPM++ 2M Karras'"),
    ('checkpoint = "someone-else"', 2, "sd.checkpoint: sd.checkpoint 'someone-else' is not on the SD web UI"),
    ('sampler = "DPM++ 9M"', 2, "sd.sampler: the SD web UI has no sampler 'DPM++ 9M'"),
])
async def test_check_config_asks_an_always_on_web_ui_what_it_has(tmp_path: Path, sd: str, status: int,
                                                                 said: str) -> None:
    async with sd_webui(sim_settings(webui="forge")) as (_, url):
        config = tmp_path / "config.toml"
        config.write_text(f'[gpu]\nprovider = "always_on"\n[sd]\nurl = "{url}"\n{sd}\n')
        checked = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server.cli", "check-config",
                                                           "--config", str(config)], capture_output=True, text=True)
    assert checked.returncode == status, checked.stderr
    assert said in checked.stdout + checked.stderr


async def test_check_config_says_when_an_always_on_web_ui_does_not_answer(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[gpu]\nprovider = "always_on"\n[sd]\nurl = "{closed_port_url()}"\n')
    checked = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server.cli", "check-config", "--config",
                                                       str(config)], capture_output=True, text=True)
    assert checked.returncode == 0
    assert "sd.checkpoint and sd.sampler are checked when a run starts" in checked.stderr
