"""The stored account's encoding (processor/worker/codec.py, version 3): every account comes
back as it was, values written by earlier versions still load, and a typical tenant's
value stays small (it is held in memory for every tenant, docs/performance.md)."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.money import ZERO, Unit
from processor.core.outputs import LedgerOut
from processor.core.state import (
    Account,
    AutoRecharge,
    Lot,
    Notifications,
    PendingRecharge,
    RechargeMode,
    RechargeStatus,
)
from processor.core.stored import OutboxEntry, Position, StoredAccount
from processor.core.usage import SERVICES, MonthUsage, ServiceUsage
from processor.core.values import replace
from processor.kafka.wire import dumps
from processor.worker.codec import Undecoded, dump_stored, load_stored
from processor.worker.stored_v2 import stored_to_dict

# ---- strategies ------------------------------------------------------------------------

# Amounts at any number of places (a positive exponent too), with more digits than a
# 64-bit integer holds now and then: those stay text.
amounts = st.builds(
    lambda n, e: Decimal(n).scaleb(e),
    st.one_of(st.integers(-(10**7), 10**7), st.integers(-(10**22), 10**22)),
    st.integers(-12, 2),
) | st.sampled_from([Decimal("-0.0000"), Decimal("-0"), Decimal("0E+3")])
# UTC, whole seconds or not, from year 1 to 9999; now and then in another zone.
instants = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)),
    st.datetimes(
        min_value=datetime(1969, 12, 30), max_value=datetime(1970, 1, 3), timezones=st.just(UTC)
    ),
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(timezone(timedelta(hours=2))),
    ),
)
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
counts = st.integers(0, 2**40)
settings_ = st.builds(
    AutoRecharge,
    st.booleans(),
    amounts,
    amounts,
    st.booleans(),
    st.sampled_from(list(RechargeMode)),
    st.none() | amounts,
)
pendings = st.builds(
    PendingRecharge,
    text,
    amounts,
    st.integers(0, 10),
    instants,
    st.sampled_from(list(RechargeStatus)),
    st.none() | instants,
)
lots = st.builds(Lot, text, amounts, instants, st.booleans())
services = st.one_of(
    st.just(ServiceUsage()),
    st.builds(ServiceUsage, st.integers(1, 10**6), counts, amounts),
)
months = st.builds(
    MonthUsage,
    st.integers(190001, 999912),
    st.tuples(*[services] * len(SERVICES)),
)
notifications = st.builds(
    Notifications,
    st.lists(text, max_size=3).map(tuple),
    st.none() | text,
    st.none() | text,
    st.lists(text, max_size=3).map(tuple),
    text,
)
accounts = st.builds(
    Account,
    tenant_id=text,
    balance=amounts,
    auto_recharge=st.none() | settings_,
    pending=st.none() | pendings,
    updated_at=st.none() | instants,
    entries=counts,
    requests_issued=counts,
    status_seq=counts,
    credit_limit=st.just(ZERO) | amounts,
    notify_below=st.none() | amounts,
    lots=st.lists(lots, max_size=3).map(tuple),
    usage=st.lists(months, max_size=3).map(tuple),
    notifications=st.none() | notifications,
)
names = st.sampled_from(["usage.calls", "usage.conferencing", "credits.commands", "x"])
prefixes = st.sampled_from(["", "prod.", "bench-rec-full-1a2b3c.old."])
applied = st.builds(
    lambda prefix, offsets: MappingProxyType({prefix + k: v for k, v in offsets.items()}),
    prefixes,
    st.dictionaries(
        st.builds(lambda n, p: f"{n}:{p}", names, st.integers(0, 11)),
        st.integers(0, 2**62),
        max_size=4,
    ),
)
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
outboxes = st.lists(
    st.builds(
        lambda seq, offset, amount: OutboxEntry(
            seq,
            Position("usage.calls:0", offset),
            (LedgerOut("e-1", "acme", "credit", amount, amount, "c", "c-1", AT, AT),),
        ),
        counts,
        counts,
        amounts,
    ),
    max_size=2,
).map(tuple)
units = st.none() | st.builds(Unit, st.sampled_from(["USD", "EUR", "JPY"]), st.integers(0, 12))
stored_accounts = st.builds(
    StoredAccount,
    accounts,
    seq=counts,
    generation=counts,
    epoch=counts,
    applied=applied,
    outbox=outboxes,
    unit=units,
)


def as_version_2_kept_it(stored: StoredAccount) -> StoredAccount:
    """Version 2 kept a lot's expiry in whole seconds (cut, not rounded), and a target
    balance only in the to-target mode (the only one that has one)."""
    a = stored.account
    cut = tuple(
        replace(lot, expires_at=datetime.fromtimestamp(int(lot.expires_at.timestamp()), UTC))
        for lot in a.lots
    )
    ar = a.auto_recharge
    if ar is not None and ar.mode is RechargeMode.FIXED:
        ar = replace(ar, target_balance=None)
    return replace(stored, account=replace(a, lots=cut, auto_recharge=ar))


def held(value: Undecoded) -> tuple[object, ...]:
    return (value.order, value.exhausted, value.pending, value.expires, value.unit)


# ---- properties ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(stored_accounts)
def test_any_stored_account_reads_back_as_written(stored: StoredAccount) -> None:
    raw = dump_stored(stored)
    assert type(orjson.loads(raw)) is list  # version 3
    assert load_stored(raw) == stored


@settings(max_examples=300, deadline=None)
@given(stored_accounts)
def test_it_reads_back_exactly_as_version_2_did(stored: StoredAccount) -> None:
    """Same decimals (a balance's places show in every output), same timestamps, same
    shared settings: nothing a tenant sees changes with the encoding."""
    stored = as_version_2_kept_it(stored)
    old = load_stored(dumps(stored_to_dict(stored)))
    new = load_stored(dump_stored(stored))
    assert repr(new) == repr(old)
    assert new.account.auto_recharge is old.account.auto_recharge or (
        new.account.auto_recharge == old.account.auto_recharge
    )


@settings(max_examples=300, deadline=None)
@given(stored_accounts)
def test_what_recovery_keeps_of_an_undecoded_value_is_what_version_2_kept(
    stored: StoredAccount,
) -> None:
    highest_old: dict[str, int] = {}
    highest_new: dict[str, int] = {}
    old = Undecoded(dumps(stored_to_dict(stored)), highest_old)
    new = Undecoded(dump_stored(stored), highest_new)
    assert held(new) == held(old)
    assert highest_new == highest_old == dict(stored.applied)


# ---- earlier versions ------------------------------------------------------------------

U = datetime(2026, 12, 2, 9, 30, 12, 345678, tzinfo=UTC)

# Written by main at 65933c6 (version 2) for the account `written_by_main` builds: every
# field set, an outbox entry, a unit.
MAIN_65933C6 = (
    b'{"v":2,"account":{"v":1,"tenant_id":"acme","balance":"42.1234","entries":17,'
    b'"requests_issued":3,"status_seq":5,"updated_at":"2026-12-02T09:30:12.345678Z",'
    b'"auto_recharge":{"enabled":true,"recharge_amount":"25.00","trigger_balance":"5.00",'
    b'"suspended":true,"mode":"to_target","target_balance":"50.0000"},"pending":'
    b'{"request_id":"r-7","amount":"25.00","attempt":2,"requested_at":'
    b'"2026-12-02T09:30:12.345678Z","status":"failed","failed_at":"2026-12-01T09:30:00Z"},'
    b'"credit_limit":"10.00","notify_below":"7.5000","lots":[["lot-a","17.1234",1811844000,1],'
    b'["lot-b","25.0000",1825063200,0]],"usage":[[202612,[3,180,"0.0600"],null,'
    b'[1,60,"0.0300"],null]],"notifications":{"emails":["ops@acme.test"],"webhook_url":'
    b'"https://acme.test/hook","webhook_secret_sealed":"gAAAA-sealed","events":'
    b'["low_balance"],"command_id":"n-1"}},"seq":81,"gen":7,"epoch":3,"applied":'
    b'{"usage.calls:0":133456,"credits.commands:0":12},"outbox":[{"seq":80,"tp":'
    b'"usage.calls:0","offset":133455,"outputs":[{"type":"ledger_entry","entry_id":"e-9",'
    b'"tenant_id":"acme","kind":"debit","amount":"0.0200","currency":"","balance_after":'
    b'"42.1234","cause_topic":"usage.calls","cause_id":"c-9","occurred_at":'
    b'"2026-12-01T09:30:00Z","recorded_at":"2026-12-02T09:30:12.345678Z","rate_prefix":"1",'
    b'"rate_per_minute":"0.0200","billed_seconds":60}]}],"currency":"USD","decimals":4}'
)


def written_by_main() -> StoredAccount:
    D = Decimal
    entry = LedgerOut(
        "e-9",
        "acme",
        "debit",
        D("0.0200"),
        D("42.1234"),
        "usage.calls",
        "c-9",
        AT,
        U,
        rate_prefix="1",
        rate_per_minute=D("0.0200"),
        billed_seconds=60,
    )
    account = Account(
        tenant_id="acme",
        balance=D("42.1234"),
        auto_recharge=AutoRecharge(
            True, D("25.00"), D("5.00"), True, RechargeMode.TO_TARGET, D("50.0000")
        ),
        pending=PendingRecharge("r-7", D("25.00"), 2, U, RechargeStatus.FAILED, AT),
        updated_at=U,
        entries=17,
        requests_issued=3,
        status_seq=5,
        credit_limit=D("10.00"),
        notify_below=D("7.5000"),
        lots=(
            Lot("lot-a", D("17.1234"), datetime(2027, 6, 1, 10, 0, tzinfo=UTC), True),
            Lot("lot-b", D("25.0000"), datetime(2027, 11, 1, 10, 0, tzinfo=UTC)),
        ),
        usage=(
            MonthUsage(
                202612,
                (
                    ServiceUsage(3, 180, D("0.0600")),
                    ServiceUsage(),
                    ServiceUsage(1, 60, D("0.0300")),
                    ServiceUsage(),
                ),
            ),
        ),
        notifications=Notifications(
            ("ops@acme.test",), "https://acme.test/hook", "gAAAA-sealed", ("low_balance",), "n-1"
        ),
    )
    return StoredAccount(
        account,
        seq=81,
        generation=7,
        epoch=3,
        applied=MappingProxyType({"usage.calls:0": 133456, "credits.commands:0": 12}),
        outbox=(OutboxEntry(80, Position("usage.calls:0", 133455), (entry,)),),
        unit=Unit("USD", 4),
    )


def test_a_value_written_by_main_before_version_3_still_loads() -> None:
    expected = written_by_main()
    assert load_stored(MAIN_65933C6) == expected
    assert repr(load_stored(MAIN_65933C6)) == repr(load_stored(dump_stored(expected)))
    assert held(Undecoded(MAIN_65933C6)) == held(Undecoded(dump_stored(expected)))
    # ... and is written as version 3 from its next change on, in fewer bytes.
    assert len(dump_stored(expected)) < len(MAIN_65933C6) * 0.6


def test_a_value_of_an_unknown_version_is_refused() -> None:
    data = orjson.loads(dump_stored(written_by_main()))
    data[0] = 4
    raw = orjson.dumps(data)
    for read in (load_stored, Undecoded):
        try:
            read(raw)
        except ValueError as exc:
            assert "version 4" in str(exc)
        else:
            raise AssertionError(f"{read.__name__} read a version it does not know")


# ---- size ------------------------------------------------------------------------------


def test_a_typical_tenant_is_held_in_half_the_bytes_of_version_2() -> None:
    """The bench's synthetic tenants (bench/recovery.py): what recovery holds per
    tenant before the first read is this encoded value (docs/performance.md)."""
    from bench.recovery import account_value

    values = [account_value(i, "bench-rec-full-1a2b3c.") for i in range(0, 20_000, 7)]
    new = statistics.mean(len(dump_stored(v)) for v in values)
    old = statistics.mean(len(dumps(stored_to_dict(v))) for v in values)
    assert new <= 360 < 600 <= old


def test_the_applied_offsets_read_from_any_version() -> None:
    """What `meter reconcile` reads of each changelog value (processor/ops/reconcile.py)."""
    from processor.worker.codec import applied_offsets

    stored = written_by_main()
    assert applied_offsets(dump_stored(stored)) == dict(stored.applied)
    assert applied_offsets(MAIN_65933C6) == dict(stored.applied)
    legacy = stored_to_dict(stored)
    del legacy["applied"]  # not what any version wrote, read as none
    assert applied_offsets(dumps(legacy)) == {}
