"""Names a reader need not decode: no class of ours hides a standard one, and no two core classes share one.

Read from the source (no imports), so a module that needs optional packages is checked too.
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import typing
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STANDARD = {name for module in (builtins, collections.abc, typing) for name in dir(module) if not name.startswith("_")}


def classes(package: str) -> list[tuple[str, str]]:
    """(class name, module path) of every class defined at the top of a module of `package`."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                found.append((node.name, str(path.relative_to(ROOT))))
    return found


def test_no_class_shadows_a_standard_name() -> None:
    """`generator.Generator` once hid `collections.abc.Generator` from every module that imported it."""
    shadowing = [(name, path) for package in ("avatargen", "server", "tui") for name, path in classes(package)
                 if name in STANDARD]
    assert not shadowing, f"classes named like a builtin, typing or collections.abc name: {shadowing}"


def test_no_two_public_core_classes_share_a_name() -> None:
    """The run and its wire form were both `Run`: a reader of `run: Run` could not tell which one it held."""
    where: defaultdict[str, list[str]] = defaultdict(list)
    for name, path in classes("avatargen"):
        if not name.startswith("_"):
            where[name].append(path)
    assert not {name: paths for name, paths in where.items() if len(paths) > 1}
