"""requirements.lock (what `make setup` and CI install) agrees with pyproject.toml.

`make lock` rewrites the lock; these tests fail while someone has changed a dependency in
pyproject.toml without it, or edited the lock by hand.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
# uv's annotation of a package pyproject.toml asks for by name.
FROM_PYPROJECT = "credits-meter (pyproject.toml)"


def _pyproject() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {
        "dependencies": data["project"]["dependencies"],
        "dev": data["project"]["optional-dependencies"]["dev"],
        "build": data["build-system"]["requires"],
    }


def _lock(text: str) -> tuple[dict[str, Version], dict[str, int], set[str]]:
    """Pins, the number of hashes of each, and the pins annotated as pyproject's own."""
    pins: dict[str, Version] = {}
    hashes: dict[str, int] = {}
    direct: set[str] = set()
    current = ""
    for line in text.splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            assert current not in pins, f"{current} pinned twice"
            pins[current] = Version(match[2])
            hashes[current] = 0
        elif line.strip().startswith("--hash=sha256:"):
            hashes[current] += 1
        elif FROM_PYPROJECT in line:
            direct.add(current)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"unexpected line in the lock: {line!r}")
    return pins, hashes, direct


def _check(text: str) -> list[str]:
    """What disagrees between pyproject.toml and the lock's text, in words."""
    pins, hashes, direct = _lock(text)
    wanted = _pyproject()
    problems = []
    for group, requirements in wanted.items():
        for spec in requirements:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            if name not in pins:
                problems.append(f"{spec} ({group}) is not in the lock")
            elif not req.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{spec} ({group}): the lock pins {pins[name]}")
    asked = {
        canonicalize_name(Requirement(spec).name) for spec in wanted["dependencies"] + wanted["dev"]
    }
    problems += [
        f"{name} is in the lock for pyproject.toml, which no longer asks for it"
        for name in sorted(direct - asked)
    ]
    problems += [f"{name} has no hash" for name, count in sorted(hashes.items()) if count == 0]
    return problems


def test_every_dependency_is_pinned_with_hashes_and_fits_pyproject() -> None:
    assert _check((ROOT / "requirements.lock").read_text()) == []


def test_the_lock_pins_every_package_it_installs_and_hashes_each() -> None:
    pins, hashes, _ = _lock((ROOT / "requirements.lock").read_text())
    assert len(pins) > 50
    assert all(count >= 1 for count in hashes.values())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # A dependency pyproject.toml gained that the lock does not pin.
        (lambda text: re.sub(r"(?m)^orjson==.*\n(    .*\n)*", "", text), "orjson>=3.10"),
        # A pin outside pyproject.toml's range.
        (lambda text: re.sub(r"(?m)^aiokafka==\S+", "aiokafka==0.13.0", text), "pins 0.13.0"),
        # A pin without its hashes.
        (lambda text: re.sub(r"(?m)^(ruff==\S+) \\\n(    --hash.*\n)+", r"\1\n", text), "no hash"),
        # A dependency pyproject.toml no longer asks for.
        (
            lambda text: text.replace(
                "intervaltree==",
                "leftover==0.1 \\\n    --hash=sha256:00\n"
                f"    # via {FROM_PYPROJECT}\nintervaltree==",
                1,
            ),
            "leftover is in the lock",
        ),
    ],
)
def test_a_disagreement_is_named(edit: Callable[[str], str], expected: str) -> None:
    text = (ROOT / "requirements.lock").read_text()
    edited = edit(text)
    assert edited != text
    assert any(expected in problem for problem in _check(edited)), _check(edited)
