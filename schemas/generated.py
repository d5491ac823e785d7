"""Files generated from the code and checked in: their drift check, their rewrite, and
the command line that offers both (`--check` for CI, a plain run to rewrite).

The JSON Schemas (`schemas.export`), the AsyncAPI and OpenAPI documents and the
PrometheusRule manifest each have a `render` of their own; what they share is here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def drift(path: Path, text: str) -> list[str]:
    """What is wrong with `path` on disk, if it should hold `text`; empty when nothing."""
    if not path.is_file():
        return [f"missing: {path}"]
    if path.read_text(encoding="utf-8") != text:
        return [f"differs: {path}"]
    return []


def rewrite(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds it; True when it wrote."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="\n": identical bytes on every platform, so the drift check is exact.
    path.write_text(text, encoding="utf-8", newline="\n")
    return True


def command(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    check: Callable[[], list[str]],
    write: Callable[[], list[str]],
    current: Callable[[], str],
    stale: str,
) -> int:
    """The generator's command line: with `--check`, print `check()`'s problems and
    `stale` and exit 1, or `current()`; without, print what `write()` did. `current` is
    called only then, since saying it may mean rendering again."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(stale, file=sys.stderr)
            return 1
        print(current())
        return 0
    for line in write():
        print(line)
    return 0
