"""Traffic simulator for local runs, demos and soak tests.

Plays the systems around the processor against the topics fixed in CONTRACT.md:
telephony and conferencing (usage events), admins (manual top-ups and auto-recharge
settings) and the billing system (answers every recharge request with funds or a
failure). It talks to Kafka with aiokafka directly, so it exercises the processor's
edges the way a foreign system would, not through faust's own serialisation.

Everything that decides *what* to send is pure and seeded (``generate_tenants``,
``make_*``, ``TrafficGenerator``, ``BillingBook``, ``DuplicateScheduler``), so the
unit tests need no broker; ``Simulator`` only adds pacing and I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import logging
import math
import os
import random
import signal
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient

from processor.kafka.wire import dumps

__all__ = [
    "BILLING_GROUP_ID",
    "EXPECTED_REJECT_REASON",
    "GARBAGE_KINDS",
    "AutoRecharge",
    "BillingBook",
    "DuplicateScheduler",
    "OutRecord",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "TenantProfile",
    "TokenBucket",
    "TrafficGenerator",
    "encode",
    "generate_tenants",
    "main",
    "make_auto_recharge_configured",
    "make_call_usage",
    "make_conference_usage",
    "make_funds_added",
    "make_garbage",
    "make_recharge_failed",
    "rfc3339",
    "run_until_signalled",
    "wait_for_topics",
]

log = logging.getLogger(__name__)

# Unprefixed topic names, exactly as in CONTRACT.md.
USAGE_CALLS: Final = "usage.calls"
USAGE_CONFERENCING: Final = "usage.conferencing"
COMMANDS: Final = "credits.commands"
RECHARGE_REQUESTS: Final = "credits.recharge-requests"
SIMULATOR_TOPICS: Final = (USAGE_CALLS, USAGE_CONFERENCING, COMMANDS, RECHARGE_REQUESTS)

BILLING_GROUP_ID: Final = "credits-meter-simulator-billing"

CENT: Final = Decimal("0.01")

# Kinds of bad record the simulator sends, and the rejection reason an operator
# should find for each in credits.rejected (the processor may use a finer code for
# the invalid_event ones; these are the contract's codes).
GarbageKind = Literal[
    "truncated_json",
    "invalid_utf8",
    "missing_field",
    "negative_duration",
    "unknown_call_type",
    "bad_number",
    "no_rate",
    "currency_mismatch",
]
GARBAGE_KINDS: Final[tuple[GarbageKind, ...]] = (
    "truncated_json",
    "invalid_utf8",
    "missing_field",
    "negative_duration",
    "unknown_call_type",
    "bad_number",
    "no_rate",
    "currency_mismatch",
)
EXPECTED_REJECT_REASON: Final[Mapping[GarbageKind, str]] = {
    "truncated_json": "invalid_json",
    "invalid_utf8": "invalid_json",
    "missing_field": "invalid_event",
    "negative_duration": "invalid_event",
    "unknown_call_type": "invalid_event",
    "bad_number": "invalid_event",
    "no_rate": "no_rate",
    "currency_mismatch": "currency_mismatch",
}

# +999 is an unassigned country code, so no rate card can price it.
NO_RATE_PREFIX: Final = "+999"

FAILURE_REASONS: Final = (
    "card_declined",
    "insufficient_funds",
    "expired_card",
    "payment_method_missing",
    "processor_unavailable",
)


# --------------------------------------------------------------------------- time


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(ts: datetime) -> str:
    """RFC 3339 in UTC with a "Z", millisecond precision (what telephony CDRs carry)."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def money(value: Decimal) -> str:
    """Two-decimal string: admins and billing deal in cents, never in floats."""
    return format(value.quantize(CENT), "f")


def cents(amount: int) -> Decimal:
    return (Decimal(amount) / 100).quantize(CENT)


# ------------------------------------------------------------------ phone numbers

# Per country: (code, weight as a call destination, national-number generators).
# Each generator returns the digits after the country code. Ranges follow the
# real numbering plans closely enough that the example rate card's mobile
# prefixes (+447, +4917, +336, +8190, ...) get their share of traffic.


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


_NANP_AREA_CODES: Final = (
    "212", "213", "206", "303", "305", "312", "404", "415", "512", "617",
    "646", "702", "713", "718", "773", "818", "916", "416", "514", "604",
)  # fmt: skip


def _nanp(rng: random.Random) -> str:
    # Exchange codes start 2-9 and 555 is fictional-only, so avoid it.
    exchange = str(rng.randint(200, 999))
    if exchange == "555":
        exchange = "556"
    return rng.choice(_NANP_AREA_CODES) + exchange + _digits(rng, 4)


NationalGen = Callable[[random.Random], str]

