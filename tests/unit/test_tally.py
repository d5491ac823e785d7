"""The per-partition counts behind the gauges and the recharge timer's index."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from processor.core.state import Account, PendingRecharge
from processor.core.stored import StoredAccount
from processor.kafka.routing import partition_for
from processor.worker.codec import Undecoded, dump_stored
from processor.worker.tally import AccountTally, Totals, Value

TENANTS = [f"t{i}" for i in range(6)]


def value(tenant: str, balance: str, pending: bool = False) -> StoredAccount:
    request = (
        PendingRecharge("r-1", Decimal("25"), 1, datetime(2026, 12, 1, tzinfo=UTC))
        if pending
        else None
    )
    return StoredAccount(Account(tenant, balance=Decimal(balance), pending=request))


def test_counts_follow_each_replaced_value() -> None:
    tally = AccountTally()
    tally.replace(3, "acme", None, value("acme", "10"))
    tally.replace(3, "acme", value("acme", "10"), value("acme", "0", pending=True))
    tally.replace(5, "zeta", None, value("zeta", "4"))

    assert tally.totals([3]) == Totals(tenants=1, outstanding=1, exhausted=1)
    assert tally.totals([3, 5]) == Totals(tenants=2, outstanding=1, exhausted=1)
    assert tally.totals([1]) == Totals(0, 0, 0)
    assert list(tally.pending([3, 5])) == ["acme"]

    tally.replace(3, "acme", value("acme", "0", pending=True), value("acme", "25"))
    assert tally.totals([3]) == Totals(tenants=1, outstanding=0, exhausted=0)
    assert list(tally.pending([3])) == []


writes = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.sampled_from(["-1.5", "0", "0.01", "30"]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=60,
)


@given(writes)
def test_counts_equal_a_scan_of_the_values(sequence: list[tuple[str, str, bool, bool]]) -> None:
    """Whatever order values replace each other in, decoded or as read at recovery,
    the counts are what a full scan of the final values gives (what the gauges used to
    compute every tick)."""
    tally = AccountTally()
    current: dict[str, StoredAccount] = {}
    held: dict[str, Value] = {}
    for tenant, balance, pending, undecoded in sequence:
        new = value(tenant, balance, pending)
        kept: Value = Undecoded(dump_stored(new)) if undecoded else new
        partition = TENANTS.index(tenant) % 2
        tally.replace(partition, tenant, held.get(tenant), kept)
        current[tenant] = new
        held[tenant] = kept
    for partitions in ([0], [1], [0, 1]):
        mine = [v for t, v in current.items() if TENANTS.index(t) % 2 in partitions]
        assert tally.totals(partitions) == Totals(
            tenants=len(mine),
            outstanding=sum(v.account.pending is not None for v in mine),
            exhausted=sum(v.account.exhausted for v in mine),
        )
        assert sorted(tally.pending(partitions)) == sorted(
            v.account.tenant_id for v in mine if v.account.pending is not None
        )


def test_the_store_reads_a_value_decoded_once_and_a_missing_one_as_the_default() -> None:
    from processor.worker.store import SeqMemoryStore

    store: Any = object.__new__(SeqMemoryStore)
    acme = value("acme", "10")
    store.data = {"acme": Undecoded(dump_stored(acme))}
    assert store.get("zeta") is None and store.get("zeta", "none") == "none"
    read = store.get("acme")
    assert read == acme
    assert store.data["acme"] is read  # decoded in place, once
    assert store.get("acme") is read


def _store(data: dict[str, Any]) -> Any:
    from types import SimpleNamespace

    from processor.worker.store import SeqMemoryStore

    store: Any = object.__new__(SeqMemoryStore)
    store.data = dict(data)
    store.tally = AccountTally()
    store.table = SimpleNamespace(partitions=2)
    store._key_partition = {}  # noqa: SLF001 - as Faust's table builds it
    return store


def test_a_batch_settled_in_one_call_leaves_what_one_write_each_would() -> None:
    before = {"t0": value("t0", "10"), "t1": value("t1", "0", pending=True)}
    batch = [
        ("t0", value("t0", "-1")),
        ("t2", value("t2", "5", pending=True)),
        ("t1", value("t1", "3")),
    ]
    one_each, at_once = _store(before), _store(before)
    for store in (one_each, at_once):
        for key, stored in before.items():
            store.tally.replace(partition_for(key, 2), key, None, stored)
    for key, stored in batch:
        one_each[key] = stored
    at_once.settle_values(batch)
    assert at_once.data == one_each.data
    assert at_once.tally.totals([0, 1]) == one_each.tally.totals([0, 1])
    assert at_once.tally.totals([0, 1]) == Totals(tenants=3, outstanding=1, exhausted=1)
    assert sorted(at_once.tally.pending([0, 1])) == ["t2"]
