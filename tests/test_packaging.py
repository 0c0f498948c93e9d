"""Every dependency is bounded below a major version, so a new major release never reaches users
untested (uv.lock pins what CI tests; .ci/run refuses a lock pyproject.toml has moved away from)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements() -> dict[str, list[str]]:
    """Each list of requirements in pyproject.toml, by where it is."""
    found = {"dependencies": PROJECT["project"]["dependencies"]}
    found |= {f"[{extra}] extra": items for extra, items in PROJECT["project"]["optional-dependencies"].items()}
    found |= {f"{group} group": items for group, items in PROJECT["dependency-groups"].items()}
    return found


def unbounded(requirement: Requirement) -> str | None:
    """Why a requirement is not bounded below a major release (for a 0.x package: below 1.0 or a 0.y)."""
    lows = [spec for spec in requirement.specifier if spec.operator in (">=", "==", "~=")]
    highs = [Version(spec.version) for spec in requirement.specifier if spec.operator == "<"]
    if not lows or not highs:
        return f"{requirement} needs a lower bound (>=) and an upper one below the next major version (<)"
    high = min(highs)
    if high.release[1:] and any(high.release[1 if high.major else 2:]):
        return f"{requirement}: the upper bound {high} is not a major version (e.g. <{high.major + 1})"
    return None


def test_every_dependency_is_bounded_below_its_next_major_version() -> None:
    problems = [f"{where}: {problem}" for where, items in requirements().items() for item in items
                if (problem := unbounded(Requirement(item)))]
    assert not problems, "\n".join(problems)


def test_an_open_or_too_wide_range_is_caught() -> None:
    assert unbounded(Requirement("apprise>=1.9")) is not None
    assert unbounded(Requirement("textual>=0.80")) is not None
    assert unbounded(Requirement("textual>=8.2,<8.3")) is not None
    assert unbounded(Requirement("httpx>=0.27,<0.28.1")) is not None
    assert unbounded(Requirement("apprise>=1.9,<2")) is None
    assert unbounded(Requirement("openapi-core>=0.19,<0.24")) is None
    assert unbounded(Requirement("httpx>=0.27,<1")) is None
    assert unbounded(Requirement("uvicorn[standard]>=0.30,<1")) is None
    assert unbounded(Requirement("nudenet>=3.4,<4")) is None


def test_the_metadata_users_look_for_is_there() -> None:
    project = PROJECT["project"]
    assert project["requires-python"] == ">=3.11"
    assert (ROOT / project["readme"]).is_file() and project["description"]
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    assert set(project["optional-dependencies"]) == {"review"}  # the detector stays opt-in
