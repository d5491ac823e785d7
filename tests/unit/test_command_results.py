"""credits.command-results: what became of each command, staged by Intake in
the same round (transaction) as the command's other outputs."""

from __future__ import annotations

import json
from typing import Any

from processor.kafka.routing import partition_for
from processor.testing import MemoryPublisher
from processor.worker.records import Record, Source
from schemas.outputs import CommandResult
from tests.unit.test_batches import NAMES, PARTITIONS, Journal, Rig, call, funds


def results(rig: Rig) -> list[dict[str, Any]]:
    out = [o for round_ in rig.pub.calls for o in round_ if o.topic == NAMES.command_results]
    bodies = [json.loads(o.value) for o in out]
    for o, b in zip(out, bodies, strict=True):
        CommandResult.model_validate(b)  # the contract's shape
        assert o.key == b["tenant_id"].encode()
    return bodies


def settings(command_id: str, tenant: str, **fields: Any) -> bytes:
    return json.dumps(
        {
            "type": "auto_recharge_changed",
            "command_id": command_id,
            "tenant_id": tenant,
            "occurred_at": "2026-11-25T09:59:00Z",
            **fields,
        }
    ).encode()


async def test_applied_rejected_and_ignored_commands_have_one_result_each() -> None:
    rig = Rig(pub=Journal(atomic=True))
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("f-1", "acme")) == "applied"
    # A duplicate adds none: the first result stands.
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", funds("f-1", "acme")) == "duplicate"
    rejected = funds("f-2", "acme", amount="1.123456")
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", rejected) == "rejected"
    change = settings("s-1", "acme", trigger_balance="5")  # no settings to change yet
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", change) == "rejected"
    moot = json.dumps(
        {
            "type": "recharge_failed",
            "command_id": "rf-1",
            "tenant_id": "acme",
            "occurred_at": "2026-11-25T09:59:00Z",
            "recharge_request_id": "nope",
            "reason": "card_declined",
        }
    ).encode()
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", moot) == "ignored"
    # Usage has no result.
    assert rig.stage(Source.CALLS, NAMES.calls, "acme", call("e-1", "acme")) == "applied"
    await rig.pipeline.flusher.flush()
    (round_,) = rig.pub.calls
    got = results(rig)
    assert [(r["command_id"], r["outcome"]) for r in got] == [
        ("f-1", "applied"),
        ("f-2", "rejected"),
        ("s-1", "rejected"),
        ("rf-1", "ignored"),
    ]
    [credit] = [json.loads(o.value) for o in round_ if o.topic == NAMES.ledger][:1]
    assert got[0]["entry_id"] == credit["entry_id"] and got[0]["command_type"] == "funds_added"
    assert got[1]["reason"] == "invalid_event" and "decimal places" in got[1]["detail"]
    assert got[2]["reason"] == "invalid_settings" and got[2]["entry_id"] is None
    assert got[3]["reason"] == "unknown_or_closed_request"
    # Each result rides in the transaction of the partition its command came from.
    owner = partition_for("acme", PARTITIONS)
    assert {o.owner for o in round_ if o.topic == NAMES.command_results} == {owner}


async def test_a_settings_command_is_applied_without_an_entry() -> None:
    rig = Rig(pub=Journal(atomic=True))
    change = settings("s-1", "acme", enabled=True, recharge_amount="5", trigger_balance="1")
    assert rig.stage(Source.COMMANDS, NAMES.commands, "acme", change) == "applied"
    await rig.pipeline.flusher.flush()
    [result] = results(rig)
    assert (result["outcome"], result["entry_id"], result["command_type"]) == (
        "applied",
        None,
        "auto_recharge_changed",
    )
    assert "reason" not in result


async def test_an_undecodable_command_that_names_its_id_is_rejected_in_its_result() -> None:
    pub = MemoryPublisher()
    rig = Rig(pub=pub)
    p = partition_for("acme", PARTITIONS)
    bad = json.dumps(
        {
            "type": "auto_recharge_configured",
            "command_id": "c-9",
            "tenant_id": "acme",
            "occurred_at": "2026-11-25T09:59:00Z",
            "enabled": "yes",
        }
    ).encode()
    assert await rig.pipeline.handle(Source.COMMANDS, Record(NAMES.commands, p, 0, b"a", bad)) == (
        "rejected"
    )
    # Without a usable id there is nothing to be asked about: no result.
    garbage = b'{"type": "funds_added", "command_id": 7}'
    assert await rig.pipeline.handle(
        Source.COMMANDS, Record(NAMES.commands, p, 1, b"a", garbage)
    ) == ("rejected")
    [result] = pub.values(NAMES.command_results)
    assert (result["command_id"], result["outcome"], result["reason"]) == (
        "c-9",
        "rejected",
        "invalid_event",
    )
    assert [t for t, *_ in pub.sent] == [NAMES.rejected, NAMES.command_results, NAMES.rejected]
