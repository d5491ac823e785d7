"""`meter reconcile`: check every balance against its inputs and its ledger.

Reads the input topics and `credits.ledger` (read_committed), rates the distinct
inputs again with the rate card through the same pure core, and compares, per tenant:

- the balance the inputs imply,
- the signed sum of the ledger's entries (each `entry_id` counted once),
- the live balance a worker reports (when a worker URL is given).

It also checks that each cause has exactly one ledger entry id, that entries sharing
an id agree, and that a tenant never had two recharge requests open at once; and, as a
consumer reading the output topics in offset order would see them (`check_histories`),
that no output id comes again with other content, that each tenant's `balance_after`
chain is unbroken and ends at the balance the inputs imply, and that no alert or
recharge request names a balance the account never had. Any
mismatch is a discrepancy: the report lists them and the exit code is 1.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.core.dedupe import DedupeWindow
from processor.core.engine import Engine
from processor.core.outputs import LedgerOut
from processor.core.rating import RateCard
from processor.core.state import RechargePolicy
from processor.core.stored import (
    Mark,
    Position,
    StoredAccount,
    highest_applied,
    rewound_inputs,
)
from processor.kafka import glue
from processor.kafka.topics import TopicNames
from processor.kafka.usage_wire import read_call, read_conference
from processor.worker.codec import applied_offsets
from processor.worker.records import H_FORCE_TOO_OLD, H_REPLAY_OF
from schemas import DecodeError, decode_command


@dataclass(frozen=True, slots=True)
class Raw:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    # The record's timestamp (ms; -1 unknown) and headers: when it arrived, and whether
    # a replay forced it past the age check (processor/worker/records.py, H_FORCE_TOO_OLD).
    timestamp: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()


async def read_topic(
    bootstrap: str,
    topic: str,
    within: float = 60.0,
    bounds: dict[int, tuple[int, int]] | None = None,
    **client_options: Any,
) -> list[Raw]:
    """Every committed record now in `topic`, partition by partition in offset order.

    `client_options` are aiokafka's security options (processor.kafka.options).
    `bounds`, when given, receives each partition's beginning and end offsets: a
    beginning above 0 means retention (or a deletion) has removed the records before.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **client_options,
    )
    await consumer.start()
    try:
        cluster = await glue.fetch_metadata(consumer)
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        start = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        if bounds is not None:
            bounds.update({tp.partition: (start[tp], end[tp]) for tp in tps})
        for tp in tps:
            consumer.seek(tp, start[tp])
        todo = {tp for tp in tps if end[tp] > start[tp]}
        out: list[Raw] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while todo:
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {within}s")
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for tp, records in batch.items():
                out.extend(
                    Raw(topic, tp.partition, r.offset, r.value, r.timestamp, tuple(r.headers or ()))
                    for r in records
                )
                if records and records[-1].offset + 1 >= end[tp]:
                    todo.discard(tp)
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
        return out
    finally:
        await consumer.stop()


@dataclass
class TenantCheck:
    tenant: str
    # None: not known, because retention has removed inputs (expected) or ledger
    # entries (ledger); what is known is still compared.
    expected: Decimal | None
    ledger: Decimal | None
    live: Decimal | None = None

    @property
    def ok(self) -> bool:
        known = [v for v in (self.expected, self.ledger, self.live) if v is not None]
        return all(v == known[0] for v in known)


