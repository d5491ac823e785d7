"""Added: `--output json|table` for every `meter` command that prints a result.

`json` prints one JSON document (for scripts: `jq`, CI); `table` prints what a person
reads: aligned `key  value` rows for one object, a header and rows for a list, or the
command's own report text. Money and times are the strings the contract uses.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["OUTPUTS", "add_output", "emit", "table"]

OUTPUTS: Final = ("json", "table")


def add_output(parser: argparse.ArgumentParser, default: str = "table") -> None:
    parser.add_argument(
        "--output",
        "-o",
        choices=OUTPUTS,
        default=default,
        help=f"json (one JSON document, for scripts) or table (for people); default {default}",
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _flat(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _flat(value, f"{name}.")
        else:
            rows.append((name, _cell(value)))
    return rows


def table(data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """One object as `key  value` rows (nested keys dotted), a list as columns."""
    if isinstance(data, Mapping):
        rows = _flat(data)
        width = max((len(k) for k, _ in rows), default=0)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    items = list(data)
    if not items:
        return "(none)"
    columns = list(dict.fromkeys(k for item in items for k in item))
    cells = [[_cell(item.get(c)) for c in columns] for item in items]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(
    output: str,
    data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    text: str | None = None,
) -> None:
    """Print `data` as JSON, or as `text` (the command's own wording) or a table."""
    if output == "json":
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        print(text if text is not None else table(data))
