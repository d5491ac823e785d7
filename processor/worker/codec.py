"""Bytes in and out of Kafka for the worker's own state: stored accounts and marks.

The account state is stored as compact JSON so a changelog can be read by a person:
since version 3 an array, its fields by position (processor/worker/stored_v3.py), as
it is held in memory for every tenant; versions 1 and 2 (objects,
processor/worker/stored_v2.py) are still read. The outputs' formats (also kept in an
account's outbox) are processor/kafka/wire.py's.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from processor.core.money import ZERO, Unit
from processor.core.state import is_exhausted
from processor.core.stored import Mark, Position, StoredAccount
from processor.kafka.wire import dumps
from processor.worker.interned import shared_name, shared_unit
from processor.worker.stored_v2 import stored_from_dict
from processor.worker.stored_v3 import (
    SECONDS_BELOW,
    STORED_VERSION,
    applied_of,
    from_stamp,
    scaled_decimal,
    stored_from_list,
    stored_to_list,
    unit_v3,
)


def dump_stored(stored: StoredAccount) -> bytes:
    return dumps(stored_to_list(stored))


def applied_offsets(raw: bytes) -> dict[str, int]:
    """A stored account's applied offsets (any version), without decoding the rest."""
    data = orjson.loads(raw)
    if type(data) is list:
        if data[0] != STORED_VERSION:
            raise ValueError(f"unknown stored account version {data[0]!r}")
        return applied_of(data[8])
    return {str(k): int(v) for k, v in data.get("applied", {}).items()}


def load_stored(raw: bytes, default_unit: Unit | None = None) -> StoredAccount:
    """A stored account of any version: 3 (an array), or 1 and 2 (objects)."""
    data = orjson.loads(raw)
    if type(data) is list:
        return stored_from_list(data, default_unit)
    return stored_from_dict(data, default_unit)


class Undecoded:
    """An account value read at recovery and not decoded yet.

    Decoding every value was most of a large recovery's time (docs/performance.md,
    "Figures behind design choices"); most tenants are not touched soon after a
    restart. Recovery needs only what is kept here: the write order (which value is
    newest) and what the store's counts track. The store decodes a value the first
    time it is read (`processor/worker/store.py`).
    """

    __slots__ = ("exhausted", "expires", "order", "pending", "raw", "unit")

    def __init__(self, raw: bytes, highest: dict[str, int] | None = None) -> None:
        data = orjson.loads(raw)
        self.raw = raw
        if type(data) is list:
            self._v3(data, highest)
            return
        account = data["account"]
        if highest is not None:
            # The highest offset applied per input partition over the values read,
            # kept by the caller (core/stored.py, rewound_inputs).
            for tp, offset in data["applied"].items():
                if offset > highest.get(tp, -1):
                    highest[tp] = offset
        # As in stored_from_dict and StoredAccount.order.
        self.order = (int(data.get("epoch", 0)), int(data.get("gen", 0)), int(data["seq"]))
        self.exhausted = is_exhausted(
            Decimal(account["balance"]), Decimal(account.get("credit_limit", 0))
        )
        self.pending = account.get("pending") is not None
        # The first lot's expiry (epoch seconds), None without lots: the recharge
        # timer's index learns from it when to look at the tenant, without decoding.
        lots = account.get("lots")
        self.expires: int | None = int(lots[0][2]) if lots else None
        # Checked against the running card's as the value is read (processor/worker/store.py).
        self.unit = shared_unit(data, None)

    def _v3(self, data: list[Any], highest: dict[str, int] | None) -> None:
        """As __init__, for a version 3 value (stored_to_list)."""
        if data[0] != STORED_VERSION:
            raise ValueError(f"unknown stored account version {data[0]!r}")
        n = len(data)
        if highest is not None:
            applied = data[8]
            prefix = applied[0]
            for i in range(1, len(applied), 2):
                tp, offset = prefix + applied[i], applied[i + 1]
                if offset > highest.get(tp, -1):
                    highest[tp] = offset
        self.order = (int(data[4]), int(data[3]), int(data[2]))
        scale = data[6]
        credit = data[17] if n > 17 else None
        self.exhausted = is_exhausted(
            scaled_decimal(data[7], scale),
            ZERO if credit is None else scaled_decimal(credit, scale),
        )
        self.pending = n > 16 and data[16] is not None
        lots = data[14] if n > 14 else None
        if lots:
            first = lots[0][2]
            self.expires = (
                first
                if type(first) is int and -SECONDS_BELOW < first < SECONDS_BELOW
                else int(from_stamp(first).timestamp())
            )
        else:
            self.expires = None
        self.unit = unit_v3(data[5], scale, None)

    def decode(self) -> StoredAccount:
        return load_stored(self.raw)


def balance_of(stored: StoredAccount) -> Decimal:
    return stored.account.balance


def dump_mark(mark: Mark) -> bytes:
    return dumps({"e": mark.expires, "tp": mark.position.tp, "o": mark.position.offset})


def load_mark(raw: bytes) -> Mark:
    data = orjson.loads(raw)
    return Mark(int(data["e"]), Position(shared_name(data["tp"]), int(data["o"])))
