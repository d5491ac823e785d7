"""The worker's per-record path compiled with mypyc, and run only while it is current.

`make setup` builds it (`python -m processor.ops.compiled`): a copy of the `processor`
and `schemas` packages in `.build/compiled/`, with the modules in `MODULES` compiled to
C extensions in the copy, and a manifest naming the digest of the sources it was built
from. `meter worker` then runs from that copy (`enter`), unless METER_COMPILED=off or
the sources have changed since: the checkout itself never holds a compiled module, so an
edited source is never shadowed by an old build, and a stale build is never run.
Packages installed from a wheel are built the same way, beside them in site-packages,
given the checkout's pyproject.toml for the compiler's settings (`--config`): the image
does so (deploy/Dockerfile).

The modules are the pure core and the worker's per-record path: typed throughout, and
the ones a record passes through (docs/performance.md, "The per-record path compiled").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import processor

PACKAGES: Final = ("processor", "schemas")
MODULES: Final = (
    "processor/core/",
    "processor/kafka/protocol.py",
    "processor/kafka/routing.py",
    "processor/kafka/usage_wire.py",
    "processor/kafka/wire.py",
    "processor/observability/worker_hooks.py",
    "processor/worker/codec.py",
    "processor/worker/due.py",
    "processor/worker/fetched.py",
    "processor/worker/flusher.py",
    "processor/worker/intake.py",
    "processor/worker/interned.py",
    "processor/worker/marks.py",
    "processor/worker/marks_log.py",
    "processor/worker/records.py",
    "processor/worker/sizing.py",
    "processor/worker/staged.py",
    "processor/worker/stored_v3.py",
    "processor/worker/tally.py",
    "schemas/types.py",
)
MANIFEST: Final = "manifest.json"
# The mypy settings the compiler reads (strictness, the pydantic plugin) travel along:
# the checkout's, or for packages installed from a wheel, which carries none, the
# checkout's file the build is given (`--config`; deploy/Dockerfile).
_CONFIG: Final = "pyproject.toml"


def source_root() -> Path:
    """Where the `processor` package being run lives (the checkout, or a build)."""
    return Path(processor.__file__).resolve().parents[1]


def default_build_dir(root: Path) -> Path:
    return root / ".build" / "compiled"


def _sources(root: Path) -> list[Path]:
    files = []
    for package in PACKAGES:
        for path in (root / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and not _built(path):
                files.append(path)
    return sorted(files)


def _built(path: Path) -> bool:
    return path.suffix == ".so" or path.suffix == ".pyc"


def digest(root: Path) -> str:
    """One digest of every file of the packages under `root`, by path and content."""
    h = hashlib.sha256()
    for path in _sources(root):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


class BuildMissing(Exception):
    """METER_COMPILED=require, and no current build to run."""


@dataclass(frozen=True)
class Status:
    """Whether the build in `build_dir` can run, and why not when it cannot."""

    build_dir: Path
    usable: bool
    reason: str


def status(root: Path, build_dir: Path) -> Status:
    manifest = build_dir / MANIFEST
    try:
        built = json.loads(manifest.read_text())
    except FileNotFoundError:
        return Status(build_dir, False, f"no compiled build in {build_dir} (make setup builds it)")
    except (OSError, ValueError) as exc:
        return Status(build_dir, False, f"unreadable {manifest}: {exc}")
    if built.get("failed"):
        return Status(build_dir, False, f"the compiled build failed: {built['failed']}")
    if built.get("python") != sys.version.split()[0]:
        return Status(build_dir, False, f"built for Python {built.get('python')}")
    if built.get("digest") != digest(root):
        return Status(build_dir, False, "the sources changed since it was built (make setup)")
    return Status(build_dir, True, "current")


def running_compiled(root: Path | None = None) -> bool:
    """Whether the packages under `root` (this process's) are a build: its manifest."""
    return ((root or source_root()) / MANIFEST).is_file()


def interpreted_reason(mode: str, root: Path) -> str | None:
    """Why a worker started from `root` would run the sources, or None when it runs the
    build (it is current, or `root` is a build already). `mode` is METER_COMPILED."""
    if running_compiled(root):
        return None
    if mode == "off":
        return "METER_COMPILED=off"
    found = status(root, default_build_dir(root))
    return None if found.usable else found.reason


def enter(mode: str, argv: list[str], root: Path | None = None) -> str | None:
    """Re-run this command from the compiled build when it is current (no return).

    `mode` is METER_COMPILED: "off" runs from the checkout, "auto" from the build when
    it can, "require" raises BuildMissing without it. Returns why the checkout's
    interpreted modules are run instead, or None when they are the build's already
    (this process was re-run, or is a child of one). `root`: where the packages run
    live, this process's by default.
    """
    root = root or source_root()
    if running_compiled(root):
        return None
    why = interpreted_reason(mode, root)
    if why is not None:
        if mode == "require":
            raise BuildMissing(f"METER_COMPILED=require: {why}")
        return why
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath_first(default_build_dir(root), env.get("PYTHONPATH"))
    # `-m` would put the working directory, often the checkout, ahead of the build.
    env["PYTHONSAFEPATH"] = "1"
    os.execve(sys.executable, [sys.executable, "-m", "processor.ops.cli", *argv], env)  # noqa: S606
    return None  # not reached: execve replaces this process


def pythonpath_first(path: Path, inherited: str | None) -> str:
    """A PYTHONPATH with `path` ahead of what `inherited` (a PYTHONPATH, or None) holds."""
    return os.pathsep.join([str(path), *filter(None, [inherited])])


def build(root: Path, build_dir: Path, config: Path | None = None) -> Status:
    """Copy the packages next to `build_dir`, compile `MODULES` there, then swap it in.

    `config`: the pyproject.toml whose mypy settings the compiler reads, the one beside
    the packages by default. A failed compile leaves a manifest saying so, and the
    worker runs interpreted.
    """
    config = config or root / _CONFIG
    if not config.is_file():
        raise FileNotFoundError(
            f"no {_CONFIG} beside the packages in {root}: give the checkout's (--config)"
        )
    work = build_dir.with_name(build_dir.name + ".new")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source_digest = digest(root)
    for package in PACKAGES:
        shutil.copytree(
            root / package, work / package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    shutil.copy2(config, work / _CONFIG)
    manifest: dict[str, object] = {"digest": source_digest, "python": sys.version.split()[0]}
    done = subprocess.run(  # noqa: S603 - our own interpreter and module list
        [sys.executable, "-m", "mypyc", *MODULES],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
        manifest["failed"] = "mypyc exited with " + str(done.returncode) + ": " + " | ".join(tail)
    shutil.rmtree(work / "build", ignore_errors=True)
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(build_dir, ignore_errors=True)
    work.rename(build_dir)
    return status(root, build_dir)


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """`root`: where the packages to build live, this process's by default."""
    parser = argparse.ArgumentParser(
        prog="python -m processor.ops.compiled",
        description="Build the worker's compiled per-record path beside the packages run.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the pyproject.toml with the mypy settings (default: the one beside the packages)",
    )
    parser.add_argument(
        "--require",
        action="store_true",
        help="exit 1 unless the build can run (an image build fails, not its workers)",
    )
    args = parser.parse_args(argv)
    root = root or source_root()
    try:
        found = build(root, default_build_dir(root), args.config)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(f"compiled build in {found.build_dir}: {found.reason}")
    return 1 if args.require and not found.usable else 0


if __name__ == "__main__":
    raise SystemExit(main())
