"""The crash points of docs/guarantees.md, one by one, on the pure engine.

A crash is simulated by keeping only some of the writes a record caused (account
value, dedupe mark, outputs) and processing the record again at the same position,
as Faust does after a restart.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from processor.core.dedupe import DedupeWindow
from processor.core.engine import Engine
from processor.core.outcome import Status
from processor.core.outputs import LedgerOut, RechargeOut
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.core.state import RechargePolicy
from processor.core.stored import Mark, OutboxEntry, Position, StoredAccount, newer
from processor.core.usage import UsageEvent
from schemas import CallUsage, FundsAdded
from tests.support import events

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
CARD = load_rate_card(example_rate_card_path())


def engine(
    accounts: dict[str, StoredAccount] | None = None, seen: dict[str, Mark] | None = None
) -> Engine:
    return Engine(
        CARD,
        RechargePolicy(),
        DedupeWindow(7),
        accounts if accounts is not None else {},
        seen if seen is not None else {},
    )


AT = "2026-11-25T09:00:00Z"


def call(event_id: str, seconds: int = 61) -> UsageEvent:
    return events.usage_event(
        CallUsage.model_validate(events.call(event_id, seconds=seconds, at=AT))
    )


def funds(command_id: str, amount: str) -> FundsAdded:
    return FundsAdded.model_validate(events.funds(command_id, amount=amount, at=AT))


P = Position("usage.calls:0", 10)


def balance(e: Engine) -> Decimal:
    return e.accounts["acme"].account.balance


def applied_once(e: Engine) -> None:
    # 10.00 of funds, one 61 s call to +447 at 0.1320.
    assert balance(e) == Decimal("9.8680")


@pytest.fixture
def funded() -> Engine:
    e = engine()
    e.command(funds("f1", "10.00"), "credits.commands", NOW, Position("credits.commands:0", 0))
    return e


def crash_keeping(e: Engine, *, account: bool, mark: bool) -> tuple[Engine, Any]:
    """Process the call at P, then keep only the chosen writes, as a crash would.

    The worker produces an account value or a mark only after the record's outputs are
    in Kafka, so either surviving means its ledger entry did too.
    """
    before_accounts = copy.copy(e.accounts)
    before_seen = copy.copy(e.seen)
    outcome = e.usage(call("e1"), "usage.calls", NOW, P)
    assert outcome.status is Status.APPLIED
    accounts = dict(e.accounts) if account else dict(before_accounts)
    seen = dict(e.seen) if mark else dict(before_seen)
    return engine(accounts, seen), outcome


@pytest.mark.parametrize(
    ("account", "mark"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_a_replayed_record_changes_the_balance_once_whatever_survived(
    funded: Engine, account: bool, mark: bool
) -> None:
    restarted, first = crash_keeping(funded, account=account, mark=mark)
    again = restarted.usage(call("e1"), "usage.calls", NOW, P)
    applied_once(restarted)
    if account:
        # Its value survived, so its outputs had been delivered: nothing to send again.
        assert again.status is Status.REPLAYED and again.outputs == ()
        return
    # Applied again: the ledger entry comes out with the same id as the first time.
    [entry] = [o for o in again.outputs if isinstance(o, LedgerOut)]
    [first_entry] = [o for o in first.outputs if isinstance(o, LedgerOut)]
    assert entry.entry_id == first_entry.entry_id and entry.amount == first_entry.amount
    assert again.status is Status.APPLIED


def test_a_mark_without_its_account_value_does_not_hide_the_event(funded: Engine) -> None:
    restarted, _ = crash_keeping(funded, account=False, mark=True)
    # The same event, re-sent and re-routed, arrives on another partition before the
    # replay of the first (on one partition, records are replayed in order).
    first = restarted.usage(call("e1"), "usage.calls", NOW, Position("reroute:0", 3))
    assert first.status is Status.APPLIED
    replay = restarted.usage(call("e1"), "usage.calls", NOW, P)
    assert replay.status is Status.DUPLICATE
    applied_once(restarted)


def test_a_resent_duplicate_after_recovery_is_recognised(funded: Engine) -> None:
    restarted, _ = crash_keeping(funded, account=True, mark=False)
    restarted.usage(call("e1"), "usage.calls", NOW, P)  # the replay writes the mark again
    later = restarted.usage(call("e1"), "usage.calls", NOW, Position("usage.calls:0", 99))
    assert later.status is Status.DUPLICATE
    applied_once(restarted)


def with_legacy_outbox(e: Engine, position: Position, outputs: tuple[Any, ...]) -> None:
    """Give acme's value the outbox entry a value written before outputs preceded state
    (before 2026-12-01) carried for the record at `position`."""
    stored = e.accounts["acme"]
    e.accounts["acme"] = replace(stored, outbox=(OutboxEntry(stored.seq, position, outputs),))


def test_new_values_hold_no_outputs_but_a_legacy_outbox_is_sent_again_until_delivered() -> None:
    delivered: set[int] = set()
    e = engine()
    e.delivered = lambda _tenant, entry: entry.seq in delivered
    e.command(funds("f1", "10.00"), "credits.commands", NOW, Position("credits.commands:0", 0))
    first = e.usage(call("e1"), "usage.calls", NOW, P)
    assert e.accounts["acme"].outbox == ()
    with_legacy_outbox(e, P, first.outputs)
    replay = e.usage(call("e1"), "usage.calls", NOW, P)
    assert replay.status is Status.REPLAYED and replay.outputs == first.outputs
    delivered.add(first.seq)  # its offset got committed
    e.usage(call("e2"), "usage.calls", NOW, Position("usage.calls:0", 11))
    assert e.accounts["acme"].outbox == ()
    replay = e.usage(call("e1"), "usage.calls", NOW, P)
    assert replay.status is Status.REPLAYED and replay.outputs == ()


def test_recovery_keeps_the_newest_value_not_the_last_written() -> None:
    e = engine()
    e.command(funds("f1", "10.00"), "credits.commands", NOW, Position("credits.commands:0", 0))
    old = e.accounts["acme"]
    e.usage(call("e1"), "usage.calls", NOW, P)
    new = e.accounts["acme"]
    assert newer(old, new) and not newer(new, old)
    assert newer(None, old)


def test_request_ids_are_numbered_per_tenant_not_by_cause() -> None:
    """Two workers that saw records in another order still name the n-th request alike."""
    from schemas import AutoRechargeConfigured

    settings = AutoRechargeConfigured.model_validate(
        {
            "type": "auto_recharge_configured",
            "command_id": "a1",
            "tenant_id": "acme",
            "occurred_at": "2026-11-25T09:00:00Z",
            "enabled": True,
            "recharge_amount": "20.00",
            "trigger_balance": "5.00",
        }
    )
    ids = []
    for order in (("call", "settings"), ("settings", "call")):
        e = engine()
        for what in order:
            if what == "call":
                e.usage(call("e1", seconds=600), "usage.calls", NOW, P)
            else:
                e.command(settings, "credits.commands", NOW, Position("credits.commands:0", 0))
        pending = e.accounts["acme"].account.pending
        assert pending is not None
        ids.append(pending.request_id)
    assert ids[0] == ids[1]


def test_outbox_entries_survive_a_round_trip_through_the_changelog_codec(funded: Engine) -> None:
    from processor.worker.codec import dump_stored, load_stored

    first = funded.usage(call("e1"), "usage.calls", NOW, P)
    with_legacy_outbox(funded, P, first.outputs)
    stored = funded.accounts["acme"]
    again = load_stored(dump_stored(stored))
    assert again == stored
    assert isinstance(again.outbox[0], OutboxEntry)
    assert any(isinstance(o, LedgerOut) for e in again.outbox for o in e.outputs)
    assert not any(isinstance(o, RechargeOut) for e in again.outbox for o in e.outputs)
    assert again.applied["usage.calls:0"] == 10


def test_a_zombies_late_branch_loses_to_its_successor_whatever_its_counter(
    funded: Engine,
) -> None:
    """The divergence the frozen-worker fault test found, on the pure engine.

    A worker frozen past its session timeout (generation 4) and its successor
    (generation 5) both start from the same committed value and apply the same records
    in a different cross-topic order. Their branches reach the same and then higher
    write counters with different balances; recovery reads both from the changelog and
    must keep the successor's, which alone went on after the takeover.
    """
    # Stored values are immutable: each branch gets its own mapping of the same values.
    zombie, successor = engine(dict(funded.accounts)), engine(dict(funded.accounts))
    zombie.usage(call("late-1"), "usage.calls", NOW, Position("usage.calls:0", 20), generation=4)
    zombie.usage(
        call("late-2", seconds=600), "usage.calls", NOW, Position("usage.calls:0", 21), generation=4
    )
    successor.usage(call("late-1"), "usage.calls", NOW, Position("usage.calls:0", 20), generation=5)
    zombies, successors = zombie.accounts["acme"], successor.accounts["acme"]
    assert zombies.seq > successors.seq and zombies.account.balance != successors.account.balance

    for changelog in ([successors, zombies], [zombies, successors]):
        kept = None
        for value in changelog:
            if newer(kept, value):
                kept = value
        assert kept is successors


def test_a_replayed_record_is_written_again_in_the_writers_generation(funded: Engine) -> None:
    """A successor re-reading records its predecessor applied rewrites the value in its
    own generation, so a zombie's equal counter cannot win at recovery."""
    funded.usage(call("e1"), "usage.calls", NOW, P)
    written = funded.accounts["acme"]
    replay = funded.usage(call("e1"), "usage.calls", NOW, P, generation=9)
    rewritten = funded.accounts["acme"]
    assert replay.status is Status.REPLAYED
    assert (rewritten.seq, rewritten.generation) == (written.seq, 9)
    assert newer(written, rewritten) and not newer(rewritten, written)