_COUNTRIES: Final[dict[str, tuple[str, float, tuple[NationalGen, ...]]]] = {
    "US": ("1", 30.0, (_nanp,)),
    "GB": (
        "44",
        14.0,
        (
            lambda r: "20" + _digits(r, 8),
            lambda r: "161" + _digits(r, 7),
            lambda r: "131" + _digits(r, 7),
            lambda r: "7" + r.choice("1234579") + _digits(r, 8),
            lambda r: "7" + r.choice("1234579") + _digits(r, 8),
        ),
    ),
    "DE": (
        "49",
        8.0,
        (
            lambda r: "30" + _digits(r, 8),
            lambda r: "89" + _digits(r, 8),
            lambda r: "1" + r.choice("567") + r.choice("0123456789") + _digits(r, 8),
        ),
    ),
    "FR": (
        "33",
        6.0,
        (lambda r: "1" + _digits(r, 8), lambda r: r.choice("67") + _digits(r, 8)),
    ),
    "ES": (
        "34",
        4.0,
        (lambda r: "91" + _digits(r, 7), lambda r: r.choice("67") + _digits(r, 8)),
    ),
    "IT": (
        "39",
        4.0,
        (lambda r: "02" + _digits(r, 8), lambda r: "3" + _digits(r, 9)),
    ),
    "NL": (
        "31",
        4.0,
        (lambda r: "20" + _digits(r, 7), lambda r: "6" + _digits(r, 8)),
    ),
    "AU": (
        "61",
        4.0,
        (lambda r: r.choice("23") + _digits(r, 8), lambda r: "4" + _digits(r, 8)),
    ),
    "JP": (
        "81",
        4.0,
        (lambda r: "3" + _digits(r, 8), lambda r: r.choice(("70", "80", "90")) + _digits(r, 8)),
    ),
    "IN": (
        "91",
        5.0,
        (
            lambda r: r.choice(("11", "22")) + _digits(r, 8),
            lambda r: r.choice("6789") + _digits(r, 9),
        ),
    ),
    "MX": ("52", 3.0, (lambda r: r.choice(("55", "33", "81")) + _digits(r, 8),)),
    "BR": (
        "55",
        3.0,
        (lambda r: "21" + _digits(r, 8), lambda r: "119" + _digits(r, 8)),
    ),
    "SG": ("65", 3.0, (lambda r: r.choice("689") + _digits(r, 7),)),
    "IE": (
        "353",
        3.0,
        (lambda r: "1" + _digits(r, 7), lambda r: "8" + r.choice("35679") + _digits(r, 7)),
    ),
}

# Conference bridges only dial out where the example card's conferencing_dial_out
# table has a rate; dial-outs elsewhere would all land in credits.rejected as
# no_rate and drown the deliberate garbage.
_CONFERENCE_DIAL_OUT_COUNTRIES: Final = ("US", "GB", "IE", "DE", "FR", "AU", "JP")

_HOME_COUNTRY_WEIGHTS: Final = {
    "US": 14, "GB": 7, "DE": 3, "FR": 2, "ES": 1, "IT": 1, "NL": 2,
    "AU": 2, "JP": 1, "IN": 1, "MX": 1, "BR": 1, "SG": 1, "IE": 2,
}  # fmt: skip


def random_number(rng: random.Random, country: str) -> str:
    code, _, gens = _COUNTRIES[country]
    return "+" + code + rng.choice(gens)(rng)


def random_destination(
    rng: random.Random, home: str, countries: Sequence[str] | None = None
) -> str:
    """A callee: mostly domestic, the rest spread by international traffic share."""
    pool = list(countries) if countries is not None else list(_COUNTRIES)
    if home in pool and rng.random() < 0.65:
        return random_number(rng, home)
    weights = [_COUNTRIES[c][1] for c in pool]
    return random_number(rng, rng.choices(pool, weights=weights)[0])


def random_toll_free(rng: random.Random, home: str) -> str:
    if home in ("GB", "IE") or (home not in ("US",) and rng.random() < 0.3):
        return "+44800" + _digits(rng, 6)
    # NANP toll-free: 800/888 then an exchange starting 2-9.
    return "+1" + rng.choice(("800", "888")) + str(rng.randint(2, 9)) + _digits(rng, 6)


# ------------------------------------------------------------------------ tenants


@dataclass(frozen=True, slots=True)
class AutoRecharge:
    enabled: bool
    recharge_amount: Decimal
    trigger_balance: Decimal


@dataclass(frozen=True, slots=True)
class TenantProfile:
    tenant_id: str
    home: str  # ISO 3166 alpha-2 of the tenant's main office; shapes its traffic
    weight: float  # relative share of usage traffic (Zipf-like across tenants)
    dids: tuple[str, ...]  # the tenant's own numbers: caller ids on outbound calls
    toll_free: tuple[str, ...]  # the tenant's toll-free numbers (support lines, bridges)
    initial_funds: Decimal
    auto_recharge: AutoRecharge | None  # None: the admin never configured it


_TENANT_NAMES: Final = (
    "acme-corp", "globex", "initech.eu", "umbrella-labs", "hooli", "stark-industries",
    "wayne-enterprises", "wonka.co.uk", "cyberdyne", "soylent", "tyrell-corp", "oscorp",
    "massive-dynamic", "vandelay-industries", "dunder-mifflin", "pied-piper",
    "aperture-science", "black-mesa", "blue-sun", "monarch-solutions", "nakatomi.jp",
    "sterling-cooper", "prestige-worldwide", "bluth-company", "gringotts_bank",
    "cogswell:cogs", "spacely-sprockets", "rekall", "weyland-yutani", "virtucon",
    "wernham-hogg.uk", "kramerica", "oceanic-airlines", "ollivanders", "duff-beer",
    "abstergo", "genco-olive-oil", "yoyodyne", "zorg.industries", "tessier-ashpool",
    "bubba-gump", "mom-corp", "planet-express", "octan", "ingen", "los-pollos.mx",
    "roxxon", "good-burger", "dharma_initiative", "krusty-krab",
)  # fmt: skip


