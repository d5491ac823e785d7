"""A command's `actor` reaches its ledger entry, on the topic and in the outbox."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from processor.core.outputs import LedgerOut
from processor.kafka.wire import output_from_dict, output_to_dict
from schemas import decode_command
from schemas.outputs import LedgerEntry
from tests.unit.conftest import Harness, Inputs


def test_the_actor_of_a_top_up_is_on_its_ledger_entry(harness: Harness, inputs: Inputs) -> None:
    funds = inputs.funds("10.0000", "f-1").model_copy(update={"actor": "alice@billing"})
    harness.command(funds)
    (entry,) = harness.ledger()
    assert entry.actor == "alice@billing"
    wire = output_to_dict(entry, "USD")
    assert wire["actor"] == "alice@billing"
    LedgerEntry.model_validate_json(orjson.dumps(wire))
    again = output_from_dict(wire)
    assert isinstance(again, LedgerOut) and again == entry


def test_without_an_actor_the_entry_has_none(harness: Harness, inputs: Inputs) -> None:
    harness.command(inputs.funds("10.0000", "f-1"))
    harness.usage(inputs.call(duration=60))
    for entry in harness.ledger():
        assert entry.actor is None
        assert "actor" not in output_to_dict(entry, "USD")


def test_a_command_validates_its_actor() -> None:
    base = {
        "type": "funds_added",
        "command_id": "c-1",
        "tenant_id": "acme",
        "occurred_at": "2026-12-03T10:00:00Z",
        "amount": "5.00",
        "currency": "USD",
        "source": "manual",
    }
    assert decode_command(orjson.dumps({**base, "actor": "bob"})).actor == "bob"
    for bad in ("", "x" * 129, "caf\u00e9", 7):
        with pytest.raises((ValidationError, ValueError)):
            decode_command(orjson.dumps({**base, "actor": bad}))
