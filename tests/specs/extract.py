"""The facts the simulator tests check, excerpted from the vendors' public OpenAPI documents.

`tests/test_simulator_specs.py` validates every answer of the simulated cloud APIs against the response
schemas of the vendors' own documents. The excerpts in this folder hold only what that needs: the routes
the product calls, the schemas they answer with (field names, types, enums, required fields, nullability)
and the servers; prose (descriptions, summaries, examples) and every other route are left out. They are
made from the whole documents, which are kept outside the repository (shared/reference/specs/ beside the
checkout), with:

    python -m tests.specs.extract [--source ../shared/reference/specs]

and a test checks, where those documents are at hand, that the excerpts still say what they say.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# file name -> the routes the product and its simulator use, with their methods
ROUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "paperspace-v1-machines.openapi.json": {
        "/machines/{id}": ("get", "put"), "/machines/{id}/start": ("patch",), "/machines/{id}/stop": ("patch",)},
    "runpod-rest-v1.openapi.json": {
        "/pods/{podId}": ("get",), "/pods/{podId}/start": ("post",), "/pods/{podId}/stop": ("post",)},
}
PROSE = {"description", "summary", "example", "examples", "externalDocs", "tags", "operationId"}
NAME_MAPS = {"properties", "paths", "schemas", "responses", "content", "securitySchemes", "headers",
             "patternProperties", "variables"}  # objects whose keys are names, never keywords


def vendor_documents() -> Path | None:
    """shared/reference/specs/ in a folder above the checkout (CI lays shared/ beside it), if there is one."""
    for folder in HERE.parents[2:]:
        if (folder / "shared" / "reference" / "specs").is_dir():
            return folder / "shared" / "reference" / "specs"
    return None


def _plain(node: Any, parent: str = "") -> Any:
    """`node` without prose; a Response object keeps an empty description, which OpenAPI requires."""
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if not isinstance(node, dict):
        return node
    if parent in NAME_MAPS:
        return {name: _plain(value, f"{parent}:") for name, value in node.items()}
    kept = {key: _plain(value, key) for key, value in node.items() if key not in PROSE and not key.startswith("x-")}
    if parent == "responses:":
        kept["description"] = ""
    return kept


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node))
    return set()


def excerpt(document: dict[str, Any], routes: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """The routes' operations and every component they reach, without prose."""
    paths = {path: {method: document["paths"][path][method] for method in methods} for path, methods in routes.items()}
    result: dict[str, Any] = {
        "openapi": document["openapi"],
        "info": {"title": document["info"]["title"], "version": document["info"]["version"]},
        "servers": [{"url": server["url"]} for server in document["servers"]],
        "paths": paths,
    }
    if "security" in document:
        result["security"] = document["security"]
    components: dict[str, dict[str, Any]] = {}
    schemes = document.get("components", {}).get("securitySchemes")
    if schemes:
        components["securitySchemes"] = schemes
    todo = _refs(paths)
    done: set[str] = set()
    while todo:
        ref = todo.pop()
        done.add(ref)
        _, _, kind, name = ref.split("/")  # "#/components/<kind>/<name>"
        target = document["components"][kind][name]
        components.setdefault(kind, {})[name] = target
        todo |= _refs(target) - done
    if components:
        result["components"] = {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())}
    return _plain(result)


def render(document: dict[str, Any], routes: dict[str, tuple[str, ...]]) -> str:
    return json.dumps(excerpt(document, routes), indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.specs.extract", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=vendor_documents(),
                        help="the vendors' documents (default: shared/reference/specs/ above the checkout)")
    args = parser.parse_args(argv)
    if args.source is None:
        print("no shared/reference/specs/ above the checkout: name the vendors' documents' folder with --source",
              file=sys.stderr)
        return 2
    for name, routes in ROUTES.items():
        source = args.source / name
        if not source.is_file():
            print(f"{source}: no such file (the vendors' documents are kept beside the checkout)", file=sys.stderr)
            return 2
        (HERE / name).write_text(render(json.loads(source.read_text()), routes))
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
