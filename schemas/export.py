"""Generate the checked-in JSON Schema files from the models.

    python -m schemas.export          # (re)write schemas/json/*.json
    python -m schemas.export --check  # exit 1 if the files on disk have drifted

Inputs publish their *validation* schema (what we accept), outputs their
*serialization* schema (what we emit), as DESIGN.md asks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel

from schemas import generated
from schemas.api import AccountView, AuthorizeView
from schemas.inputs import (
    COMMAND_ADAPTER,
    AutoRechargeChanged,
    AutoRechargeConfigured,
    CallUsage,
    ConferenceUsage,
    FundsAdded,
    NotificationsChanged,
    NotificationsConfigured,
    RechargeFailed,
    TenantLimitsConfigured,
)
from schemas.outputs import (
    BalanceAlert,
    CommandResult,
    LedgerEntry,
    NotificationSettings,
    RechargeRequested,
    RejectedRecord,
)

__all__ = ["INPUT_MODELS", "JSON_DIR", "OUTPUT_MODELS", "check", "main", "render_all", "write"]

JSON_DIR: Final = Path(__file__).resolve().parent / "json"
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

INPUT_MODELS: Final[tuple[type[BaseModel], ...]] = (
    CallUsage,
    ConferenceUsage,
    FundsAdded,
    AutoRechargeConfigured,
    RechargeFailed,
    TenantLimitsConfigured,
    AutoRechargeChanged,
    NotificationsConfigured,
    NotificationsChanged,
)
OUTPUT_MODELS: Final[tuple[type[BaseModel], ...]] = (
    RechargeRequested,
    LedgerEntry,
    BalanceAlert,
    RejectedRecord,
    CommandResult,
    NotificationSettings,
    AccountView,
    AuthorizeView,
)


def _render(
    schema: dict[str, Any], title: str, mode: Literal["validation", "serialization"]
) -> str:
    document = {
        "$schema": _DIALECT,
        **schema,
        "title": title,
        "x-schema-mode": mode,
    }
    # sort_keys + fixed indent: byte-stable output, so the drift check is a string compare.
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def render_all() -> dict[str, str]:
    """File name (inside schemas/json/) -> file text, for every published schema."""
    files: dict[str, str] = {}
    for model in INPUT_MODELS:
        files[f"{model.__name__}.json"] = _render(
            model.model_json_schema(mode="validation"), model.__name__, "validation"
        )
    files["Command.json"] = _render(
        COMMAND_ADAPTER.json_schema(mode="validation"), "Command", "validation"
    )
    for model in OUTPUT_MODELS:
        files[f"{model.__name__}.json"] = _render(
            model.model_json_schema(mode="serialization"), model.__name__, "serialization"
        )
    return dict(sorted(files.items()))


def check(directory: Path | None = None) -> list[str]:
    """Problems with the files on disk; empty when they match the models."""
    directory = JSON_DIR if directory is None else directory
    expected = render_all()
    problems: list[str] = []
    for name, text in expected.items():
        problems.extend(generated.drift(directory / name, text))
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            if path.name not in expected:
                problems.append(f"stale (no model): {path}")
    return problems


def write(directory: Path | None = None) -> list[Path]:
    """Rewrite every schema file (and drop stale ones); returns the files changed."""
    directory = JSON_DIR if directory is None else directory
    expected = render_all()
    directory.mkdir(parents=True, exist_ok=True)
    changed: list[Path] = []
    for name, text in expected.items():
        path = directory / name
        if generated.rewrite(path, text):
            changed.append(path)
    for path in sorted(directory.glob("*.json")):
        if path.name not in expected:
            path.unlink()
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    return generated.command(
        argv,
        prog="python -m schemas.export",
        description="Write (or check) the JSON Schema files generated from schemas/.",
        check=check,
        write=lambda: [f"wrote {path}" for path in write()],
        current=lambda: f"{len(render_all())} JSON Schema files up to date",
        stale="JSON Schemas have drifted: run `python -m schemas.export`",
    )


if __name__ == "__main__":
    raise SystemExit(main())
