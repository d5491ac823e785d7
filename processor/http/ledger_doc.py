"""The ledger sink's paths in docs/openapi.json (processor/http/openapi.py adds them).

They are served by `meter ledger-sink` on METER_SINK_PORT, not by the workers: each
path names that server.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from schemas.ledger_api import CommandStatus, LedgerPage, RechargeHistory, TenantList, UsageReport
from schemas.types import ID_PATTERN, TENANT_ID_PATTERN

__all__ = [
    "MODELS",
    "TAG",
    "json_response",
    "paths",
]

MODELS: Final[tuple[tuple[type[BaseModel], JsonSchemaMode], ...]] = (
    (LedgerPage, "serialization"),
    (UsageReport, "serialization"),
    (CommandStatus, "serialization"),
    (TenantList, "serialization"),
    (RechargeHistory, "serialization"),
)
TAG: Final = {
    "name": "history",
    "description": "The ledger in SQL: served by `meter ledger-sink` on METER_SINK_PORT "
    "(default 6070), which also serves `/health` and `/ready`.",
}
_SERVERS: Final = [
    {"url": "http://127.0.0.1:6070", "description": "the ledger sink (meter ledger-sink)"}
]


def json_response(ref: str, description: str) -> dict[str, Any]:
    # Errors are RFC 9457 problem details (processor/http/problems.py).
    media = "application/problem+json" if ref.endswith("/ErrorBody") else "application/json"
    return {"description": description, "content": {media: {"schema": {"$ref": ref}}}}


def paths(refs: dict[str, str]) -> dict[str, Any]:
    error = refs["ErrorBody"]
    tenant = {
        "name": "tenant_id",
        "in": "path",
        "required": True,
        "description": "The tenant whose ledger this is.",
        "schema": {"type": "string", "pattern": TENANT_ID_PATTERN},
    }
    bad = json_response(
        error,
        "`invalid_tenant_id` (the path's tenant id breaks the contract's pattern; "
        "`tenant_id` is null), `invalid_query` (a parameter out of range, named in "
        "`detail`) or `invalid_cursor`.",
    )

    def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }

    timestamp = {"type": "string", "format": "date-time"}
    return {
        "/commands/{command_id}": {
            "get": {
                "operationId": "getCommandStatus",
                "summary": "What became of a command: pending, applied, rejected or ignored",
                "description": "Added. Where the admin API's 202 `Location` points. Served "
                "by the ledger sink from its database (it records each command as pending "
                "when it reads it on credits.commands, then the outcome the worker "
                "published on credits.command-results in the same transaction as the "
                "command's other outputs); every worker forwards the same path to the sink "
                "(METER_SINK_URL), so one base URL serves the admin API and this. The first "
                "outcome stands (a duplicate of the command publishes none), except that "
                "`applied` replaces `rejected` when the command was re-sent and applied.",
                "tags": ["history"],
                "parameters": [
                    {
                        "name": "command_id",
                        "in": "path",
                        "required": True,
                        "description": "The command's id, percent-encoded.",
                        "schema": {"type": "string", "pattern": ID_PATTERN},
                    },
                    query(
                        "tenant_id",
                        "The tenant that sent it (command ids are unique per tenant): needed "
                        "only when several tenants used the id.",
                        {"type": "string", "pattern": TENANT_ID_PATTERN},
                    ),
                ],
                "responses": {
                    "200": json_response(refs["CommandStatus"], "The command's status."),
                    "400": json_response(error, "`invalid_command_id` or `invalid_tenant_id`."),
                    "404": json_response(
                        error,
                        "`unknown_command`: never sent, or the sink has not read it yet.",
                    ),
                    "409": json_response(
                        error, "`ambiguous_command_id`: several tenants used it; add tenant_id."
                    ),
                    "503": json_response(
                        error,
                        "`sink_unavailable` (from a worker): the sink did not answer; "
                        "retry after `Retry-After`.",
                    ),
                },
            }
        },
        "/tenants": {
            "get": {
                "operationId": "listTenants",
                "summary": "Every tenant, searched and filtered (the operator's list)",
                "description": "Added. Tenants in id order, from the sink's tenants table "
                "(balance from the newest ledger entry, status from the exhausted/restored "
                "alert with the highest status_seq, suspension and failures from the "
                "alerts and billing's answers). With METER_AUTH=jwt: operators only.",
                "tags": ["history"],
                "servers": _SERVERS,
                "parameters": [
                    query(
                        "q",
                        "Part of the tenant id, any case.",
                        {"type": "string", "maxLength": 64},
                    ),
                    query(
                        "status",
                        "Only the exhausted, the auto-recharge suspended, those below "
                        "their low-balance level, or those whose recharges fail.",
                        {"type": "string", "enum": ["exhausted", "suspended", "low", "failing"]},
                    ),
                    query(
                        "cursor",
                        "`next_cursor` of the previous page (opaque).",
                        {"type": "string", "maxLength": 100},
                    ),
                    query(
                        "limit",
                        "Tenants per page.",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    ),
                ],
                "responses": {
                    "200": json_response(refs["TenantList"], "A page of tenants."),
                    "400": json_response(error, "`invalid_query` or `invalid_cursor`."),
                },
            }
        },
        "/tenants/{tenant_id}/recharges": {
            "get": {
                "operationId": "getRecharges",
                "summary": "A tenant's recharge requests and billing's answers, newest first",
                "description": "Added. Each attempt of each request, with the answer "
                "that names it (an answer naming no attempt counts for the latest).",
                "tags": ["history"],
                "servers": _SERVERS,
                "parameters": [
                    tenant,
                    query(
                        "limit",
                        "Attempts.",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    ),
                ],
                "responses": {
                    "200": json_response(refs["RechargeHistory"], "The attempts."),
                    "400": bad,
                },
            }
        },
        "/tenants/{tenant_id}/ledger": {
            "get": {
                "operationId": "getLedger",
                "summary": "A tenant's ledger entries, newest first",
                "description": "From the sink's database (it trails the topic by the "
                "sink's lag). A tenant without entries gets an empty page.",
                "tags": ["history"],
                "servers": _SERVERS,
                "parameters": [
                    tenant,
                    query(
                        "before",
                        "`next_cursor` of the previous page (opaque).",
                        {"type": "string", "maxLength": 64},
                    ),
                    query(
                        "limit",
                        "Entries per page.",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    ),
                    query(
                        "kind",
                        "Only these kinds, comma-separated.",
                        {
                            "type": "string",
                            "pattern": "^(debit|credit|expiry)(,(debit|credit|expiry)){0,2}$",
                        },
                    ),
                ],
                "responses": {"200": json_response(refs["LedgerPage"], "A page."), "400": bad},
            }
        },
        "/tenants/{tenant_id}/usage": {
            "get": {
                "operationId": "getUsage",
                "summary": "Usage per UTC day or per service",
                "description": "The debits whose usage occurred in [from, to): how many, "
                "their billed seconds and their exact amount, per bucket.",
                "tags": ["history"],
                "servers": _SERVERS,
                "parameters": [
                    tenant,
                    query("from", "Start, inclusive (RFC 3339 with an offset).", timestamp),
                    query("to", "End, exclusive (RFC 3339 with an offset).", timestamp),
                    query(
                        "group_by",
                        "Buckets.",
                        {"type": "string", "enum": ["day", "service"], "default": "day"},
                    ),
                ],
                "responses": {
                    "200": json_response(refs["UsageReport"], "The buckets."),
                    "400": bad,
                },
            }
        },
        "/tenants/{tenant_id}/ledger.csv": {
            "get": {
                "operationId": "getStatement",
                "summary": "A tenant's statement as CSV, oldest first",
                "description": "A header row, then one row per entry: entry_id, "
                "recorded_at, occurred_at, kind, amount, signed_amount, currency, "
                "balance_after, cause_topic, cause_id, rate_prefix, rate_per_minute, "
                "billed_seconds. Money as decimal strings.",
                "tags": ["history"],
                "servers": _SERVERS,
                "parameters": [tenant],
                "responses": {
                    "200": {
                        "description": "The statement (an attachment).",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    "400": bad,
                },
            }
        },
    }