def test_the_writers_generation_survives_the_changelog_codec_and_old_values_read_as_0(
    funded: Engine,
) -> None:
    import orjson

    from processor.worker.codec import dump_stored, load_stored
    from processor.worker.stored_v2 import stored_to_dict

    funded.usage(call("e1"), "usage.calls", NOW, P, generation=7)
    raw = dump_stored(funded.accounts["acme"])
    assert load_stored(raw).generation == 7
    legacy = stored_to_dict(funded.accounts["acme"])  # the object form of version 2
    del legacy["gen"]
    assert load_stored(orjson.dumps(legacy)).generation == 0


def test_a_value_the_zombie_wrote_itself_still_passes_to_its_successor(funded: Engine) -> None:
    # The zombie-to-be owns the tenant and writes it, in generation 4.
    funded.usage(call("e1"), "usage.calls", NOW, P, generation=4)
    zombie, successor = engine(dict(funded.accounts)), engine(dict(funded.accounts))
    zombie.usage(call("late-1"), "usage.calls", NOW, Position("usage.calls:0", 20), generation=4)
    zombie.usage(call("late-2"), "usage.calls", NOW, Position("usage.calls:0", 21), generation=4)
    successor.usage(call("late-2"), "usage.calls", NOW, Position("usage.calls:0", 21), generation=5)
    z, s = zombie.accounts["acme"], successor.accounts["acme"]
    assert z.seq > s.seq
    assert newer(z, s) and not newer(s, z)


def test_writes_after_kafka_forgot_the_group_still_beat_the_values_before(
    funded: Engine,
) -> None:
    """A group left empty past its offsets' retention is deleted; its generations
    start again from 1. Values written after that must still win at recovery."""
    funded.usage(call("e1"), "usage.calls", NOW, P, generation=50)
    before = funded.accounts["acme"]
    funded.usage(call("e2"), "usage.calls", NOW, Position("usage.calls:0", 11), generation=1)
    after = funded.accounts["acme"]
    assert newer(before, after) and not newer(after, before)
