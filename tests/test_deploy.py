"""The deployment docs show the reverse proxy example exactly as shipped (benchmarks/proxy_limits.py runs the file)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_deployment_docs_show_the_nginx_example_as_shipped() -> None:
    example = (ROOT / "deploy" / "nginx-avatargen.conf").read_text()
    assert f"```nginx\n{example}```\n" in (ROOT / "docs" / "deployment.md").read_text()
