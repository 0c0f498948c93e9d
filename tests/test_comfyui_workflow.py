"""ComfyUI workflows: finding where each setting goes by following the sampler's links, patching, and the
config errors a graph that lacks something gives (caught by `check-config`, before any paid run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from avatargen.config import ComfyUiSettings, ConfigError, load_settings
from avatargen.sd.samplers import comfyui_sampler
from avatargen.sd.workflow import BUILTIN_GRAPH, WorkflowError, find_workflow, load_workflow, parse_graph
from server.cli import main

# An owner's SD1.5 graph as ComfyUI's "Export (API)" exports it: a face LoRA and a style LoRA, a hires-fix second
# pass, a model upscaler and a preview of the first pass; ids as ComfyUI numbered them, nothing where a fixed-id
# client would look.
LORA_UPSCALE: dict[str, Any] = json.loads((Path(__file__).parent / "workflows" / "lora_upscale_api.json").read_text())

# A Flux-style graph: custom sampler, guider, separate UNet loader, one text encoder and no negative.
FLUX: dict[str, Any] = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl.safetensors", "clip_name2": "clip_l",
                                                    "type": "flux"}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
    "4": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["3", 0], "guidance": 3.5}},
    "5": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["4", 0]}},
    "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": ["13", 0]}},
    "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
    "8": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 20,
                                                    "denoise": 1}},
    "9": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "10": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["6", 0], "guider": ["5", 0],
                                                             "sampler": ["7", 0], "sigmas": ["8", 0],
                                                             "latent_image": ["9", 0]}},
    "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["12", 0]}},
    "12": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    "13": {"class_type": "PrimitiveInt", "inputs": {"value": 0}},
    "14": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "flux"}},
}


def find(nodes: dict[str, Any], negative: bool = False, checkpoint: bool = False, **overrides: str) -> Any:
    return find_workflow("test", nodes, ComfyUiSettings(**overrides), negative=negative, checkpoint=checkpoint)


def problem(nodes: Any, **options: Any) -> WorkflowError:
    with pytest.raises(WorkflowError) as info:
        find(parse_graph(nodes), **options)
    return info.value


def test_builtin_graph_takes_every_setting_and_stays_untouched() -> None:
    workflow = find(BUILTIN_GRAPH, negative=True, checkpoint=True)
    patched = workflow.patched({"prompt": "a sketch of cjs", "negative_prompt": "blurry", "seed": 42, "steps": 9,
                                "cfg": 5.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "width": 640,
                                "height": 448, "batch_size": 3, "checkpoint": "cjs.safetensors"})
    assert patched["6"]["inputs"]["text"] == "a sketch of cjs" and patched["7"]["inputs"]["text"] == "blurry"
    assert {key: patched["3"]["inputs"][key] for key in ("seed", "steps", "cfg", "sampler_name", "scheduler")} == {
        "seed": 42, "steps": 9, "cfg": 5.5, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    assert patched["5"]["inputs"] == {"width": 640, "height": 448, "batch_size": 3}
    assert patched["4"]["inputs"]["ckpt_name"] == "cjs.safetensors"
    assert BUILTIN_GRAPH["6"]["inputs"]["text"] == "" and BUILTIN_GRAPH["5"]["inputs"]["batch_size"] == 1
    assert (workflow.sampler, workflow.output, workflow.loader) == ("3", "9", ("4", "ckpt_name"))


def test_lora_and_upscaler_graph_is_followed_through_its_links() -> None:
    workflow = find(LORA_UPSCALE, negative=True, checkpoint=True)
    assert workflow.sampler == "31"  # the first pass: the second one starts from the upscaled latent
    assert workflow.targets["prompt"] == (("20", "text"),) and workflow.targets["negative_prompt"] == (("21", "text"),)
    assert workflow.targets["seed"] == (("31", "seed"),) and workflow.targets["steps"] == (("31", "steps"),)
    assert workflow.targets["batch_size"] == (("30", "batch_size"),)
    assert workflow.loader == ("10", "ckpt_name") and workflow.checkpoint == "v1-5-pruned-emaonly.ckpt"
    assert workflow.output == "43"  # the upscaled save, not the preview of the first pass


def test_the_model_files_a_graph_names_are_listed_for_the_owner() -> None:
    workflow = find(LORA_UPSCALE, negative=True, checkpoint=True)
    assert [(file.node, file.input, file.value) for file in workflow.model_files] == [
        ("11", "lora_name", "cjs-face.safetensors"), ("12", "lora_name", "film-grain.safetensors"),
        ("41", "model_name", "RealESRGAN_x2.pth")]  # not the checkpoint: avatargen sets it, and checks it alone
    assert workflow.loras == ["cjs-face.safetensors", "film-grain.safetensors"]
    described = workflow.describe()
    assert "  LoRA: node 11 (LoraLoader).lora_name = 'cjs-face.safetensors'" in described
    assert "  LoRA: node 12 (LoraLoader).lora_name = 'film-grain.safetensors'" in described
    assert "  model file: node 41 (UpscaleModelLoader).model_name = 'RealESRGAN_x2.pth'" in described


def test_custom_sampler_graph_without_negative_and_a_primitive_seed() -> None:
    workflow = find(FLUX, checkpoint=True)
    targets = workflow.targets
    assert targets["prompt"] == (("3", "text"),) and targets["negative_prompt"] == ()
    assert targets["seed"] == (("13", "value"),)  # RandomNoise takes it from a primitive node
    assert targets["sampler_name"] == (("7", "sampler_name"),) and targets["steps"] == (("8", "steps"),)
    assert targets["scheduler"] == (("8", "scheduler"),) and targets["cfg"] == ()  # Flux has no CFG here
    assert targets["width"] == (("9", "width"),) and workflow.loader == ("1", "unet_name")
    assert "not set by avatargen (the graph decides): negative_prompt, cfg" in workflow.describe()


def test_controlnet_between_encoders_and_sampler_keeps_positive_and_negative_apart() -> None:
    nodes = json.loads(json.dumps(BUILTIN_GRAPH))
    nodes["60"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["61", 0], "image": ["62", 0], "strength": 1}}
    nodes["61"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "openpose.safetensors"}}
    nodes["62"] = {"class_type": "LoadImage", "inputs": {"image": "pose.png"}}
    nodes["3"]["inputs"].update(positive=["60", 0], negative=["60", 1])
    workflow = find(nodes, negative=True)
    assert workflow.targets["prompt"] == (("6", "text"),) and workflow.targets["negative_prompt"] == (("7", "text"),)


def test_sdxl_encoder_gets_the_prompt_in_both_text_inputs() -> None:
    nodes = json.loads(json.dumps(BUILTIN_GRAPH))
    nodes["6"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["4", 1], "text_g": "", "text_l": "", "width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
        "target_width": 1024, "target_height": 1024}}
    assert find(nodes).targets["prompt"] == (("6", "text_g"), ("6", "text_l"))


def test_a_custom_sampler_node_named_in_config_is_used() -> None:
    nodes = json.loads(json.dumps(BUILTIN_GRAPH))
    nodes["3"]["class_type"] = "KSampler (Efficient)"  # a custom node pack's sampler, same inputs
    assert find(nodes, sampler_node="3").targets["seed"] == (("3", "seed"),)
    assert "has no latent_image input" in str(problem(nodes, sampler_node="6"))


def test_overrides_name_the_nodes_of_an_unusual_graph() -> None:
    nodes = json.loads(json.dumps(LORA_UPSCALE))
    workflow = find(nodes, sampler_node="33", output_node="51", positive_node="21", negative_node="20")
    assert workflow.sampler == "33" and workflow.output == "51"
    assert workflow.targets["prompt"] == (("21", "text"),) and workflow.targets["negative_prompt"] == (("20", "text"),)
    assert workflow.targets["width"] == (("30", "width"),)  # found through the first pass and the latent upscale


@pytest.mark.parametrize(("change", "options", "key", "words"), [
    (lambda n: n["3"].update(class_type="KSampler (Efficient)"), {}, "workflow", "no sampler node (KSampler, "),
    (lambda n: n["6"]["inputs"].update(text=["70", 0]) or n.update(
        {"70": {"class_type": "StringConcatenate", "inputs": {"string_a": "a", "string_b": "b"}}}), {},
     "workflow", "node 6 (CLIPTextEncode): input 'text' takes its value from node 70 (StringConcatenate)"),
    (lambda n: n["3"]["inputs"].update(latent_image=["70", 0]) or n.update(
        {"70": {"class_type": "VAEEncode", "inputs": {"pixels": ["71", 0], "vae": ["4", 2]}},
         "71": {"class_type": "LoadImage", "inputs": {"image": "me.png"}}}), {},
     "workflow", "input 'latent_image' of node 3 (KSampler) does not come from an empty latent"),
    (lambda n: n["3"]["inputs"].update(negative=["70", 0]) or n.update(
        {"70": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}}), {"negative": True},
     "negative_node", "sd.negative_prompt is set but no text encoder feeds input 'negative' of node 3 (KSampler)"),
    (lambda n: n.update({"13": dict(n["3"])}), {}, "workflow", "several samplers (node 3 (KSampler), node 13"),
    (lambda n: n.update({"19": dict(n["9"])}), {}, "workflow", "several nodes save the final images"),
    (lambda n: n.pop("9"), {}, "workflow", "no SaveImage or PreviewImage node takes the images of node 3"),
    (lambda n: None, {"positive_node": "99"}, "positive_node", "node 99 is not in the workflow"),
    (lambda n: None, {"latent_node": "4"}, "latent_node", "node 4 (CheckpointLoaderSimple) has no inputs width"),
    (lambda n: n["4"].update(class_type="UnknownLoader", inputs={"path": "x"}), {"checkpoint": True},
     "checkpoint_node", "sd.checkpoint is set but no checkpoint loader"),
])
def test_a_graph_lacking_what_a_run_needs_names_the_node_and_input(change: Any, options: dict[str, Any], key: str,
                                                                   words: str) -> None:
    nodes = json.loads(json.dumps(BUILTIN_GRAPH))
    change(nodes)
    settings = {name: options.pop(name) for name in list(options) if name.endswith("_node")}
    error = problem(nodes, **options, **settings)
    assert error.key == key and words in str(error), str(error)


@pytest.mark.parametrize(("document", "words"), [
    ({"nodes": [], "links": []}, 'this is the UI format ("Save"); export the workflow with "Export (API)"'),
    ([1, 2], "expected a JSON object of node id"),
    ({"1": {"inputs": {}}}, "node 1 has no class_type"),
    ({"1": {"class_type": "KSampler", "inputs": {"model": ["9", 0]}}}, "input 'model' links to node 9, which is not"),
])
def test_what_is_not_an_api_format_graph_is_refused(document: Any, words: str) -> None:
    with pytest.raises(WorkflowError) as info:
        parse_graph(document)
    assert words in str(info.value)


def test_the_workflow_file_is_found_beside_the_config_and_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "face_api.json").write_text(json.dumps({"prompt": LORA_UPSCALE}))  # a saved request too
    config = tmp_path / "config.toml"
    config.write_text('[sd]\nbackend = "comfyui"\ncheckpoint = "cjs-dreambooth.safetensors"\n'
                      '[sd.comfyui]\nworkflow = "flows/face_api.json"\n')
    workflow = load_workflow(load_settings(config))
    assert workflow.name == "face_api" and workflow.sampler == "31"

    (tmp_path / "flows" / "face_api.json").write_text("{not json")
    with pytest.raises(ConfigError) as info:
        load_workflow(load_settings(config))
    assert info.value.key == "sd.comfyui.workflow" and "face_api.json is not JSON" in str(info.value)


def test_check_config_reports_a_broken_graph_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    nodes = json.loads(json.dumps(BUILTIN_GRAPH))
    del nodes["5"]
    nodes["3"]["inputs"]["latent_image"] = ["4", 0]
    (tmp_path / "wf.json").write_text(json.dumps(nodes))
    config = tmp_path / "config.toml"
    config.write_text('[sd]\nbackend = "comfyui"\n[sd.comfyui]\nworkflow = "wf.json"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    # The file named as every other workflow error names it: by its full path.
    assert f"sd.comfyui.workflow: {tmp_path / 'wf.json'}: input 'latent_image' of node 3 (KSampler) does not come " \
           "from" in err

    config.write_text('[sd]\nbackend = "comfyui"\n[sd.comfyui]\ntoken_env = "AVATARGEN_TEST_NO_SUCH_TOKEN"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    assert "the environment variable AVATARGEN_TEST_NO_SUCH_TOKEN holding the proxy's bearer token is not set" in \
        capsys.readouterr().err

    config.write_text('[sd]\nbackend = "comfyui"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "workflow 'built-in txt2img': sampler node 3 (KSampler)" in out
    assert "prompt -> node 6 (CLIPTextEncode).text" in out


@pytest.mark.parametrize(("name", "scheduler", "expected"), [
    ("DPM++ 2M", "", ("dpmpp_2m", "karras")),
    ("DPM++ 2M Karras", "", ("dpmpp_2m", "karras")),  # the name of web UI versions before 1.9
    ("dpm++ 2m sde", "", ("dpmpp_2m_sde", "exponential")),
    ("Euler a", "", ("euler_ancestral", "normal")),
    ("Euler Exponential", "", ("euler", "exponential")),
    ("DDIM", "", ("ddim", "ddim_uniform")),
    ("uni_pc_bh2", "", ("uni_pc_bh2", "normal")),  # ComfyUI's own name
    ("DPM++ 2M", "sgm_uniform", ("dpmpp_2m", "sgm_uniform")),
])
def test_web_ui_sampler_names_map_to_comfyui(name: str, scheduler: str, expected: tuple[str, str]) -> None:
    assert comfyui_sampler(name, scheduler) == expected


def test_sampler_and_auth_mistakes_are_config_errors_for_comfyui_only(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"

    def error(text: str) -> str:
        config.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(config)
        return str(info.value)

    config.write_text('[sd]\nsampler = "DPM++ 2M Krras"\n')
    assert load_settings(config).sd.sampler == "DPM++ 2M Krras"  # the web UI falls back to its default
    assert "sd.sampler: ComfyUI has no sampler like 'DPM++ 2M Krras'; did you mean 'DPM++ 2M Karras'?" in error(
        '[sd]\nbackend = "comfyui"\nsampler = "DPM++ 2M Krras"\n')
    assert "sd.comfyui.scheduler: must be empty or one of 'normal', 'karras'" in error(
        '[sd]\nbackend = "comfyui"\n[sd.comfyui]\nscheduler = "karas"\n')
    assert "either Basic auth (sd.username) or a bearer token, not both" in error(
        '[sd]\nbackend = "comfyui"\nusername = "me"\n[sd.comfyui]\ntoken_env = "PROXY_TOKEN"\n')
    assert "sd.backend: must be one of 'a1111', 'comfyui', got 'invokeai'" in error('[sd]\nbackend = "invokeai"\n')
