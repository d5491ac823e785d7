"""The contract as code: pydantic models of every event in CONTRACT.md.

The JSON Schema files in ``schemas/json/`` are generated from these models by
``python -m schemas.export`` and checked in; a unit test fails when they drift.
"""

from schemas.api import AccountView, AutoRechargeView, PendingRechargeView
from schemas.inputs import (
    COMMAND_ADAPTER,
    COMMAND_TYPES,
    AutoRechargeChanged,
    AutoRechargeConfigured,
    CallUsage,
    Command,
    ConferenceUsage,
    DecodeError,
    FundsAdded,
    NotificationsChanged,
    NotificationsConfigured,
    RechargeFailed,
    TenantLimitsConfigured,
    decode_call,
    decode_command,
    decode_conference,
)
from schemas.outputs import (
    BalanceAlert,
    LedgerEntry,
    NotificationSettings,
    OutputModel,
    RechargeRequested,
    RejectedRecord,
)
from schemas.types import MAX_AMOUNT, format_money, format_timestamp, parse_money, parse_timestamp

__all__ = [
    "COMMAND_ADAPTER",
    "COMMAND_TYPES",
    "MAX_AMOUNT",
    "AccountView",
    "AutoRechargeChanged",
    "AutoRechargeConfigured",
    "AutoRechargeView",
    "BalanceAlert",
    "CallUsage",
    "Command",
    "ConferenceUsage",
    "DecodeError",
    "FundsAdded",
    "LedgerEntry",
    "NotificationSettings",
    "NotificationsChanged",
    "NotificationsConfigured",
    "OutputModel",
    "PendingRechargeView",
    "RechargeFailed",
    "RechargeRequested",
    "RejectedRecord",
    "TenantLimitsConfigured",
    "decode_call",
    "decode_command",
    "decode_conference",
    "format_money",
    "format_timestamp",
    "parse_money",
    "parse_timestamp",
]