def generate_tenants(n: int, rng: random.Random) -> list[TenantProfile]:
    """``n`` tenants with realistic ids and settings; deterministic for a seeded ``rng``."""
    if n < 1:
        raise ValueError("need at least one tenant")
    names = list(_TENANT_NAMES)
    rng.shuffle(names)
    ids = [
        names[i % len(names)] + ("" if i < len(names) else f"-{i // len(names) + 1}")
        for i in range(n)
    ]
    # Zipf-like activity: a few tenants make most calls, like real customer bases.
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    homes = list(_HOME_COUNTRY_WEIGHTS)
    home_weights = list(_HOME_COUNTRY_WEIGHTS.values())
    tenants: list[TenantProfile] = []
    for tenant_id, rank in zip(ids, ranks, strict=True):
        home = rng.choices(homes, weights=home_weights)[0]
        dids = tuple(random_number(rng, home) for _ in range(rng.randint(1, 6)))
        toll_free = tuple(random_toll_free(rng, home) for _ in range(rng.randint(1, 2)))
        # Mostly round top-ups, as people type them; a few odd amounts.
        if rng.random() < 0.8:
            funds = Decimal(rng.choice((5, 10, 20, 25, 50, 75, 100, 150, 200))).quantize(CENT)
        else:
            funds = cents(rng.randint(500, 20000))
        roll = rng.random()
        auto: AutoRecharge | None
        if roll < 0.7:
            auto = AutoRecharge(
                enabled=True,
                recharge_amount=Decimal(rng.randrange(20, 101, 5)).quantize(CENT),
                trigger_balance=Decimal(rng.choice((5, 10, 15, 20, 25))).quantize(CENT),
            )
        elif roll < 0.85:
            auto = AutoRecharge(
                enabled=False,
                recharge_amount=Decimal(rng.randrange(20, 101, 10)).quantize(CENT),
                trigger_balance=Decimal(rng.choice((5, 10))).quantize(CENT),
            )
        else:
            auto = None
        tenants.append(
            TenantProfile(
                tenant_id=tenant_id,
                home=home,
                weight=1.0 / rank**1.1,
                dids=dids,
                toll_free=toll_free,
                initial_funds=funds,
                auto_recharge=auto,
            )
        )
    return tenants


# ------------------------------------------------------------------------- events


def _duration(rng: random.Random, *, unanswered: float, median: float) -> int:
    if rng.random() < unanswered:
        return 0
    # Log-normal: many calls of a few minutes and a long tail, capped at an hour.
    return max(1, min(3600, round(rng.lognormvariate(math.log(median), 1.0))))


def _hex_id(rng: random.Random, bits: int = 64) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


CallType = Literal["outbound", "toll_free_inbound"]
LegType = Literal["dial_out", "toll_free_dial_in"]


def make_call_usage(
    tenant: TenantProfile,
    rng: random.Random,
    now: datetime,
    event_id: str,
    call_type: CallType | None = None,
) -> dict[str, Any]:
    """A ``CallUsage`` (usage.calls): mostly outbound, some to the tenant's toll-free lines."""
    if call_type is None:
        call_type = "outbound" if rng.random() < 0.88 else "toll_free_inbound"
    event: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant.tenant_id,
        "occurred_at": rfc3339(now),
        "call_id": "call-" + _hex_id(rng, 96),
    }
    if call_type == "outbound":
        if rng.random() < 0.8:  # trunk calls carry no user
            event["user_id"] = f"u{rng.randint(1000, 1999)}"
        event["call_type"] = "outbound"
        event["source_number"] = rng.choice(tenant.dids)
        event["destination_number"] = random_destination(rng, tenant.home)
        event["duration_seconds"] = _duration(rng, unanswered=0.15, median=120.0)
    else:
        event["call_type"] = "toll_free_inbound"
        event["source_number"] = random_destination(rng, tenant.home)
        event["destination_number"] = rng.choice(tenant.toll_free)
        # Callers to a toll-free line hang up unanswered less often (IVR picks up).
        event["duration_seconds"] = _duration(rng, unanswered=0.05, median=240.0)
    return event


def make_conference_usage(
    tenant: TenantProfile,
    rng: random.Random,
    now: datetime,
    event_id: str,
    leg_type: LegType | None = None,
) -> dict[str, Any]:
    """A ``ConferenceUsage`` (usage.conferencing) leg."""
    if leg_type is None:
        leg_type = "dial_out" if rng.random() < 0.6 else "toll_free_dial_in"
    event: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant.tenant_id,
        "occurred_at": rfc3339(now),
        # A small pool per tenant, so several legs share a conference.
        "conference_id": f"conf-{tenant.tenant_id}-{rng.randint(1, 40):03d}",
    }
    if rng.random() < 0.7:
        event["participant_id"] = "p-" + _hex_id(rng, 32)
    event["leg_type"] = leg_type
    if leg_type == "dial_out":
        event["number"] = random_destination(rng, tenant.home, _CONFERENCE_DIAL_OUT_COUNTRIES)
        event["duration_seconds"] = _duration(rng, unanswered=0.1, median=600.0)
    else:
        event["number"] = rng.choice(tenant.toll_free)
        event["duration_seconds"] = _duration(rng, unanswered=0.02, median=900.0)
    return event


