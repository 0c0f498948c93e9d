"""The nodes the simulated ComfyUI knows: their inputs (as `/object_info` shows them), how a graph is
validated (ComfyUI's error types and shapes), and what each node computes, without a GPU.

A simulated graph is really evaluated: the text that reaches the sampler's positive input is what the
avatar is drawn from, the sampler's seed picks the face, the empty latent sets size and batch, an
upscaler scales the images. So a client that writes a setting into the wrong node gets the wrong
picture, as it would on a real ComfyUI. Only the classic text-to-image nodes, LoRA loaders and
upscalers are known; any other class is "missing", as a custom node that is not installed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from avatargen.sd.samplers import COMFYUI_SAMPLERS, COMFYUI_SCHEDULERS
from avatargen.simulator.drawing import draw_avatar

CHECKPOINTS = ("cjs-dreambooth.safetensors", "v1-5-pruned-emaonly.ckpt")
LORAS = ("cjs-face.safetensors", "film-grain.safetensors")
UPSCALE_MODELS = ("RealESRGAN_x2.pth", "4x-UltraSharp.pth")
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
SAMPLING_CLASSES = ("KSampler", "KSamplerAdvanced")
_MAX_SEED = 0xFFFFFFFFFFFFFFFF
_MAX_SIZE = 16384


def _int(default: int, low: int, high: int, step: int = 1) -> tuple[str, dict[str, Any]]:
    return "INT", {"default": default, "min": low, "max": high, "step": step}


def _float(default: float, low: float, high: float) -> tuple[str, dict[str, Any]]:
    return "FLOAT", {"default": default, "min": low, "max": high, "step": 0.01}


def _choice(options: tuple[str, ...]) -> tuple[list[str], dict[str, Any]]:
    return list(options), {}


def _string() -> tuple[str, dict[str, Any]]:
    return "STRING", {"multiline": True, "dynamicPrompts": True}


@dataclass(frozen=True)
class NodeClass:
    """One node class: its required inputs (name -> ComfyUI's input spec), output types, category."""

    inputs: Mapping[str, tuple[Any, ...]]
    outputs: tuple[str, ...]
    category: str
    output_node: bool = False


_SAMPLING = {
    "steps": _int(20, 1, 10000), "cfg": _float(8.0, 0.0, 100.0), "sampler_name": _choice(COMFYUI_SAMPLERS),
    "scheduler": _choice(COMFYUI_SCHEDULERS), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
    "latent_image": ("LATENT",),
}
NODES: dict[str, NodeClass] = {
    "CheckpointLoaderSimple": NodeClass({"ckpt_name": _choice(CHECKPOINTS)}, ("MODEL", "CLIP", "VAE"), "loaders"),
    "LoraLoader": NodeClass({"model": ("MODEL",), "clip": ("CLIP",), "lora_name": _choice(LORAS),
                             "strength_model": _float(1.0, -100.0, 100.0), "strength_clip": _float(1.0, -100.0, 100.0)},
                            ("MODEL", "CLIP"), "loaders"),
    "CLIPTextEncode": NodeClass({"text": _string(), "clip": ("CLIP",)}, ("CONDITIONING",), "conditioning"),
    "EmptyLatentImage": NodeClass({"width": _int(512, 16, _MAX_SIZE, 8), "height": _int(512, 16, _MAX_SIZE, 8),
                                   "batch_size": _int(1, 1, 4096)}, ("LATENT",), "latent"),
    "KSampler": NodeClass({"model": ("MODEL",), "seed": _int(0, 0, _MAX_SEED), **_SAMPLING,
                           "denoise": _float(1.0, 0.0, 1.0)}, ("LATENT",), "sampling"),
    "KSamplerAdvanced": NodeClass({"model": ("MODEL",), "add_noise": _choice(("enable", "disable")),
                                   "noise_seed": _int(0, 0, _MAX_SEED), **_SAMPLING,
                                   "start_at_step": _int(0, 0, 10000), "end_at_step": _int(10000, 0, 10000),
                                   "return_with_leftover_noise": _choice(("disable", "enable"))},
                                  ("LATENT",), "sampling"),
    "LatentUpscaleBy": NodeClass({"samples": ("LATENT",), "upscale_method": _choice(UPSCALE_METHODS),
                                  "scale_by": _float(1.5, 0.01, 8.0)}, ("LATENT",), "latent"),
    "VAEDecode": NodeClass({"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",), "latent"),
    "ImageScaleBy": NodeClass({"image": ("IMAGE",), "upscale_method": _choice(UPSCALE_METHODS),
                               "scale_by": _float(1.0, 0.01, 8.0)}, ("IMAGE",), "image/upscaling"),
    "UpscaleModelLoader": NodeClass({"model_name": _choice(UPSCALE_MODELS)}, ("UPSCALE_MODEL",), "loaders"),
    "ImageUpscaleWithModel": NodeClass({"upscale_model": ("UPSCALE_MODEL",), "image": ("IMAGE",)}, ("IMAGE",),
                                       "image/upscaling"),
    "SaveImage": NodeClass({"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}, (),
                           "image", output_node=True),
    "PreviewImage": NodeClass({"images": ("IMAGE",)}, (), "image", output_node=True),
}


def object_info(class_type: str) -> dict[str, Any]:
    """`/object_info/{class}` for one known class, in ComfyUI's shape."""
    node = NODES[class_type]
    return {
        "input": {"required": {name: list(spec) for name, spec in node.inputs.items()}, "optional": {}},
        "input_order": {"required": list(node.inputs), "optional": []},
        "output": list(node.outputs), "output_is_list": [False] * len(node.outputs),
        "output_name": list(node.outputs), "name": class_type, "display_name": class_type, "description": "",
        "python_module": "nodes", "category": node.category, "output_node": node.output_node,
    }


# --- validation -----------------------------------------------------------------------------------------


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _link(value: Any) -> tuple[str, int] | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        return str(value[0]), value[1]
    return None


def _check_value(name: str, spec: tuple[Any, ...], value: Any) -> dict[str, Any] | None:
    """ComfyUI's checks of one plain input value (type, range, list of choices)."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        if value not in kind:
            listed = f"(list of length {len(kind)})" if len(kind) > 20 else str(kind)
            return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                          input_name=name, received_value=value)
        return None
    converters: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str}
    if kind not in converters:  # a link type given a plain value
        return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                      f"{name}", input_name=name, received_value=value)
    try:
        number = converters[kind](value)
    except (TypeError, ValueError) as exc:
        return _error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                      f"{name}, {value}, {exc}", input_name=name, received_value=value)
    if kind in ("INT", "FLOAT"):
        if "min" in options and number < options["min"]:
            return _error("value_smaller_than_min", f"Value {number} smaller than min of {options['min']}",
                          name, input_name=name, received_value=value)
        if "max" in options and number > options["max"]:
            return _error("value_bigger_than_max", f"Value {number} bigger than max of {options['max']}",
                          name, input_name=name, received_value=value)
    return None


def _node_errors(prompt: Mapping[str, Any], node_id: str) -> list[dict[str, Any]]:
    node = prompt[node_id]
    spec = NODES[node["class_type"]]
    errors = []
    for name, input_spec in spec.inputs.items():
        if name not in node["inputs"]:
            errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = node["inputs"][name]
        link = _link(value)
        if link is None:
            problem = _check_value(name, input_spec, value)
            if problem:
                errors.append(problem)
            continue
        source, index = link
        source_class = prompt.get(source, {}).get("class_type")
        outputs = NODES[source_class].outputs if source_class in NODES else ()
        if index >= len(outputs) or outputs[index] != input_spec[0]:
            received = outputs[index] if index < len(outputs) else "nothing"
            errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                 f"{name}, received_type({received}) mismatch input_type({input_spec[0]})",
                                 input_name=name))
    return errors


def _upstream(prompt: Mapping[str, Any], node_id: str) -> list[str]:
    """The node and every node it depends on, dependencies first (execution order)."""
    order: list[str] = []

    def visit(current: str) -> None:
        if current in order or current not in prompt:
            return
        for value in prompt[current].get("inputs", {}).values():
            if (link := _link(value)) is not None:
                visit(link[0])
        order.append(current)

    visit(node_id)
    return order


def validate(prompt: Any) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """ComfyUI's validation of a `/prompt`: (error or None, node_errors, output node ids to execute)."""
    if not isinstance(prompt, dict):
        return _error("invalid_prompt", "Invalid prompt", "the prompt must be an object"), {}, []
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type is None:
            return _error("missing_node_type", f"Node 'ID #{node_id}' has no class_type. The workflow may be "
                          "corrupted or a custom node is missing.", f"Node ID '#{node_id}'"), {}, []
        if class_type not in NODES:
            return _error("missing_node_type", f"Node '{class_type}' not found. The custom node may not be "
                          "installed.", f"Node ID '#{node_id}'"), {}, []
    outputs = [node_id for node_id, node in prompt.items() if NODES[node["class_type"]].output_node]
    if not outputs:
        return _error("prompt_no_outputs", "Prompt has no outputs", ""), {}, []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        for node_id in _upstream(prompt, output):
            errors = _node_errors(prompt, node_id)
            if errors:
                entry = node_errors.setdefault(node_id, {"errors": errors, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(output)
    if node_errors:
        details = "\n".join(f"{error['message']}: {error['details']}"
                            for entry in node_errors.values() for error in entry["errors"])
        return (_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
                node_errors, [])
    return None, {}, outputs


def execution_order(prompt: Mapping[str, Any], outputs: list[str]) -> list[str]:
    order: list[str] = []
    for output in outputs:
        order += [node_id for node_id in _upstream(prompt, output) if node_id not in order]
    return order


# --- what the nodes compute -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latent:
    """A latent batch: its size in pixels, and once sampled, the prompt and seed it was denoised from."""

    width: int
    height: int
    batch: int
    prompt: str | None = None
    seed: int = 0
    denoised: float = 1.0


def resolve(inputs: Mapping[str, Any], values: Mapping[str, tuple[Any, ...]]) -> dict[str, Any]:
    """A node's inputs with each link replaced by the output it points at."""
    return {name: values[link[0]][link[1]] if (link := _link(value)) else value for name, value in inputs.items()}


def sampled(args: Mapping[str, Any], steps_done: int) -> Latent:
    """A sampler's output: the latent, denoised from the positive text with the seed. A second pass over a
    latent that is already a picture (hires fix, denoise below 1) refines it: same picture, same seed."""
    latent: Latent = args["latent_image"]
    done = steps_done / int(args["steps"])
    if latent.prompt is not None and float(args.get("denoise", 1.0)) < 1:
        return Latent(latent.width, latent.height, latent.batch, latent.prompt, latent.seed, done)
    seed = args.get("seed", args.get("noise_seed", 0))
    return Latent(latent.width, latent.height, latent.batch, args["positive"]["text"], int(seed), done)


def _scaled(images: list[Image.Image], factor: float) -> list[Image.Image]:
    return [image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                         Image.Resampling.BICUBIC) for image in images]


def run_node(class_type: str, args: Mapping[str, Any]) -> tuple[Any, ...]:
    """The outputs of one node that is not a sampler (those take time: the server runs them)."""
    if class_type == "CheckpointLoaderSimple":
        model = {"ckpt": args["ckpt_name"], "loras": ()}
        return model, model, {"ckpt": args["ckpt_name"]}
    if class_type == "LoraLoader":
        return ({**args["model"], "loras": (*args["model"]["loras"], args["lora_name"])},
                {**args["clip"], "loras": (*args["clip"]["loras"], args["lora_name"])})
    if class_type == "CLIPTextEncode":
        return ({"text": str(args["text"]), "clip": args["clip"]},)
    if class_type == "EmptyLatentImage":
        return (Latent(int(args["width"]), int(args["height"]), int(args["batch_size"])),)
    if class_type == "LatentUpscaleBy":
        latent: Latent = args["samples"]
        factor = float(args["scale_by"])
        return (Latent(round(latent.width * factor), round(latent.height * factor), latent.batch, latent.prompt,
                       latent.seed, latent.denoised),)
    if class_type == "VAEDecode":
        latent = args["samples"]
        return ([draw_avatar(latent.prompt or "", latent.seed + index, latent.width, latent.height,
                             denoised=latent.denoised if latent.prompt is not None else 0.0)
                 for index in range(latent.batch)],)
    if class_type == "ImageScaleBy":
        return (_scaled(args["image"], float(args["scale_by"])),)
    if class_type == "UpscaleModelLoader":
        return ({"scale": 2 if "x2" in args["model_name"].lower() or "2x" in args["model_name"].lower() else 4},)
    if class_type == "ImageUpscaleWithModel":
        return (_scaled(args["image"], args["upscale_model"]["scale"]),)
    if class_type in ("SaveImage", "PreviewImage"):
        return ()
    raise ValueError(f"the simulated ComfyUI cannot run {class_type}")  # pragma: no cover - validated first


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
