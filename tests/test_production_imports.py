"""Production paths never load the simulator: it is demo and test code, imported only for `provider = "simulated"`.

The import contracts in pyproject.toml (`lint-imports`) allow one module the simulator, the demo mode's seam
(`avatargen.gpu.providing`, whose imports of it are function-level); this checks what they cannot see: that
building the app for a real provider does not run those imports.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("avatargen.config", "avatargen.gpu", "avatargen.gpu.providing", "avatargen.generator", "server.app",
              "server.serve", "server.cli", "server.preflight")


def test_the_server_and_the_config_do_not_import_the_simulator(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nprovider = "paperspace"\n[gpu.paperspace]\nmachine_id = "ps1"\n')
    code = (
        "import sys\n"
        f"for name in {PRODUCTION!r}: __import__(name)\n"
        "from pathlib import Path\n"
        "from avatargen.config import load_settings\n"
        "from server.app import create_app\n"
        f"create_app(load_settings(Path({str(config)!r})))\n"
        "print(sorted(name for name in sys.modules if name.startswith('avatargen.simulator')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