def make_funds_added(
    tenant_id: str,
    amount: Decimal | str,
    currency: str,
    now: datetime,
    command_id: str,
    *,
    source: Literal["manual", "auto_recharge"] = "manual",
    recharge_request_id: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    # A str amount is passed through untouched: billing echoes the request's amount.
    command: dict[str, Any] = {
        "type": "funds_added",
        "command_id": command_id,
        "tenant_id": tenant_id,
        "occurred_at": rfc3339(now),
        "amount": amount if isinstance(amount, str) else money(amount),
        "currency": currency,
        "source": source,
    }
    if source == "auto_recharge":
        if recharge_request_id is None:
            raise ValueError("auto_recharge funds need the recharge_request_id")
        command["recharge_request_id"] = recharge_request_id
        if attempt is not None:
            command["attempt"] = attempt
    return command


def make_auto_recharge_configured(
    tenant_id: str, settings: AutoRecharge, now: datetime, command_id: str
) -> dict[str, Any]:
    return {
        "type": "auto_recharge_configured",
        "command_id": command_id,
        "tenant_id": tenant_id,
        "occurred_at": rfc3339(now),
        "enabled": settings.enabled,
        "recharge_amount": money(settings.recharge_amount),
        "trigger_balance": money(settings.trigger_balance),
    }


def make_recharge_failed(
    tenant_id: str,
    recharge_request_id: str,
    reason: str,
    now: datetime,
    command_id: str,
    attempt: int | None = None,
) -> dict[str, Any]:
    command: dict[str, Any] = {
        "type": "recharge_failed",
        "command_id": command_id,
        "tenant_id": tenant_id,
        "occurred_at": rfc3339(now),
        "recharge_request_id": recharge_request_id,
        "reason": reason,
    }
    if attempt is not None:
        # Which attempt failed: a late answer can then never fail a later attempt.
        command["attempt"] = attempt
    return command


def encode(value: Mapping[str, Any]) -> bytes:
    # Compact: the bench holds a million of these before producing them.
    return dumps(value)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce; ``topic`` is unprefixed (the prefix is applied on send)."""

    topic: str
    key: bytes | None
    value: bytes


def make_garbage(
    kind: GarbageKind,
    tenant: TenantProfile,
    rng: random.Random,
    now: datetime,
    event_id: str,
    currency: str = "USD",
) -> OutRecord:
    """A record the processor must route to credits.rejected (see EXPECTED_REJECT_REASON)."""
    key = tenant.tenant_id.encode()
    if kind == "currency_mismatch":
        wrong = "EUR" if currency != "EUR" else "GBP"
        cmd = make_funds_added(tenant.tenant_id, Decimal("25.00"), wrong, now, event_id)
        return OutRecord(COMMANDS, key, encode(cmd))
    if kind == "no_rate" and rng.random() < 0.3:
        leg = make_conference_usage(tenant, rng, now, event_id, "dial_out")
        leg["number"] = NO_RATE_PREFIX + _digits(rng, rng.randint(6, 9))
        return OutRecord(USAGE_CONFERENCING, key, encode(leg))
    call = make_call_usage(tenant, rng, now, event_id, "outbound")
    if kind == "truncated_json":
        raw = encode(call)
        # Any strict prefix of a JSON object lacks its closing brace: never parseable.
        return OutRecord(USAGE_CALLS, key, raw[: rng.randint(1, len(raw) - 1)])
    if kind == "invalid_utf8":
        # A lone continuation byte and an overlong lead: invalid in any UTF-8 decoder.
        raw = encode(call).replace(
            tenant.tenant_id.encode(), tenant.tenant_id.encode() + b"\x80\xc0", 1
        )
        return OutRecord(USAGE_CALLS, key, raw)
    if kind == "missing_field":
        required = ("event_id", "occurred_at", "call_id", "call_type",
                    "source_number", "destination_number", "duration_seconds")  # fmt: skip
        del call[rng.choice(required)]
    elif kind == "negative_duration":
        call["duration_seconds"] = -5
    elif kind == "unknown_call_type":
        call["call_type"] = rng.choice(("inbound", "video", "sms", "OUTBOUND"))
    elif kind == "bad_number":
        # National format without "+", or a leading zero after it: not E.164.
        call["destination_number"] = rng.choice(("0044", "+0", "00", "+44 ")) + _digits(rng, 9)
    elif kind == "no_rate":
        call["destination_number"] = NO_RATE_PREFIX + _digits(rng, rng.randint(6, 9))
    else:  # pragma: no cover - Literal is exhaustive
        raise ValueError(f"unknown garbage kind {kind!r}")
    return OutRecord(USAGE_CALLS, key, encode(call))


# ------------------------------------------------------------------ duplicates


class DuplicateScheduler:
    """Re-sends a share of records verbatim a few seconds later, as at-least-once
    telephony collectors do after a timeout."""

    def __init__(
        self,
        ratio: float,
        rng: random.Random,
        *,
        min_delay: float = 0.5,
        max_delay: float = 10.0,
        capacity: int = 100_000,
    ) -> None:
        self.ratio = ratio
        self._rng = rng
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._capacity = capacity
        self._heap: list[tuple[float, int, OutRecord]] = []
        self._seq = 0

    def offer(self, record: OutRecord, now: float) -> bool:
        """Maybe schedule ``record`` for a re-send; ``now`` is a monotonic clock."""
        if self.ratio <= 0 or self._rng.random() >= self.ratio:
            return False
        if len(self._heap) >= self._capacity:
            return False  # bounded memory if sending stalls
        self._seq += 1
        due = now + self._rng.uniform(self._min_delay, self._max_delay)
        heapq.heappush(self._heap, (due, self._seq, record))
        return True

    def due(self, now: float) -> list[OutRecord]:
        out: list[OutRecord] = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def drain(self) -> list[OutRecord]:
        out = [item[2] for item in sorted(self._heap)]
        self._heap.clear()
        return out

    def __len__(self) -> int:
        return len(self._heap)


# ----------------------------------------------------------------------- billing


def _answer_id(kind: str, request_id: str, attempt: int | None = None) -> str:
    suffix = "" if attempt is None else f"-{attempt}"
    cid = f"billing-{kind}-{request_id}{suffix}"
    if len(cid) <= 128 and cid.isascii() and cid.isprintable():
        return cid
    # The contract caps command ids at 128 printable ASCII characters.
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:48]
    return f"billing-{kind}-{digest}{suffix}"


class BillingBook:
    """The billing system's memory: charges each request_id at most once.

    Requests are re-delivered (consumer restarts, processor replays after a crash,
    retries with ``attempt`` + 1); a real payment provider must not charge a card
    twice for one request, so once a request_id was paid it is never answered again,
    and one (request_id, attempt) gets exactly one answer. The funds' command_id is
    derived from the request_id alone, so even a billing restart that forgot this
    book produces a duplicate the processor recognises, not a second credit.
    """

    def __init__(
        self,
        *,
        failure_ratio: float,
        rng: random.Random,
        capacity: int = 200_000,
    ) -> None:
        self.failure_ratio = failure_ratio
        self._rng = rng
        self._capacity = capacity
        self._paid: OrderedDict[str, None] = OrderedDict()
        self._answered: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.ignored_paid = 0
        self.ignored_repeat = 0
        self.ignored_invalid = 0

    def is_paid(self, request_id: str) -> bool:
        return request_id in self._paid

    def answer(self, request: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
        """The command answering ``request`` (a decoded RechargeRequested), or None
        when it must not be answered (already paid, already answered, malformed)."""
        parsed = _parse_request(request)
        if parsed is None:
            self.ignored_invalid += 1
            return None
        request_id, tenant_id, amount, currency, attempt = parsed
        if request_id in self._paid:
            self.ignored_paid += 1
            return None
        if (request_id, attempt) in self._answered:
            self.ignored_repeat += 1
            return None
        self._remember(self._answered, (request_id, attempt))
        if self._rng.random() < self.failure_ratio:
            return make_recharge_failed(
                tenant_id,
                request_id,
                self._rng.choice(FAILURE_REASONS),
                now,
                _answer_id("failed", request_id, attempt),
                attempt,
            )
        self._remember(self._paid, request_id)
        return make_funds_added(
            tenant_id,
            amount,
            currency,
            now,
            _answer_id("paid", request_id),
            source="auto_recharge",
            recharge_request_id=request_id,
            attempt=attempt,
        )

    def _remember(self, book: OrderedDict[Any, None], item: Any) -> None:
        book[item] = None
        if len(book) > self._capacity:
            book.popitem(last=False)


def _parse_request(request: Mapping[str, Any]) -> tuple[str, str, str, str, int] | None:
    if request.get("type") != "recharge_requested":
        return None
    request_id = request.get("request_id")
    tenant_id = request.get("tenant_id")
    amount = request.get("amount")
    currency = request.get("currency")
    attempt = request.get("attempt")
    if not (isinstance(request_id, str) and request_id):
        return None
    if not (isinstance(tenant_id, str) and tenant_id):
        return None
    if not isinstance(currency, str) or not isinstance(amount, str):
        return None
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        return None
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return None
    if not value.is_finite() or value <= 0:
        return None
    return request_id, tenant_id, amount, currency, attempt


# ------------------------------------------------------------------------ config


@dataclass(slots=True)
class SimulatorConfig:
    bootstrap: str
    topic_prefix: str = ""
    tenants: int = 36
    rate_per_second: float = 20.0  # usage events per second, all tenants together
    duplicate_ratio: float = 0.03
    failure_ratio: float = 0.15  # share of recharge requests answered recharge_failed
    garbage_ratio: float = 0.01  # share of traffic records that are deliberately bad
    billing_delay_seconds: float = 2.0
    seed: int | None = None
    duration_seconds: float | None = None  # None: until cancelled
    currency: str = "USD"
    # Additions beyond the brief, all with harmless defaults:
    miskey_ratio: float = 0.01  # valid usage keyed by another tenant or with no key
    admin_actions_per_minute: float = 4.0  # manual top-ups and settings changes
    conference_share: float = 0.25  # share of usage on usage.conferencing
    billing_group_id: str | None = None  # None: prefix + BILLING_GROUP_ID
    # Waiting for the processor to create the topics avoids auto-creating them with
    # the broker's default partition count. None: do not wait.
    topic_wait_seconds: float | None = 60.0
    setup: bool = True  # send initial funds and settings for every tenant
    stats_log_seconds: float | None = None  # log stats periodically (standalone runs)
    # SASL/TLS keyword arguments for every Kafka client (processor.kafka.options).
    client_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("duplicate_ratio", "failure_ratio", "garbage_ratio", "miskey_ratio",
                     "conference_share"):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.tenants < 1:
            raise ValueError("tenants must be >= 1")
        if self.rate_per_second <= 0:
            raise ValueError("rate_per_second must be > 0")
        if self.billing_delay_seconds < 0:
            raise ValueError("billing_delay_seconds must be >= 0")

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @property
    def group_id(self) -> str:
        return self.billing_group_id or self.topic_prefix + BILLING_GROUP_ID


@dataclass(slots=True)
class SimulatorStats:
    """Counters of what was sent; ``commands_sent`` counts admin commands (initial
    setup, top-ups, settings), billing answers are ``funds_answered`` and
    ``failures_answered``."""

    usage_sent: int = 0
    duplicates_sent: int = 0
    commands_sent: int = 0
    garbage_sent: int = 0
    recharge_requests_seen: int = 0
    funds_answered: int = 0
    failures_answered: int = 0
    miskeyed_sent: int = 0
    requests_ignored: int = 0  # re-deliveries and paid requests billing did not answer
    send_errors: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "started_at"}

    def summary(self) -> str:
        return (
            f"usage {self.usage_sent} dup {self.duplicates_sent} garbage {self.garbage_sent}"
            f" miskeyed {self.miskeyed_sent} commands {self.commands_sent}"
            f" recharge-requests {self.recharge_requests_seen} paid {self.funds_answered}"
            f" failed {self.failures_answered} ignored {self.requests_ignored}"
            f" send-errors {self.send_errors}"
        )


# ----------------------------------------------------------------------- traffic


class TrafficGenerator:
    """Decides every record the simulated telephony, conferencing and admins send.

    Pure apart from its own seeded state, so tests drive it without a broker. Ids
    carry a per-run tag: re-running with the same seed against the same topics
    must not turn the whole run into duplicates of the previous one.
    """

    def __init__(self, config: SimulatorConfig, rng: random.Random, run_tag: str) -> None:
        self.config = config
        self.rng = rng
        self.run_tag = run_tag
        self.tenants = generate_tenants(config.tenants, rng)
        self._cum_weights: list[float] = []
        total = 0.0
        for t in self.tenants:
            total += t.weight
            self._cum_weights.append(total)
        self.settings: dict[str, AutoRecharge | None] = {
            t.tenant_id: t.auto_recharge for t in self.tenants
        }
        self._seq = 0

    def next_id(self, kind: str) -> str:
        self._seq += 1
        return f"{kind}-{self.run_tag}-{self._seq:07d}"

    def pick_tenant(self) -> TenantProfile:
        return self.rng.choices(self.tenants, cum_weights=self._cum_weights)[0]

    def setup_records(self, now: datetime) -> list[OutRecord]:
        """Initial manual top-up for every tenant, then its auto-recharge settings."""
        out: list[OutRecord] = []
        for t in self.tenants:
            key = t.tenant_id.encode()
            funds = make_funds_added(
                t.tenant_id, t.initial_funds, self.config.currency, now, self.next_id("adm")
            )
            out.append(OutRecord(COMMANDS, key, encode(funds)))
            if t.auto_recharge is not None:
                cmd = make_auto_recharge_configured(
                    t.tenant_id, t.auto_recharge, now, self.next_id("adm")
                )
                out.append(OutRecord(COMMANDS, key, encode(cmd)))
        return out

    def next_usage(self, now: datetime) -> tuple[OutRecord, bool]:
        """One valid usage record and whether it was deliberately mis-keyed."""
        tenant = self.pick_tenant()
        event_id = self.next_id("ev")
        if self.rng.random() < self.config.conference_share:
            topic, event = (
                USAGE_CONFERENCING,
                make_conference_usage(tenant, self.rng, now, event_id),
            )
        else:
            topic, event = USAGE_CALLS, make_call_usage(tenant, self.rng, now, event_id)
        key: bytes | None = tenant.tenant_id.encode()
        miskeyed = self.rng.random() < self.config.miskey_ratio
        if miskeyed:
            # The contract processes these for the body's tenant; prove nobody drops them.
            other = self.rng.choice(self.tenants).tenant_id
            key = None if other == tenant.tenant_id or self.rng.random() < 0.5 else other.encode()
        return OutRecord(topic, key, encode(event)), miskeyed

    def next_garbage(self, now: datetime, kind: GarbageKind | None = None) -> OutRecord:
        tenant = self.pick_tenant()
        chosen: GarbageKind = kind if kind is not None else self.rng.choice(GARBAGE_KINDS)
        return make_garbage(
            chosen,
            tenant,
            self.rng,
            now,
            self.next_id("bad"),
            self.config.currency,
        )

    def next_traffic(
        self, now: datetime
    ) -> tuple[OutRecord, Literal["usage", "garbage", "miskeyed"]]:
        if self.rng.random() < self.config.garbage_ratio:
            return self.next_garbage(now), "garbage"
        record, miskeyed = self.next_usage(now)
        return record, "miskeyed" if miskeyed else "usage"

    def admin_action(self, now: datetime) -> OutRecord:
        """An admin tops up by hand or changes auto-recharge settings."""
        rng = self.rng
        # Admins look after the tenants that burn money, so weight by activity.
        tenant = self.pick_tenant()
        key = tenant.tenant_id.encode()
        current = self.settings.get(tenant.tenant_id)
        manual_share = 0.8 if current is None or not current.enabled else 0.4
        if rng.random() < manual_share:
            amount = Decimal(rng.choice((10, 20, 25, 50, 100, 150))).quantize(CENT)
            cmd = make_funds_added(
                tenant.tenant_id, amount, self.config.currency, now, self.next_id("adm")
            )
            return OutRecord(COMMANDS, key, encode(cmd))
        if current is not None and current.enabled and rng.random() < 0.25:
            new = AutoRecharge(False, current.recharge_amount, current.trigger_balance)
        else:
            new = AutoRecharge(
                enabled=True,
                recharge_amount=Decimal(rng.randrange(20, 101, 5)).quantize(CENT),
                trigger_balance=Decimal(rng.choice((5, 10, 15, 20, 25))).quantize(CENT),
            )
        self.settings[tenant.tenant_id] = new
        cmd = make_auto_recharge_configured(tenant.tenant_id, new, now, self.next_id("adm"))
        return OutRecord(COMMANDS, key, encode(cmd))


class TokenBucket:
    """Paces sends: hands out whole tokens at ``rate`` per second, sleeping (never
    spinning) while none is available. Batches at high rates so the cost is one
    sleep per batch, not per event."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        # A tenth of a second of traffic: absorbs sleep overshoot without bursts.
        self.capacity = max(1.0, burst if burst is not None else rate / 10)
        self._clock = clock
        self._tokens = 1.0
        self._last = clock()

    def try_take(self, max_tokens: int) -> tuple[int, float]:
        """(tokens taken, seconds to wait before one is available when none was)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        n = min(int(self._tokens), max_tokens)
        if n >= 1:
            self._tokens -= n
            return n, 0.0
        return 0, (1.0 - self._tokens) / self.rate

    async def take(self, max_tokens: int = 1_000) -> int:
        while True:
            n, wait = self.try_take(max_tokens)
            if n:
                return n
            await asyncio.sleep(wait)


# ----------------------------------------------------------------------- kafka I/O


async def wait_for_topics(
    bootstrap: str,
    topics: Iterable[str],
    wait_seconds: float,
    poll: float = 1.0,
    **client_options: Any,
) -> set[str]:
    """Wait until ``topics`` exist; returns those still missing after ``wait_seconds``.

    Asks for *all* topics' metadata: a metadata request naming a topic would make a
    broker with auto.create.topics.enable create it with the default partitions.
    """
    wanted = set(topics)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **client_options)
    await client.bootstrap()
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            cluster = await client.fetch_all_metadata()
            missing = {t for t in wanted if not cluster.partitions_for_topic(t)}
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(poll)
    finally:
        await client.close()


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(64)
        # Traffic and billing get separate streams so billing's pace (set by the
        # processor's requests) does not change the traffic a seed produces.
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self._billing_rng = random.Random(seed ^ 0x5EED)  # noqa: S311
        self.run_tag = uuid.uuid4().hex[:8]
        self.traffic = TrafficGenerator(config, self._rng, self.run_tag)
        self.billing = BillingBook(failure_ratio=config.failure_ratio, rng=self._billing_rng)
        self.duplicates = DuplicateScheduler(config.duplicate_ratio, self._rng)
        self.stats = SimulatorStats()
        self._answers: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self._billing_ready = asyncio.Event()
        self._error_logged = 0

    @property
    def tenants(self) -> list[TenantProfile]:
        return self.traffic.tenants

    async def run(self) -> None:
        cfg = self.config
        if cfg.topic_wait_seconds is not None:
            wanted = [cfg.topic(t) for t in SIMULATOR_TOPICS]
            missing = await wait_for_topics(
                cfg.bootstrap, wanted, cfg.topic_wait_seconds, **cfg.client_options
            )
            if missing:
                raise RuntimeError(
                    f"topics {sorted(missing)} do not exist after {cfg.topic_wait_seconds}s;"
                    " start the processor first (it creates them), or skip this check with"
                    " --topic-wait -1 (topic_wait_seconds=None)"
                )
        producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            client_id="credits-meter-simulator",
            acks="all",
            # Only deliberate duplicates: producer retries must not add their own.
            enable_idempotence=True,
            linger_ms=5,
            **cfg.client_options,
        )
        consumer = AIOKafkaConsumer(
            cfg.topic(RECHARGE_REQUESTS),
            bootstrap_servers=cfg.bootstrap,
            client_id="credits-meter-simulator-billing",
            group_id=cfg.group_id,
            auto_offset_reset="latest",
            enable_auto_commit=True,
            # A transactional processor may abort a request; billing must not pay it.
            isolation_level="read_committed",
            **cfg.client_options,
        )
        await producer.start()
        try:
            await consumer.start()
            try:
                await self._run_tasks(producer, consumer)
            finally:
                await consumer.stop()
        finally:
            with contextlib.suppress(Exception):
                await producer.flush()
            await producer.stop()
            log.info("simulator stopped: %s", self.stats.summary())

    async def _run_tasks(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
        billing_in = asyncio.create_task(self._billing_consume(consumer), name="sim-billing-in")
        billing_out = asyncio.create_task(self._billing_answer(producer), name="sim-billing-out")
        traffic = asyncio.create_task(self._traffic(producer), name="sim-traffic")
        tasks = [billing_in, billing_out, traffic]
        if self.config.stats_log_seconds:
            tasks.append(asyncio.create_task(self._log_stats(self.config.stats_log_seconds)))
        try:
            done, _ = await asyncio.wait(
                tasks, timeout=self.config.duration_seconds, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                task.result()  # re-raise a crashed loop
            # Duration elapsed: stop making traffic, but answer the requests billing
            # already accepted, or they would sit unanswered until the processor's
            # recharge timeout.
            traffic.cancel()
            billing_in.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._answers.join(), timeout=self.config.billing_delay_seconds + 10
                )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, producer: AIOKafkaProducer, record: OutRecord) -> None:
        # send() only enqueues into the batch; delivery is checked in a callback so
        # the loop never waits for one round trip per record.
        fut = await producer.send(
            self.config.topic(record.topic), value=record.value, key=record.key
        )
        fut.add_done_callback(self._on_delivery)

    def _on_delivery(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.stats.send_errors += 1
            if self._error_logged < 10:
                self._error_logged += 1
                log.warning("simulator: delivery failed: %r", exc)

    async def _traffic(self, producer: AIOKafkaProducer) -> None:
        cfg = self.config
        with contextlib.suppress(TimeoutError):
            # Billing must be listening before the first request can exist: it
            # starts from the latest offset and would miss earlier ones.
            await asyncio.wait_for(self._billing_ready.wait(), timeout=30)
        if not self._billing_ready.is_set():
            log.warning("simulator: billing consumer got no partitions yet; starting anyway")
        if cfg.setup:
            for record in self.traffic.setup_records(utcnow()):
                await self._send(producer, record)
                self.stats.commands_sent += 1
        bucket = TokenBucket(cfg.rate_per_second)
        admin_rate = cfg.admin_actions_per_minute / 60.0
        next_admin = (
            time.monotonic() + self._rng.expovariate(admin_rate) if admin_rate > 0 else None
        )
        while True:
            n = await bucket.take()
            now = utcnow()
            mono = time.monotonic()
            for _ in range(n):
                record, kind = self.traffic.next_traffic(now)
                await self._send(producer, record)
                if kind == "garbage":
                    self.stats.garbage_sent += 1
                else:
                    self.stats.usage_sent += 1
                    if kind == "miskeyed":
                        self.stats.miskeyed_sent += 1
                    self.duplicates.offer(record, mono)
            for record in self.duplicates.due(mono):
                await self._send(producer, record)
                self.stats.duplicates_sent += 1
            if next_admin is not None and mono >= next_admin:
                await self._send(producer, self.traffic.admin_action(now))
                self.stats.commands_sent += 1
                next_admin = mono + self._rng.expovariate(admin_rate)

    async def _billing_consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            if not self._billing_ready.is_set() and consumer.assignment():
                # Resolve "latest" now, so requests produced from here on are seen.
                for tp in consumer.assignment():
                    await consumer.position(tp)
                self._billing_ready.set()
            for messages in batches.values():
                for message in messages:
                    self._on_request(message.value)

    def _on_request(self, raw: bytes | None) -> None:
        try:
            request = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            log.warning("simulator: billing ignored an undecodable recharge request")
            return
        self.stats.recharge_requests_seen += 1
        answer = self.billing.answer(request, utcnow())
        if answer is None:
            self.stats.requests_ignored += 1
            return
        self._answers.put_nowait((time.monotonic() + self.config.billing_delay_seconds, answer))

    async def _billing_answer(self, producer: AIOKafkaProducer) -> None:
        while True:
            due, command = await self._answers.get()
            try:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                command["occurred_at"] = rfc3339(utcnow())
                record = OutRecord(COMMANDS, command["tenant_id"].encode(), encode(command))
                await self._send(producer, record)
                if command["type"] == "funds_added":
                    self.stats.funds_answered += 1
                else:
                    self.stats.failures_answered += 1
            finally:
                self._answers.task_done()

    async def _log_stats(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            log.info("simulator: %s", self.stats.summary())


# --------------------------------------------------------------------------- CLI


def build_arg_parser(*, add_help: bool = True) -> argparse.ArgumentParser:
    """The simulator's options; ``add_help=False`` to embed them in another CLI."""
    p = argparse.ArgumentParser(
        prog="python -m processor.dev.simulator",
        description="Simulated telephony, conferencing, admins and billing for credits-meter.",
        add_help=add_help,
    )
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    p.add_argument(
        "--topic-prefix",
        default=os.environ.get("METER_TOPIC_PREFIX", ""),
        help="prefix of every topic name (default: $METER_TOPIC_PREFIX)",
    )
    p.add_argument("--tenants", type=int, default=36)
    p.add_argument("--rate", type=float, default=20.0, help="usage events per second")
    p.add_argument("--duplicate-ratio", type=float, default=0.03)
    p.add_argument("--failure-ratio", type=float, default=0.15)
    p.add_argument("--garbage-ratio", type=float, default=0.01)
    p.add_argument("--billing-delay", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds; default: forever")
    p.add_argument("--currency", default="USD")
    p.add_argument("--no-setup", action="store_true", help="skip the initial funds/settings")
    p.add_argument(
        "--topic-wait",
        type=float,
        default=60.0,
        help="seconds to wait for the topics to exist; <0 disables the check",
    )
    return p


def config_from_args(args: argparse.Namespace, **overrides: Any) -> SimulatorConfig:
    config = SimulatorConfig(
        bootstrap=args.bootstrap,
        topic_prefix=args.topic_prefix,
        tenants=args.tenants,
        rate_per_second=args.rate,
        duplicate_ratio=args.duplicate_ratio,
        failure_ratio=args.failure_ratio,
        garbage_ratio=args.garbage_ratio,
        billing_delay_seconds=args.billing_delay,
        seed=args.seed,
        duration_seconds=args.duration,
        currency=args.currency,
        setup=not args.no_setup,
        topic_wait_seconds=None if args.topic_wait < 0 else args.topic_wait,
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def run_until_signalled(main_coro: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` that also treats SIGTERM like Ctrl-C: the main task is
    cancelled, so clients are closed and the producer flushed when a supervisor
    (``make run``, a test harness) stops the process."""

    async def guarded() -> None:
        task = asyncio.current_task()
        if task is not None:
            with contextlib.suppress(NotImplementedError):  # no signals on Windows loops
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main_coro

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(guarded())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    simulator = Simulator(config_from_args(args, stats_log_seconds=10.0))
    try:
        run_until_signalled(simulator.run())
    except RuntimeError as exc:  # setup failures: say why instead of a traceback
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    print(simulator.stats.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
