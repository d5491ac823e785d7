"""The OpenAPI 3.1 document of a worker's HTTP API, generated from `schemas/`.

    python -m processor.http.openapi          # (re)write docs/openapi.json
    python -m processor.http.openapi --check  # exit 1 if docs/openapi.json has drifted

Every body schema comes from the pydantic models (`schemas.api`, `schemas.admin`,
`schemas.ledger_api`), so the document cannot disagree with what the code validates
and sends; a unit test fails when the checked-in copy is stale, and each worker serves
`render()` at `GET /openapi.json`. The paths are in processor/http/worker_doc.py (the
workers') and processor/http/ledger_doc.py (the ledger sink's); here, the document
around them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from processor.http import auth, worker_doc
from processor.http import ledger_doc as sink_doc
from schemas import generated

__all__ = ["DOC_PATH", "build", "check", "main", "render", "write"]

DOC_PATH: Final = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
# The HTTP API's own version: bump on a change a client would notice.
API_VERSION: Final = "1.6.0"
_REF: Final = "#/components/schemas/{model}"

_MODELS: Final[tuple[tuple[type[BaseModel], JsonSchemaMode], ...]] = (
    *worker_doc.MODELS,
    *sink_doc.MODELS,
)


def build() -> dict[str, Any]:
    """The OpenAPI document as a dict."""
    keys, definitions = models_json_schema(_MODELS, ref_template=_REF)
    refs = {model.__name__: schema["$ref"] for (model, _), schema in keys.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "credits-meter worker HTTP API",
            "version": API_VERSION,
            "description": "Every worker serves this API on METER_WEB_PORT (default "
            "6066). Read endpoints are open; admin endpoints need "
            "`Authorization: Bearer $METER_ADMIN_TOKEN` and publish contract commands "
            "to credits.commands. With METER_AUTH=jwt every tenant endpoint needs a "
            "token (`jwt`; `x-permission` names what it needs) and the static token "
            "still works. Errors are RFC 9457 problem details. Money is a decimal "
            "number in a JSON string.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:6066", "description": "a local worker"}],
        "tags": [
            {"name": "read", "description": "Accounts, from any worker."},
            {"name": "admin", "description": "Commands, with the admin bearer token."},
            {"name": "operations", "description": "Probes, metrics and this document."},
            sink_doc.TAG,
        ],
        "paths": _secured({**worker_doc.paths(refs), **sink_doc.paths(refs)}, refs["ErrorBody"]),
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The value of METER_ADMIN_TOKEN on the workers (every "
                    "permission, actor `admin-token`).",
                },
                "jwt": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Added, with METER_AUTH=jwt: a JSON Web Token signed "
                    "RS256 or ES256 by a key of METER_AUTH_JWKS, issuer METER_AUTH_ISSUER, "
                    "audience METER_AUTH_AUDIENCE; claims `sub` (the actor), `role` "
                    "(`tenant_admin`: its own `tenant_id`, reads and settings; `operator`: "
                    "reads every tenant; `billing`: funds and recharge outcomes), `exp`, "
                    "`iat`.",
                },
            },
        },
    }


def _secured(paths: dict[str, Any], error: str) -> dict[str, Any]:
    """Every operation auth.ROUTES guards: its schemes and its 401/403 answers."""
    for (method, route), permission in auth.ROUTES.items():
        operation = paths.get(route, {}).get(method.lower())
        if operation is None:
            continue
        schemes: list[dict[str, list[str]]] = [{"jwt": []}, {"bearerAuth": []}]
        if permission is auth.Permission.READ:
            schemes.insert(0, {})  # open unless METER_AUTH=jwt
        operation["security"] = schemes
        operation["x-permission"] = permission.value
        responses = operation["responses"]
        responses["401"] = {
            **worker_doc.json_response(
                error,
                "No token, or one that is malformed, expired, badly signed or for another "
                "issuer or audience (`unauthorized`, `invalid_token`).",
            ),
            "headers": {
                "WWW-Authenticate": {
                    "description": "RFC 6750: `Bearer realm=...`, with "
                    '`error="invalid_token"` when a token was sent.',
                    "schema": {"type": "string"},
                }
            },
        }
        responses["403"] = worker_doc.json_response(
            error,
            f"The token's role may not do this (`forbidden`; needs `{permission.value}`), "
            "or a tenant_admin's token names another tenant; with METER_AUTH=token, a "
            "wrong admin token.",
        )
    return paths


def render() -> str:
    # sort_keys + fixed indent: byte-stable, so the drift check is a string compare.
    return json.dumps(build(), sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def check(path: Path = DOC_PATH) -> list[str]:
    """Problems with the checked-in document; empty when it matches the models."""
    return generated.drift(path, render())


def write(path: Path = DOC_PATH) -> bool:
    """Rewrite the document if it changed; True when it did."""
    return generated.rewrite(path, render())


def main(argv: Sequence[str] | None = None, path: Path = DOC_PATH) -> int:
    return generated.command(
        argv,
        prog="python -m processor.http.openapi",
        description="Write (or check) docs/openapi.json, generated from schemas/.",
        check=lambda: check(path),
        write=lambda: [f"wrote {path}" if write(path) else f"{path} unchanged"],
        current=lambda: f"{path} up to date",
        stale="OpenAPI document is stale: run `python -m processor.http.openapi`",
    )


if __name__ == "__main__":
    raise SystemExit(main())
