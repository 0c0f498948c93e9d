"""A ComfyUI workflow in API format, and which node input takes each `[sd]` setting.

An owner's graph is theirs: LoRA loaders between the checkpoint and the sampler, an upscaler after
the decoder, SDXL or Flux text encoders, custom samplers. Fixed node ids would break on the first
such graph, so the nodes to set are found by following links back from the sampler (`KSampler`,
`KSamplerAdvanced`, `SamplerCustom...`): its positive and negative conditioning lead to the text
encoders, its latent image to the empty latent that sets size and batch, its model to the checkpoint
loader, and the image output furthest downstream of it is the one kept. Where a graph is unusual,
`[sd.comfyui] *_node` names the node. Everything is decided when the config is checked: a graph that
lacks what a run needs is a config error naming the node and the input, never the first paid run.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatargen.config import ComfyUiSettings, ConfigError, SdSettings, Settings
from avatargen.sd.samplers import comfyui_sampler

Target = tuple[str, str]  # (node id, input name)

BUILTIN_NAME = "built-in txt2img"
# The classic text-to-image graph, with ComfyUI's own example ids. ckpt_name is filled in by the client.
BUILTIN_GRAPH: dict[str, dict[str, Any]] = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ""}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "avatargen", "images": ["8", 0]}},
}

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
PROMPT_INPUTS = ("text", "text_g", "text_l", "clip_l", "clip_g", "t5xxl")  # CLIPTextEncode, SDXL, SD3, Flux
SIZE_INPUTS = ("width", "height", "batch_size")
LOADER_INPUTS = ("ckpt_name", "unet_name")  # CheckpointLoaderSimple & co., UNETLoader (Flux)
# Bounds on a workflow file: the biggest real graphs have a few hundred nodes and a few hundred kB; past these
# the file is a mistake (or an attack), and analysing it must not hold up check-config or start-up.
MAX_NODES = 2000
MAX_FILE_BYTES = 10_000_000
MAX_INPUT_DEPTH = 32  # lists and objects within one input (a link is 1); each run copies the graph recursively
# What model files are called: an input whose /object_info choices (or whose value) end so names a file
# the server must have (LoRA, VAE, upscaler, ControlNet, CLIP, UNet...), checked before the first paid image.
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")


def names_model_file(value: str) -> bool:
    return value.lower().endswith(MODEL_FILE_SUFFIXES)


@dataclass(frozen=True)
class FixedChoice:
    """A plain string input the graph itself fixes (avatargen does not set it): a model file or an option."""

    node: str
    class_type: str
    input: str
    value: str

    def where(self) -> str:
        return f"node {self.node} ({self.class_type}) input {self.input!r}"


class WorkflowError(ValueError):
    """What a graph lacks, in terms of its nodes and inputs; `key` is the `[sd.comfyui]` key to look at."""

    def __init__(self, message: str, key: str = "workflow") -> None:
        super().__init__(message)
        self.key = key


def _link(value: Any) -> str | None:
    """The source node id of an input that is a link `[node id, output index]`, else None."""
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int)
            and isinstance(value[1], int) and not isinstance(value[1], bool)):
        return str(value[0])
    return None


def is_sampler(class_type: str) -> bool:
    return class_type in ("KSampler", "KSamplerAdvanced") or class_type.startswith("SamplerCustom")


class Graph:
    """Read-only helpers over an API-format graph (node id -> {"class_type", "inputs"})."""

    def __init__(self, nodes: Mapping[str, Any]) -> None:
        self.nodes = nodes

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.nodes

    def cls(self, node_id: str) -> str:
        return str(self.nodes[node_id]["class_type"])

    def inputs(self, node_id: str) -> Mapping[str, Any]:
        return self.nodes[node_id]["inputs"]

    def name(self, node_id: str) -> str:
        return f"node {node_id} ({self.cls(node_id)})"

    def source(self, node_id: str, input_name: str) -> str | None:
        return _link(self.inputs(node_id).get(input_name))

    def links(self, node_id: str) -> Iterator[tuple[str, str]]:
        """(input name, source node id) of each linked input."""
        for name, value in self.inputs(node_id).items():
            if (source := _link(value)) is not None:
                yield name, source

    def upstream(self, start: str | None, want: Callable[[str], bool], *, role: str | None = None,
                 wall: Callable[[str], bool] = lambda node_id: False) -> str | None:
        """The nearest node at or above `start` that `want`s, breadth first.

        A node with an input named `role` ("positive", "negative") is followed through that input only,
        so a ControlNet apply node, which passes both on, leads each side to its own text encoder.
        Nodes for which `wall` is true are not passed through.
        """
        seen: set[str] = set()
        queue = deque([start] if start is not None else [])
        while queue:
            node_id = queue.popleft()
            if node_id in seen:
                continue
            seen.add(node_id)
            if want(node_id):
                return node_id
            if wall(node_id):
                continue
            links = dict(self.links(node_id))
            queue.extend([links[role]] if role in links else links.values())
        return None

    def depths_below(self, start: str) -> dict[str, int]:
        """How many links below `start` each node downstream of it is (`start` itself at 0), in one walk
        over the graph: per node, a walk of its own would take minutes on a graph of thousands."""
        below: dict[str, list[str]] = {}
        for node_id in self.nodes:
            for _, source in self.links(node_id):
                below.setdefault(source, []).append(node_id)
        depths, queue = {start: 0}, deque([start])
        while queue:
            node_id = queue.popleft()
            for child in below.get(node_id, ()):
                if child not in depths:
                    depths[child] = depths[node_id] + 1
                    queue.append(child)
        return depths


def _nesting(value: Any) -> int:
    """How many lists and objects deep a JSON value goes (0 for a number or a string), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | dict):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_graph(document: Any) -> dict[str, dict[str, Any]]:
    """Check the shape of an API-format graph; WorkflowError says what is wrong with it."""
    if isinstance(document, dict) and isinstance(document.get("nodes"), list) and "links" in document:
        raise WorkflowError('this is the UI format ("Save"); export the workflow with "Export (API)" instead '
                            '(older ComfyUI: "Save (API Format)", shown once Dev mode is on)')
    if isinstance(document, dict) and isinstance(document.get("prompt"), dict):
        document = document["prompt"]  # a saved /prompt request body
    if not isinstance(document, dict) or not document:
        raise WorkflowError("expected a JSON object of node id -> {\"class_type\", \"inputs\"} (ComfyUI's API format)")
    if len(document) > MAX_NODES:
        raise WorkflowError(f"{len(document)} nodes: a workflow may have at most {MAX_NODES}")
    for node_id, node in document.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"node {node_id} has no class_type: not a workflow in API format")
        if not isinstance(node.get("inputs"), dict):
            raise WorkflowError(f"node {node_id} ({node['class_type']}) has no inputs object")
        for name, value in node["inputs"].items():
            if _nesting(value) > MAX_INPUT_DEPTH:
                raise WorkflowError(f"node {node_id} ({node['class_type']}): input {name!r} is nested more than "
                                    f"{MAX_INPUT_DEPTH} levels deep")
    graph = Graph(document)
    for node_id in document:
        for name, source in graph.links(node_id):
            if source not in document:
                raise WorkflowError(f"{graph.name(node_id)}: input {name!r} links to node {source}, "
                                    "which is not in the workflow")
    return document