@dataclass
class Report:
    tenants: list[TenantCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    inputs: int = 0
    distinct_applied: int = 0
    ledger_records: int = 0
    ledger_entries: int = 0
    # Added: `expiry` entries (funds of a lot that expired): not implied by any input
    # (the timer's clock wrote them), so each tenant's expected balance is the inputs'
    # less what expired, and they are not counted against the inputs' entries.
    expiry_entries: int = 0
    expired: dict[str, Decimal] = field(default_factory=dict)
    recharge_requests: int = 0
    # Records retention has already removed, per topic partition (not discrepancies:
    # the checks they would feed are left out instead of reported as mismatches).
    removed: list[str] = field(default_factory=list)
    inputs_complete: bool = True
    ledger_complete: bool = True

    @property
    def discrepancies(self) -> int:
        return len(self.problems) + sum(not t.ok for t in self.tenants)

    def render(self) -> str:
        lines = [
            f"inputs read: {self.inputs}, ledger entries expected: {self.distinct_applied}",
            f"ledger: {self.ledger_records} records, {self.ledger_entries} distinct entries "
            f"({self.expiry_entries} expiry)",
            f"recharge requests: {self.recharge_requests} records",
            f"tenants checked: {len(self.tenants)}",
        ]
        lines.extend(f"RETENTION {r}" for r in self.removed)
        if not self.inputs_complete:
            lines.append(
                "inputs already removed by retention: balances are not checked against the "
                "inputs, only the ledger against live balances"
            )
        if not self.ledger_complete:
            lines.append("ledger entries already removed by retention: ledger sums are not checked")
        for t in self.tenants:
            if not t.ok:
                lines.append(
                    f"MISMATCH {t.tenant}: inputs imply {t.expected}, ledger sums to "
                    f"{t.ledger}, live balance {t.live}"
                )
        lines.extend(f"PROBLEM {p}" for p in self.problems)
        lines.append(f"discrepancies: {self.discrepancies}")
        return "\n".join(lines)


def expected_accounts(
    card: RateCard,
    names: TopicNames,
    inputs: Iterable[Raw],
    dedupe: DedupeWindow | None = None,
) -> tuple[dict[str, StoredAccount], int]:
    """Apply every decodable input once, through the same core the workers run.

    `dedupe`: the workers' window (METER_DEDUPE_DAYS, METER_MAX_FUTURE_SECONDS); each
    input is judged at the time it arrived (its record timestamp), so an event the
    workers refused as too old or too far ahead is not counted. Without it, a window
    of a century: every event counts.
    """
    accounts: dict[str, StoredAccount] = {}
    seen: dict[str, Mark] = {}
    engine = Engine(
        card,
        RechargePolicy(timeout=timedelta(days=3650)),
        dedupe or DedupeWindow(36500),
        accounts,
        seen,
    )
    started = datetime.now(UTC)
    applied = 0
    for raw in inputs:
        position = Position(f"{raw.topic}:{raw.partition}", raw.offset)
        now = (
            datetime.fromtimestamp(raw.timestamp / 1000, UTC)
            if dedupe is not None and raw.timestamp >= 0
            else started
        )
        headers = dict(raw.headers)
        force = headers.get(H_FORCE_TOO_OLD) == b"1" and H_REPLAY_OF in headers
        try:
            if raw.topic == names.commands:
                cmd = decode_command(raw.value)
                outcome = engine.command(cmd, raw.topic, now, position, force)
            elif raw.topic == names.calls:
                outcome = engine.usage(read_call(raw.value), raw.topic, now, position, force)
            else:
                event = read_conference(raw.value)
                outcome = engine.usage(event, raw.topic, now, position, force)
        except DecodeError:
            continue
        applied += any(isinstance(out, LedgerOut) for out in outcome.outputs)
    return accounts, applied


def check_ledger(entries: list[dict[str, Any]], report: Report) -> dict[str, Decimal]:
    by_id: dict[str, dict[str, Any]] = {}
    causes: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for e in entries:
        first = by_id.get(e["entry_id"])
        if first is not None:
            if (first["amount"], first["kind"], first["tenant_id"]) != (
                e["amount"],
                e["kind"],
                e["tenant_id"],
            ):
                report.problems.append(
                    f"entry {e['entry_id']} delivered twice with different amounts"
                )
            continue
        by_id[e["entry_id"]] = e
        causes[(e["tenant_id"], e["cause_topic"], e["cause_id"])].add(e["entry_id"])
        amount = Decimal(e["amount"])
        # A debit and an expiry take from the balance; a credit adds to it.
        sums[e["tenant_id"]] += amount if e["kind"] == "credit" else -amount
        if e["kind"] == "expiry":
            report.expiry_entries += 1
            tenant = e["tenant_id"]
            report.expired[tenant] = report.expired.get(tenant, Decimal(0)) + amount
    for (tenant, topic, cause), ids in causes.items():
        if len(ids) > 1:
            report.problems.append(f"{tenant}: cause {topic}/{cause} has {len(ids)} entries")
    for e in by_id.values():
        # An expiry's cause is its lot's credit entry, of the same tenant.
        if e["kind"] == "expiry":
            lot = by_id.get(e["cause_id"])
            if lot is None or lot["kind"] != "credit" or lot["tenant_id"] != e["tenant_id"]:
                report.problems.append(
                    f"{e['tenant_id']}: expiry {e['entry_id']} names no credit entry of the "
                    f"tenant ({e['cause_id']})"
                )
    report.ledger_records = len(entries)
    report.ledger_entries = len(by_id)
    return sums


def check_requests(requests: list[dict[str, Any]], report: Report) -> None:
    """At most one request open per tenant: a new id only after the previous closed.

    Without the commands that close them this can only check that ids are not reused
    with different amounts; the fault tests answer no request, so there each tenant
    must have at most one request id.
    """
    report.recharge_requests = len(requests)
    amounts: dict[str, str] = {}
    for r in requests:
        previous = amounts.setdefault(r["request_id"], r["amount"])
        if previous != r["amount"]:
            report.problems.append(f"request {r['request_id']} re-sent with another amount")


def live_balance(url: str, tenant: str, headers: dict[str, str] | None = None) -> Decimal | None:
    """The live balance a worker reports (`headers`: a bearer under METER_AUTH=jwt)."""
    request = urllib.request.Request(  # noqa: S310
        f"{url.rstrip('/')}/tenants/{tenant}/account", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            return Decimal(json.loads(r.read())["balance"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


async def reconcile(
    bootstrap: str,
    names: TopicNames,
    card: RateCard,
    worker_url: str | None = None,
    dedupe: DedupeWindow | None = None,
    worker_headers: dict[str, str] | None = None,
    **client_options: Any,
) -> Report:
    report = Report()
    inputs: list[Raw] = []
    ends: dict[str, int] = {}
    for topic in (names.commands, names.calls, names.conferencing):
        bounds: dict[int, tuple[int, int]] = {}
        inputs.extend(await read_topic(bootstrap, topic, bounds=bounds, **client_options))
        ends.update({f"{topic}:{p}": end for p, (_start, end) in bounds.items()})
        report.inputs_complete &= not removed_by_retention(topic, bounds, report)
    report.inputs = len(inputs)
    accounts, report.distinct_applied = expected_accounts(card, names, inputs, dedupe)
    bounds = {}
    ledger_records = await read_topic(bootstrap, names.ledger, bounds=bounds, **client_options)
    ledger = [json.loads(r.value) for r in ledger_records if r.value]
    report.ledger_complete = not removed_by_retention(names.ledger, bounds, report)
    sums = check_ledger(ledger, report)
    # An input deleted and re-created: its offsets restarted below what accounts applied.
    values = await read_topic(bootstrap, names.accounts_changelog, **client_options)
    applied = highest_applied(applied_offsets(r.value) for r in values if r.value)
    report.problems.extend(rewound_inputs(applied, ends))
    request_records = await read_topic(bootstrap, names.recharge_requests, **client_options)
    requests = [json.loads(r.value) for r in request_records if r.value]
    check_requests(requests, report)
    complete = report.inputs_complete and report.ledger_complete
    if complete and report.ledger_entries - report.expiry_entries != report.distinct_applied:
        report.problems.append(
            f"the inputs imply {report.distinct_applied} ledger entries, the ledger has "
            f"{report.ledger_entries - report.expiry_entries} besides its "
            f"{report.expiry_entries} expiry entries"
        )

    def implied(tenant: str, stored: StoredAccount | None) -> Decimal:
        """The balance the inputs imply, less what expired (the ledger's expiry entries)."""
        balance = stored.account.balance if stored else Decimal(0)
        return balance - report.expired.get(tenant, Decimal(0))

    if report.ledger_complete:
        # A chain starts at a tenant's first entry: with the ledger's first records
        # deleted by retention it cannot be followed from zero.
        alert_records = await read_topic(bootstrap, names.alerts, **client_options)
        report.problems.extend(
            check_histories(
                (r for r in ledger_records if r.value),
                (r for r in alert_records if r.value),
                (r for r in request_records if r.value),
                {t: implied(t, stored) for t, stored in accounts.items()}
                if report.inputs_complete
                else None,
            )
        )
    for tenant in sorted(set(accounts) | set(sums)):
        expected = implied(tenant, accounts.get(tenant))
        check = TenantCheck(
            tenant,
            expected if report.inputs_complete else None,
            sums.get(tenant, Decimal(0)) if report.ledger_complete else None,
        )
        if worker_url is not None:
            check.live = await asyncio.to_thread(live_balance, worker_url, tenant, worker_headers)
            if check.live is None and expected == 0:
                check.live = expected
        report.tenants.append(check)
    return report


# Fields that say when a copy was written, not what happened: a copy of an output may
# differ from another only in these (docs/guarantees.md).
DELIVERY_FIELDS = {
    "ledger_entry": frozenset({"recorded_at"}),
    "balance_alert": frozenset(),
    "recharge_requested": frozenset({"requested_at"}),
}
_ID_FIELD = {
    "ledger_entry": "entry_id",
    "balance_alert": "alert_id",
    "recharge_requested": "request_id",
}


def _content(output: dict[str, Any]) -> dict[str, Any]:
    delivery = DELIVERY_FIELDS.get(output.get("type", ""), frozenset())
    return {k: v for k, v in output.items() if k not in delivery}


def check_histories(
    ledger: Iterable[Raw],
    alerts: Iterable[Raw] = (),
    requests: Iterable[Raw] = (),
    balances: dict[str, Decimal] | None = None,
) -> list[str]:
    """What a consumer reading the output topics in offset order would find wrong.

    - an `entry_id`, `alert_id` or (`request_id`, `attempt`) seen again with other
      content than its first copy (delivery fields aside);
    - a tenant's ledger whose `balance_after` chain breaks: each entry's balance is the
      previous one plus the signed amount, from an opening balance of zero;
    - a chain that does not end at the tenant's balance (when `balances` is given);
    - an alert or a recharge request naming a balance the account never had (not one of
      its ledger balances, nor zero).
    The records of each topic come in offset order per partition (a tenant's records
    are on one partition), as `read_topic` returns them.
    """
    problems: list[str] = []
    seen: dict[tuple[str, str], dict[str, Any]] = {}

    def first_copy(raw: Raw) -> dict[str, Any] | None:
        """The output if this is its first copy; None for a faithful repeat."""
        output: dict[str, Any] = json.loads(raw.value or b"null")
        kind = output["type"]
        ident = str(output[_ID_FIELD[kind]])
        if kind == "recharge_requested":
            ident += f"#{output['attempt']}"
        first = seen.get((kind, ident))
        if first is None:
            seen[(kind, ident)] = output
            return output
        if _content(first) != _content(output):
            problems.append(
                f"{kind} {ident} seen again with other content "
                f"(at {raw.topic}[{raw.partition}]@{raw.offset}): {_content(first)} "
                f"then {_content(output)}"
            )
        return None

    had: dict[str, set[Decimal]] = defaultdict(lambda: {Decimal(0)})
    last: dict[str, Decimal] = {}
    for raw in ledger:
        entry = first_copy(raw)
        if entry is None:
            continue
        tenant = entry["tenant_id"]
        amount = Decimal(entry["amount"])
        after = Decimal(entry["balance_after"])
        before = last.get(tenant, Decimal(0))
        expected = before + amount if entry["kind"] == "credit" else before - amount
        if after != expected:
            problems.append(
                f"{tenant}: ledger chain breaks at {entry['entry_id']} "
                f"({raw.topic}[{raw.partition}]@{raw.offset}): {before} "
                f"{entry['kind']} {amount} gives {expected}, the entry says {after}"
            )
        last[tenant] = after
        had[tenant].add(after)
    for tenant, balance in sorted((balances or {}).items()):
        if last.get(tenant, Decimal(0)) != balance:
            problems.append(
                f"{tenant}: ledger chain ends at {last.get(tenant, Decimal(0))}, "
                f"the balance is {balance}"
            )
    named = ((alerts, "alert", "alert_id"), (requests, "recharge request", "request_id"))
    for records, what, id_field in named:
        for raw in records:
            output = first_copy(raw)
            if output is not None and Decimal(output["balance"]) not in had[output["tenant_id"]]:
                problems.append(
                    f"{output['tenant_id']}: {what} {output[id_field]} names a balance the "
                    f"account never had ({output['balance']})"
                )
    return problems


def removed_by_retention(topic: str, bounds: Mapping[int, tuple[int, int]], report: Report) -> bool:
    """Note each partition of `topic` whose first records are gone; True if any is."""
    lost = False
    for partition, (start, _end) in sorted(bounds.items()):
        if start > 0:
            lost = True
            report.removed.append(
                f"{topic} partition {partition}: offsets 0 to {start - 1} already deleted "
                "(retention)"
            )
    return lost
