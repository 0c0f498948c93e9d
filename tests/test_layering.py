"""The import contracts in pyproject.toml catch an import that points the wrong way.

`.ci/run` runs `lint-imports` on the checkout; here each contract is shown a copy of the code with one
import it forbids added, and must name it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and pyproject.toml, which lint-imports reads from its working folder."""
    root = tmp_path_factory.mktemp("layering")
    for package in ("avatargen", "server", "tui"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("avatargen/prompts.py", "import server.app", "avatargen.prompts -> server.app"),
    ("tui/app.py", "from avatargen.storage.files import bucket", "tui.app -> avatargen.storage.files.bucket"),
    ("server/visitor.py", "from avatargen.simulator import faults", "server.visitor -> avatargen.simulator"),
    # The server's former demo seams: the simulator is reached only through avatargen.gpu.providing now.
    ("server/app.py", "from avatargen.simulator import SimulatedGpu", "server.app -> avatargen.simulator"),
    ("server/preflight.py", "from avatargen.simulator import faults", "server.preflight -> avatargen.simulator"),
    ("server/cli.py", "from avatargen import testing", "server.cli -> avatargen.testing"),
    ("avatargen/api/wire.py", "import starlette.responses", "avatargen.api.wire -> starlette"),
    ("avatargen/storage/files/bucket.py", "from avatargen.storage.redis import connection",
     "avatargen.storage.files.bucket -> avatargen.storage.redis.connection"),
    ("avatargen/storage/framing.py", "from avatargen.storage.files import lock",
     "avatargen.storage.framing -> avatargen.storage.files.lock"),
])
def test_an_import_against_the_layering_breaks_its_contract(checkout: Path, module: str, line: str,
                                                            broken: str) -> None:
    path = checkout / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # noqa: E402\n")
    try:
        result = lint_imports(checkout)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout
    assert broken in result.stdout, result.stdout
    assert "1 broken" in result.stdout


def test_the_copy_keeps_every_contract(checkout: Path) -> None:
    """The copy itself is clean, so each break above comes from the one import added."""
    result = lint_imports(checkout)
    assert result.returncode == 0, result.stdout