@dataclass(frozen=True)
class Workflow:
    """A graph and where each setting goes in it: `targets` maps a setting name ("prompt",
    "negative_prompt", "seed", "steps", "cfg", "sampler_name", "scheduler", "width", "height",
    "batch_size", "checkpoint") to the node inputs that take it; `output` is the node whose images are
    kept; `loader` the checkpoint loader, if the graph has one."""

    name: str
    graph: Mapping[str, Any]
    sampler: str
    output: str
    loader: Target | None
    targets: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)

    @property
    def loader_class(self) -> str | None:
        return Graph(self.graph).cls(self.loader[0]) if self.loader else None

    @property
    def checkpoint(self) -> str:
        """The model file the graph itself names ("" in the built-in graph, which takes sd.checkpoint)."""
        if self.loader is None:
            return ""
        value = Graph(self.graph).inputs(self.loader[0]).get(self.loader[1])
        return value if isinstance(value, str) else ""

    def patched(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the graph with each setting written into its inputs; settings without a place in this
        graph are left out (`describe` tells the owner which)."""
        graph = copy.deepcopy(dict(self.graph))
        for setting, value in values.items():
            for node_id, input_name in self.targets.get(setting, ()):
                graph[node_id]["inputs"][input_name] = value
        return graph

    def fixed_choices(self) -> tuple[FixedChoice, ...]:
        """Every plain string input avatargen does not set (the prompts and the checkpoint it does), in node
        order: what `/object_info` must offer, for those of its inputs that list model files."""
        graph, ours = Graph(self.graph), {target for targets in self.targets.values() for target in targets}
        return tuple(FixedChoice(node_id, graph.cls(node_id), name, value)
                     for node_id in graph.nodes for name, value in graph.inputs(node_id).items()
                     if isinstance(value, str) and (node_id, name) not in ours)

    @property
    def model_files(self) -> tuple[FixedChoice, ...]:
        """The model files the graph names by themselves (LoRAs, VAE, upscaler...), for the owner."""
        return tuple(choice for choice in self.fixed_choices() if names_model_file(choice.value))

    @property
    def loras(self) -> list[str]:
        """The LoRA files the graph applies, recorded in each image's metadata."""
        return [choice.value for choice in self.model_files if "lora" in choice.class_type.lower()]

    def describe(self) -> str:
        """Where each setting goes, and the model files the graph names, for `check-config`."""
        graph = Graph(self.graph)
        lines = [f"workflow {self.name!r}: sampler {graph.name(self.sampler)}, images from {graph.name(self.output)}"]
        lines += [f"  {setting} -> " + ", ".join(f"{graph.name(node)}.{name}" for node, name in targets)
                  for setting, targets in self.targets.items() if targets]
        lines += [f"  {'LoRA' if 'lora' in file.class_type.lower() else 'model file'}: {graph.name(file.node)}."
                  f"{file.input} = {file.value!r}" for file in self.model_files]
        missing = [setting for setting, targets in self.targets.items() if not targets]
        if missing:
            lines.append(f"  not set by avatargen (the graph decides): {', '.join(missing)}")
        return "\n".join(lines)


class _Finder:
    """Finds the targets in one graph, honouring the `*_node` overrides."""

    def __init__(self, nodes: Mapping[str, Any], overrides: ComfyUiSettings) -> None:
        self.graph = Graph(nodes)
        self.overrides = overrides

    def override(self, key: str, fits: Callable[[str], bool], needs: str) -> str | None:
        node_id = getattr(self.overrides, key)
        if not node_id:
            return None
        if node_id not in self.graph:
            raise WorkflowError(f"node {node_id} is not in the workflow", key=key)
        if not fits(node_id):
            raise WorkflowError(f"{self.graph.name(node_id)} has no {needs}", key=key)
        return node_id

    def has_inputs(self, node_id: str, *names: str) -> bool:
        inputs = self.graph.inputs(node_id)
        return all(name in inputs for name in names)

    def plain(self, node_id: str, name: str, setting: str) -> Target:
        """The input itself, or the primitive node it is linked to; WorkflowError when it is computed."""
        source = self.graph.source(node_id, name)
        if source is None:
            return node_id, name
        if self.graph.cls(source).startswith("Primitive") and _link(self.graph.inputs(source).get("value")) is None:
            return source, "value"
        raise WorkflowError(f"{self.graph.name(node_id)}: input {name!r} takes its value from "
                            f"{self.graph.name(source)}, so avatargen cannot set the {setting}; "
                            "make it a plain value in the workflow")

    def sampler(self) -> str:
        if chosen := self.override("sampler_node", lambda n: "latent_image" in self.graph.inputs(n),
                                   "latent_image input: it is not a sampler"):
            return chosen
        samplers = [node_id for node_id in self.graph.nodes if is_sampler(self.graph.cls(node_id))]
        if not samplers:
            raise WorkflowError(f"no sampler node ({', '.join(SAMPLER_CLASSES)}) in the workflow; name yours with "
                                "sampler_node")
        if len(samplers) > 1:  # a second pass (hires fix): the first pass is the one that starts from empty latent
            samplers = [node_id for node_id in samplers if self.graph.upstream(
                self.graph.source(node_id, "latent_image"), self.is_latent,
                wall=lambda n: is_sampler(self.graph.cls(n))) is not None] or samplers
        if len(samplers) > 1:
            names = ", ".join(self.graph.name(node_id) for node_id in samplers)
            raise WorkflowError(f"several samplers ({names}): name the one that makes the image with sampler_node")
        return samplers[0]

    def is_latent(self, node_id: str) -> bool:
        return self.has_inputs(node_id, *SIZE_INPUTS)

    def is_encoder(self, node_id: str) -> bool:
        return any(name in self.graph.inputs(node_id) for name in PROMPT_INPUTS)

    def is_loader(self, node_id: str) -> bool:
        return any(name in self.graph.inputs(node_id) for name in LOADER_INPUTS)

    def via_guider(self, sampler: str, role: str) -> str | None:
        """The source of a sampler input, or of the same input on its guider (SamplerCustomAdvanced)."""
        if (source := self.graph.source(sampler, role)) is not None:
            return source
        guider = self.graph.source(sampler, "guider")
        if guider is None:
            return None
        if role == "positive" and "positive" not in self.graph.inputs(guider):
            role = "conditioning"  # BasicGuider (Flux): one conditioning, no negative
        return self.graph.source(guider, role)

    def encoder(self, sampler: str, role: str) -> str | None:
        if chosen := self.override(f"{role}_node", self.is_encoder, f"text input ({', '.join(PROMPT_INPUTS)})"):
            return chosen
        return self.graph.upstream(self.via_guider(sampler, role), self.is_encoder, role=role)

    def on_sampler_or_linked(self, sampler: str, names: tuple[str, ...], link: str) -> Target | None:
        """The first of `names` on the sampler, else on the nearest node above its `link` input that has it."""
        for name in names:
            if name in self.graph.inputs(sampler):
                return sampler, name
        node_id = self.graph.upstream(self.graph.source(sampler, link),
                                      lambda n: any(name in self.graph.inputs(n) for name in names))
        if node_id is None:
            return None
        return node_id, next(name for name in names if name in self.graph.inputs(node_id))

    def optional(self, setting: str, found: Target | None) -> tuple[Target, ...]:
        """Where a setting the graph may decide itself goes: nowhere when it has no place or is computed."""
        if found is None:
            return ()
        try:
            return (self.plain(*found, setting),)
        except WorkflowError:
            return ()

    def output(self, sampler: str) -> str:
        if chosen := self.override("output_node", lambda n: "images" in self.graph.inputs(n), "images input"):
            return chosen
        ranked: list[tuple[bool, int, str]] = []
        depths = self.graph.depths_below(sampler)
        for node_id in self.graph.nodes:
            cls = self.graph.cls(node_id)
            if cls.startswith(("Save", "Preview")) and "images" in self.graph.inputs(node_id):
                depth = depths.get(node_id)
                if depth is not None:
                    ranked.append((cls.startswith("Save"), depth, node_id))
        if not ranked:
            raise WorkflowError(f"no SaveImage or PreviewImage node takes the images of {self.graph.name(sampler)}; "
                                "name the node whose images to keep with output_node")
        ranked.sort(reverse=True)
        best = [node_id for is_save, depth, node_id in ranked if (is_save, depth) == ranked[0][:2]]
        if len(best) > 1:
            tied = ", ".join(self.graph.name(node_id) for node_id in best)
            raise WorkflowError(f"several nodes save the final images ({tied}): name one with output_node")
        return best[0]


def find_workflow(name: str, nodes: Mapping[str, Any], overrides: ComfyUiSettings, *,
                  negative: bool, checkpoint: bool) -> Workflow:
    """Where each setting goes in this graph. `negative` and `checkpoint` say whether the config sets a
    negative prompt and a checkpoint, which the graph must then have a place for."""
    finder = _Finder(nodes, overrides)
    graph = finder.graph
    sampler = finder.sampler()
    targets: dict[str, tuple[Target, ...]] = {}

    positive = finder.encoder(sampler, "positive")
    if positive is None:
        raise WorkflowError(f"no text encoder (CLIPTextEncode) feeds input 'positive' of {graph.name(sampler)}; "
                            "name it with positive_node")
    targets["prompt"] = tuple(finder.plain(positive, name, "prompt") for name in PROMPT_INPUTS
                              if name in graph.inputs(positive))
    found = finder.encoder(sampler, "negative")
    if found == positive:  # e.g. ConditioningZeroOut of the positive text: there is no negative text
        found = None
    if found is None and negative:
        raise WorkflowError(f"sd.negative_prompt is set but no text encoder feeds input 'negative' of "
                            f"{graph.name(sampler)}; name it with negative_node, or empty sd.negative_prompt",
                            key="negative_node")
    targets["negative_prompt"] = () if found is None else tuple(
        finder.plain(found, name, "negative prompt") for name in PROMPT_INPUTS if name in graph.inputs(found))

    seed = finder.on_sampler_or_linked(sampler, ("seed", "noise_seed"), "noise")
    if seed is None:
        raise WorkflowError(f"{graph.name(sampler)} has no seed: no input 'seed' or 'noise_seed', and no "
                            "RandomNoise node on its 'noise' input")
    targets["seed"] = (finder.plain(*seed, "seed"),)
    targets["steps"] = finder.optional("steps", finder.on_sampler_or_linked(sampler, ("steps",), "sigmas"))
    targets["cfg"] = finder.optional("cfg", finder.on_sampler_or_linked(sampler, ("cfg",), "guider"))
    targets["sampler_name"] = finder.optional(
        "sampler", finder.on_sampler_or_linked(sampler, ("sampler_name",), "sampler"))
    targets["scheduler"] = finder.optional("scheduler", finder.on_sampler_or_linked(sampler, ("scheduler",), "sigmas"))

    latent = finder.override("latent_node", finder.is_latent, "inputs width, height and batch_size")
    latent = latent or graph.upstream(graph.source(sampler, "latent_image"), finder.is_latent)
    if latent is None:
        raise WorkflowError(f"input 'latent_image' of {graph.name(sampler)} does not come from an empty latent "
                            "(width, height, batch_size); name that node with latent_node")
    for size in SIZE_INPUTS:
        targets[size] = (finder.plain(latent, size, size.replace("_", " ")),)

    loader_id = finder.override("checkpoint_node", finder.is_loader, f"model file input ({', '.join(LOADER_INPUTS)})")
    loader_id = loader_id or graph.upstream(finder.via_guider(sampler, "model"), finder.is_loader)
    loader = None
    if loader_id is not None:
        loader = finder.plain(loader_id, next(n for n in LOADER_INPUTS if n in graph.inputs(loader_id)), "checkpoint")
    elif checkpoint:
        raise WorkflowError(f"sd.checkpoint is set but no checkpoint loader (ckpt_name) feeds input 'model' of "
                            f"{graph.name(sampler)}; name it with checkpoint_node", key="checkpoint_node")
    targets["checkpoint"] = (loader,) if loader else ()
    return Workflow(name=name, graph=nodes, sampler=sampler, output=finder.output(sampler), loader=loader,
                    targets=targets)


def workflow_path(settings: Settings) -> Path | None:
    """The workflow file (relative to the config file's folder), or None for the built-in graph."""
    name = settings.sd.comfyui.workflow
    if not name:
        return None
    path = Path(name).expanduser()
    base = settings.path.resolve().parent if settings.path is not None else Path.cwd()
    return path if path.is_absolute() else base / path


def _read_graph(path: Path) -> dict[str, dict[str, Any]]:
    """The graph in a workflow file; WorkflowError for a file that cannot be read, is too big, is not UTF-8
    JSON (or is nested deeper than any graph: a RecursionError is not the owner's message), or is no graph."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WorkflowError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise WorkflowError(f"{path} is over {MAX_FILE_BYTES // 1_000_000} MB: not a workflow")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{path} is not UTF-8 text (byte {exc.start}): export it again with \"Save (API)\"") \
            from None
    try:
        document = json.loads(text)
    except RecursionError:
        raise WorkflowError(f"{path} is nested too deeply to be a workflow") from None
    except ValueError as exc:
        raise WorkflowError(f"{path} is not JSON: {exc}") from None
    try:
        return parse_graph(document)
    except WorkflowError as exc:
        raise WorkflowError(f"{path}: {exc}") from None


def load_workflow(settings: Settings) -> Workflow:
    """The configured workflow, analysed; every problem is a ConfigError naming the key (and node, input)."""
    path = workflow_path(settings)
    try:
        if path is None:
            name, nodes = BUILTIN_NAME, BUILTIN_GRAPH
        else:
            name = path.stem
            nodes = _read_graph(path)
        sd = settings.sd
        try:
            return find_workflow(name, nodes, sd.comfyui, negative=bool(sd.negative_prompt),
                                 checkpoint=bool(sd.checkpoint))
        except WorkflowError as exc:
            raise WorkflowError(f"{path}: {exc}" if path else str(exc), exc.key) from None
    except WorkflowError as exc:
        raise ConfigError(str(exc), key=f"sd.comfyui.{exc.key}", file=settings.path) from None


def job_graph(workflow: Workflow, sd: SdSettings, *, prompt: str, count: int, seed: int,
              checkpoint: str) -> dict[str, Any]:
    """The graph of one job: the workflow with this prompt, `count` images, `seed` and the `[sd]` settings
    written in, as ComfyUI's `/prompt` and a serverless worker's `input.workflow` both take it."""
    sampler_name, scheduler = comfyui_sampler(sd.sampler, sd.comfyui.scheduler)
    return workflow.patched({
        "prompt": prompt, "negative_prompt": sd.negative_prompt, "seed": seed, "steps": sd.steps,
        "cfg": sd.cfg_scale, "sampler_name": sampler_name, "scheduler": scheduler,
        "width": sd.width, "height": sd.height, "batch_size": count, "checkpoint": checkpoint,
    })
