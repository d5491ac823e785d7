"""The worker's own paths in docs/openapi.json (processor/http/openapi.py adds them).

The read API, the admin commands and the probes, served by every worker on
METER_WEB_PORT; the ledger sink's are in processor/http/ledger_doc.py.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from processor.http import auth
from processor.http.admin_requests import ID_PREFIXES
from processor.http.ledger_doc import json_response
from schemas.admin import (
    AutoRechargePatch,
    AutoRechargeRequest,
    CommandAccepted,
    ErrorBody,
    FundsRequest,
    Health,
    LimitsRequest,
    NotificationsPatch,
    NotificationsRequest,
    Readiness,
    RechargeOutcomeRequest,
)
from schemas.api import AccountView, AuthorizeView
from schemas.types import E164_PATTERN, ID_PATTERN, TENANT_ID_PATTERN

__all__ = ["MODELS", "json_response", "paths"]

MODELS: Final[tuple[tuple[type[BaseModel], JsonSchemaMode], ...]] = (
    (FundsRequest, "validation"),
    (AutoRechargeRequest, "validation"),
    (AutoRechargePatch, "validation"),
    (LimitsRequest, "validation"),
    (RechargeOutcomeRequest, "validation"),
    (NotificationsRequest, "validation"),
    (NotificationsPatch, "validation"),
    (AccountView, "serialization"),
    (AuthorizeView, "serialization"),
    (CommandAccepted, "serialization"),
    (ErrorBody, "serialization"),
    (Health, "serialization"),
    (Readiness, "serialization"),
)


def paths(refs: dict[str, str]) -> dict[str, Any]:
    error = refs["ErrorBody"]
    tenant = {
        "name": "tenant_id",
        "in": "path",
        "required": True,
        "description": "The tenant (organisation) whose balance this is.",
        "schema": {"type": "string", "pattern": TENANT_ID_PATTERN},
    }
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Scoped per tenant and endpoint. Becomes the command's "
        "`command_id` (a top-up's as it is; any other endpoint's as its prefix + key: "
        f"{', '.join(f'`{p}`' for p in ID_PREFIXES.values())}; hashed past 128 "
        "characters), which "
        "the processor applies once, so "
        "retrying a request with the same key (after a timeout, a 503, a lost answer) "
        "changes the balance once. The same key and body again get the first answer "
        "(the worker remembers it for 24 hours; another worker publishes the same "
        "command again, which the processor drops); the same key with a different "
        "body is a 422 (`idempotency_key_reused`). A top-up key may not start with "
        "one of those prefixes. Without it a fresh key is used (returned in the "
        "`Idempotency-Key` header) and every request is a new command.",
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }
    invalid_tenant = json_response(
        error,
        "The path's tenant_id breaks the contract's pattern (error `invalid_tenant_id`; "
        "the id is not repeated, `tenant_id` is null). Nothing else is done with it.",
    )
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    admin_errors = {
        "400": json_response(
            error,
            "The path's tenant_id breaks the contract's pattern (`invalid_tenant_id`, "
            "checked first), or the body is not JSON (`invalid_json`).",
        ),
        "401": {
            **json_response(error, "No bearer token."),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        },
        "403": json_response(error, "Wrong bearer token."),
        "413": json_response(error, "The body is too large."),
        "422": json_response(
            error,
            "The header or body is invalid, or names what the processor would reject "
            "(`invalid_request`; `errors` lists every refused field with its location, "
            "`header` or `body` first, and a `type` such as `currency_mismatch` or "
            "`too_many_decimals`: more decimal places than the rate card keeps balances "
            "at); or the Idempotency-Key was used before for this tenant and endpoint "
            "with a different body (`idempotency_key_reused`).",
        ),
        "503": json_response(
            error,
            "The admin API is disabled (METER_ADMIN_TOKEN unset), or the command could "
            "not be published to Kafka: retry with the same Idempotency-Key.",
        ),
    }
    accepted = {
        **json_response(
            refs["CommandAccepted"],
            "The command is on credits.commands (acknowledged by the broker); the "
            "worker owning the tenant applies it within moments. A retry with the same "
            "Idempotency-Key and body gets this answer again.",
        ),
        "headers": {
            "Location": {
                "description": "Added: where to read what became of the command, "
                "`/commands/{command_id}?tenant_id={tenant_id}` (percent-encoded).",
                "schema": {"type": "string"},
            },
            "Idempotency-Key": {
                "description": "The key (the one sent, or a fresh one): retry with it.",
                "schema": {"type": "string"},
            },
        },
    }

    def admin(
        operation_id: str, summary: str, description: str, body: str, body_doc: str
    ) -> dict[str, Any]:
        return {
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "tags": ["admin"],
            "security": [{"bearerAuth": []}],
            "parameters": [tenant, idempotency],
            "requestBody": {
                "required": True,
                "description": body_doc,
                "content": {"application/json": {"schema": {"$ref": body}}},
            },
            "responses": {"202": accepted, **admin_errors},
        }

    return {
        "/tenants/{tenant_id}/account": {
            "get": {
                "operationId": "getAccount",
                "summary": "A tenant's balance, status and recharge state",
                "description": "Answered by any worker: one that does not own the tenant "
                "asks the owner (and gives up after 2 s).",
                "tags": ["read"],
                "parameters": [tenant],
                "responses": {
                    "200": json_response(refs["AccountView"], "The account."),
                    "400": invalid_tenant,
                    "404": json_response(error, "No event for this tenant yet."),
                    "503": {
                        **json_response(
                            error,
                            "The tenant's partition is being reassigned, or its owner "
                            "cannot be reached or did not answer within 2 s; retry after "
                            "`Retry-After` seconds.",
                        ),
                        "headers": retry_after,
                    },
                },
            }
        },
        "/tenants/{tenant_id}/authorize": {
            "get": {
                "operationId": "authorizeCall",
                "summary": "May this call start, and for how long at most",
                "description": "Added. Answered by any worker, from the tenant's owner like "
                "the account. `max_seconds` is the longest duration whose charge, rated "
                "exactly as the rate card rates it (increments, minimum, connect fee, "
                "rounding), the balance plus the tenant's credit limit can pay, capped at "
                "86400 (a day). Refused calls answer 200 with `allowed: false`, "
                "`max_seconds: 0` and a `reason`: `exhausted`, `no_rate` or "
                "`unknown_tenant`.",
                "tags": ["read"],
                "parameters": [
                    tenant,
                    {
                        "name": "service",
                        "in": "query",
                        "required": True,
                        "description": "The rate table: outbound, toll_free_inbound, "
                        "conferencing_dial_out (its own table) or "
                        "conferencing_toll_free_dial_in (the toll_free_inbound table).",
                        "schema": {
                            "type": "string",
                            "enum": [
                                "outbound",
                                "toll_free_inbound",
                                "conferencing_dial_out",
                                "conferencing_toll_free_dial_in",
                            ],
                        },
                    },
                    {
                        "name": "number",
                        "in": "query",
                        "required": True,
                        "description": "The E.164 number to rate ('+' written %2B).",
                        "schema": {"type": "string", "pattern": E164_PATTERN},
                    },
                ],
                "responses": {
                    "200": json_response(refs["AuthorizeView"], "The answer, allowed or not."),
                    "400": json_response(
                        error,
                        "`invalid_tenant_id` (checked first, as on the account), "
                        "`invalid_service` or `invalid_number`.",
                    ),
                    "503": {
                        **json_response(error, "As on the account: retry after `Retry-After`."),
                        "headers": retry_after,
                    },
                },
            }
        },
        "/tenants/{tenant_id}/funds": {
            "post": admin(
                "addFunds",
                "Manual top-up",
                "Publishes a `funds_added` command (source `manual`) keyed by the tenant.",
                refs["FundsRequest"],
                "The amount and its currency, which must be the rate card's.",
            )
        },
        "/tenants/{tenant_id}/auto-recharge": {
            "put": admin(
                "configureAutoRecharge",
                "Replace the auto-recharge settings",
                "Publishes an `auto_recharge_configured` command keyed by the tenant; "
                "new settings also lift a suspension.",
                refs["AutoRechargeRequest"],
                "The complete settings; `enabled: false` turns auto-recharge off.",
            ),
            "patch": admin(
                "changeAutoRecharge",
                "Change some of the auto-recharge settings",
                "Added. Publishes an `auto_recharge_changed` command keyed by the tenant "
                "(its `command_id` is `auto-recharge-change:` + the Idempotency-Key) with "
                "only the fields named. The tenant's owner merges them with the current "
                "settings in order with every other command and rejects an invalid result "
                "(`invalid_settings`: a target not above the trigger, or no amount or "
                "trigger for a tenant without settings); see the command's status.",
                refs["AutoRechargePatch"],
                "At least one of `enabled`, `recharge_amount`, `trigger_balance`, `mode`, "
                "`target_balance`; an absent field keeps its value, `target_balance: null` "
                "clears it. 422 when what is named is invalid on its own.",
            ),
            "delete": {
                **{
                    k: v
                    for k, v in admin(
                        "disableAutoRecharge",
                        "Turn auto-recharge off",
                        "Added. Publishes an `auto_recharge_changed` command with "
                        "`enabled: false` (its `command_id` is `auto-recharge-off:` + the "
                        "Idempotency-Key); the amounts are kept. No body (or `{}`).",
                        refs["AutoRechargePatch"],
                        "",
                    ).items()
                    if k != "requestBody"
                },
            },
        },
        "/tenants/{tenant_id}/limits": {
            "put": admin(
                "configureLimits",
                "Set the credit limit and the low-balance level",
                "Added. Publishes a `tenant_limits_configured` command keyed by the tenant "
                "(its `command_id` is `limits:` + the Idempotency-Key). The tenant is "
                "exhausted when balance + credit_limit is at or below zero; a `low_balance` "
                "alert follows when the balance falls below `notify_below`.",
                refs["LimitsRequest"],
                "`credit_limit` and/or `notify_below`; an absent field keeps the current "
                "value, `notify_below: null` clears the level.",
            )
        },
        "/tenants/{tenant_id}/recharges/{request_id}/outcome": {
            "post": {
                **admin(
                    "recordRechargeOutcome",
                    "Billing's answer to a recharge request",
                    "Added. Publishes `funds_added` (source `auto_recharge`, naming the "
                    "request and attempt) for `succeeded`, `recharge_failed` for `failed`, "
                    "keyed by the tenant; its `command_id` is `outcome:` + the "
                    "Idempotency-Key, which defaults to `<request_id>#<attempt>:<outcome>` "
                    "so that an answer sent twice is one command. Role `billing`.",
                    refs["RechargeOutcomeRequest"],
                    "`outcome`; the `amount` charged (succeeded) or the `reason` (failed); "
                    "the `attempt` answered (RechargeRequested.attempt).",
                ),
                "parameters": [
                    tenant,
                    {
                        "name": "request_id",
                        "in": "path",
                        "required": True,
                        "description": "RechargeRequested.request_id.",
                        "schema": {"type": "string", "pattern": ID_PATTERN},
                    },
                    idempotency,
                ],
            }
        },
        "/auth/whoami": {
            "get": {
                "operationId": "whoAmI",
                "summary": "Who the bearer token says the caller is",
                "description": "Added. `{subject, role, tenant_id}` of the token (the static "
                "token's role is `admin`, its subject `admin-token`).",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "The caller.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["subject", "role", "tenant_id"],
                                    "properties": {
                                        "subject": {"type": "string"},
                                        "role": {
                                            "type": "string",
                                            "enum": [*auth.ROLES, "admin"],
                                        },
                                        "tenant_id": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/tenants/{tenant_id}/notifications": {
            "put": admin(
                "configureNotifications",
                "Replace who is told what, by email and webhook",
                "Added. Publishes a `notifications_configured` command keyed by the tenant "
                "(its `command_id` is `notifications:` + the Idempotency-Key); "
                "`meter notifier` then emails the addresses and posts Standard Webhooks to "
                "the URL for the events named. The webhook secret is sealed with "
                "METER_SECRETS_KEY before it is published and is never shown again; "
                "without that key a request naming a secret is a 503 `secrets_disabled`.",
                refs["NotificationsRequest"],
                "The complete settings: `emails` (at most 10), `webhook_url` with "
                "`webhook_secret` (`whsec_` + base64), `events` (default: all).",
            ),
            "patch": admin(
                "changeNotifications",
                "Change some of who is told what",
                "Added. Publishes a `notifications_changed` command keyed by the tenant "
                "(its `command_id` is `notifications-change:` + the Idempotency-Key) with "
                "only the fields named; the tenant's owner merges them with the current "
                "settings (a tenant without any: no emails, no webhook, every event) in "
                "order with every other command and publishes the merged settings whole. "
                "So the emails or events change without sending the webhook secret again. "
                "A secret named is sealed as on the PUT (503 `secrets_disabled` without "
                "METER_SECRETS_KEY).",
                refs["NotificationsPatch"],
                "At least one of `emails`, `events`, and `webhook_url` with "
                "`webhook_secret` (the two together, as on the PUT); `webhook_url: null` "
                "alone removes the webhook and its secret. An absent field keeps its value. "
                "422 for an empty body or a field invalid on its own.",
            ),
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus metrics of this worker",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "getHealth",
                "summary": "Liveness: the process serves HTTP",
                "tags": ["operations"],
                "responses": {"200": json_response(refs["Health"], "Alive.")},
            }
        },
        "/ready": {
            "get": {
                "operationId": "getReady",
                "summary": "Readiness: partitions assigned and state recovered",
                "tags": ["operations"],
                "responses": {
                    "200": json_response(refs["Readiness"], "Ready."),
                    "503": json_response(refs["Readiness"], "Not ready; `detail` says why."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "This document",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
