"""Malformed input records for the fuzz tests: every kind of bad input the contract
says must cost one record a trip to `credits.rejected` and nothing else.

Each record starts as a *valid* event (checked by the unit fuzz test) and gets exactly
one defect that is certain to break it, so the reasons a kind may be rejected with are
known in advance and a record that slips through is a processor bug, not noise.
Everything is drawn from one `random.Random`: the unit test hands in Hypothesis's
(`st.randoms()`, so failures shrink and replay), the integration test a seeded one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.core.rating import RateTable
from schemas.types import format_timestamp

CALLS: Final = "usage.calls"
CONFERENCING: Final = "usage.conferencing"
COMMANDS: Final = "credits.commands"
TOPICS: Final = (CALLS, CONFERENCING, COMMANDS)
USAGE: Final = (CALLS, CONFERENCING)

# The card a worker runs when METER_RATE_CARD is unset; the unrated numbers below are
# unrated in it.
CARD: Final = load_rate_card(example_rate_card_path())
CURRENCY: Final = CARD.currency
# Event time: now (at import), since a worker refuses event times older than
# METER_DEDUPE_DAYS (too_old) or ahead of its clock; unit tests run their clock at it.
NOW: Final = format_timestamp(datetime.now(UTC).replace(microsecond=0))

TENANTS: Final = tuple(f"fuzz-{i:02d}" for i in range(8))

RATED: Final[dict[RateTable, tuple[str, ...]]] = {
    RateTable.OUTBOUND: ("+14155550123", "+447700900123", "+442071234567", "+4915112345678"),
    RateTable.TOLL_FREE_INBOUND: ("+18005550100", "+18885550100"),
    RateTable.CONFERENCING_DIAL_OUT: ("+14155550111", "+447700900456"),
}
_CALL_TABLES: Final = {
    "outbound": RateTable.OUTBOUND,
    "toll_free_inbound": RateTable.TOLL_FREE_INBOUND,
}
_LEG_TABLES: Final = {
    "dial_out": RateTable.CONFERENCING_DIAL_OUT,
    "toll_free_dial_in": RateTable.TOLL_FREE_INBOUND,
}

INVALID_JSON: Final = frozenset({"invalid_json"})
INVALID_EVENT: Final = frozenset({"invalid_event"})
EITHER: Final = INVALID_JSON | INVALID_EVENT
# Every reason a malformed record may legitimately get. Not internal_error: that one
# means a bug was caught, which a fuzz run must report as a failure.
KNOWN_REASONS: Final = EITHER | {"no_rate", "currency_mismatch"}


@dataclass(frozen=True, slots=True)
class Malformed:
    kind: str
    topic: str  # logical name; a deployment prefixes it
    key: bytes | None
    value: bytes | None
    reasons: frozenset[str]


# ----------------------------------------------------------------- valid bases


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def valid_call(rng: random.Random, event_id: str, tenant: str) -> dict[str, Any]:
    call_type = rng.choice(tuple(_CALL_TABLES))
    body: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant,
        "occurred_at": NOW,
        "call_id": f"call-{event_id}",
        "call_type": call_type,
        "source_number": "+14155550100",
        "destination_number": rng.choice(RATED[_CALL_TABLES[call_type]]),
        "duration_seconds": rng.randint(0, 3600),
    }
    if rng.random() < 0.5:
        body["user_id"] = f"user-{rng.randint(1, 50)}"
    return body


def valid_conference(rng: random.Random, event_id: str, tenant: str) -> dict[str, Any]:
    leg_type = rng.choice(tuple(_LEG_TABLES))
    body: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant,
        "occurred_at": NOW,
        "conference_id": f"conf-{rng.randint(1, 20)}",
        "leg_type": leg_type,
        "number": rng.choice(RATED[_LEG_TABLES[leg_type]]),
        "duration_seconds": rng.randint(0, 3600),
    }
    if rng.random() < 0.5:
        body["participant_id"] = f"p-{rng.randint(1, 50)}"
    return body


def valid_command(
    rng: random.Random,
    command_id: str,
    tenant: str,
    types: Sequence[str] = ("funds_added", "auto_recharge_configured", "recharge_failed"),
) -> dict[str, Any]:
    kind = rng.choice(tuple(types))
    head = {"type": kind, "command_id": command_id, "tenant_id": tenant, "occurred_at": NOW}
    if kind == "funds_added":
        amount = f"{rng.randint(1, 500)}.{rng.randint(0, 99):02d}"
        return {**head, "amount": amount, "currency": CURRENCY, "source": "manual"}
    if kind == "auto_recharge_configured":
        return {
            **head,
            "enabled": rng.random() < 0.5,
            "recharge_amount": f"{rng.randint(10, 100)}.00",
            "trigger_balance": f"{rng.randint(0, 9)}.50",
        }
    return {**head, "recharge_request_id": f"req-{rng.randint(1, 99)}", "reason": "declined"}


def valid_body(
    rng: random.Random, topic: str, ident: str, tenant: str, command_types: Sequence[str] = ()
) -> dict[str, Any]:
    if topic == CALLS:
        return valid_call(rng, ident, tenant)
    if topic == CONFERENCING:
        return valid_conference(rng, ident, tenant)
    if command_types:
        return valid_command(rng, ident, tenant, command_types)
    return valid_command(rng, ident, tenant)


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _with_raw(body: dict[str, Any], field: str, token: str) -> bytes:
    """The body with `field` set to a raw JSON token that json.dumps cannot write."""
    placeholder = "\x00raw\x00"
    text = dumps({**body, field: placeholder}).decode()
    return text.replace(json.dumps(placeholder), token, 1).encode()


def _optional(body: dict[str, Any]) -> set[str]:
    """Fields whose null (or absence) is valid in this body."""
    optional = {"user_id", "participant_id"}
    if body.get("type") == "funds_added":
        optional.add("recharge_request_id")
    return optional


def _required(body: dict[str, Any]) -> list[str]:
    return [f for f in body if f not in _optional(body)]


# ------------------------------------------------------------------- defects
# Each takes the valid body and returns (value bytes, reasons it may be rejected with).

Body = dict[str, Any]
Out = tuple[bytes, frozenset[str]]
Defect = Callable[[random.Random, Body, str], tuple[bytes | None, frozenset[str]]]


def truncated_json(rng: random.Random, body: Body, _topic: str) -> Out:
    raw = dumps(body)
    # A strict prefix of a compact JSON object always lacks its closing brace.
    return raw[: rng.randrange(len(raw))], INVALID_JSON


def syntax_error(rng: random.Random, body: Body, _topic: str) -> Out:
    text = dumps(body).decode()
    first_value = text.index(':"') + 2  # just inside the first string value
    variants = [
        text.replace('":', '"=', 1),
        text[:-1] + ",}",
        text.replace('"', "'"),
        text.replace('"', "", 1),
        text.replace(",", ";", 1),
        "/* comment */" + text,
        "{" + text,
        text + text,
        text + "x",
        text[:first_value] + "\x01" + text[first_value:],
        text[:first_value] + "\\q" + text[first_value:],
        text[:first_value] + "\\ud800" + text[first_value:],
        text[:first_value] + "\\u12zz" + text[first_value:],
    ]
    return rng.choice(variants).encode(), INVALID_JSON


_BAD_UTF8: Final = (
    b"\xff",
    b"\xfe",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\xbc",
    b"\xed\xa0\x80",  # an encoded surrogate (CESU-8)
    b"\xc0\xaf",  # overlong '/'
    b"\xf8\x88\x80\x80\x80",
)


def invalid_utf8(rng: random.Random, body: Body, _topic: str) -> Out:
    raw = dumps(body)
    bad = rng.choice(_BAD_UTF8)
    if rng.random() < 0.2:
        # Latin-1 text where UTF-8 was promised: the classic mis-encoding.
        return dumps({**body, "tenant_id": "café"}).decode().encode("latin-1"), INVALID_JSON
    if rng.random() < 0.5:
        inside = raw.index(b':"') + 2 + rng.randint(0, 1)
        return raw[:inside] + bad + raw[inside:], INVALID_JSON
    at = rng.randint(0, len(raw))
    return raw[:at] + bad + raw[at:], INVALID_JSON


def garbage(rng: random.Random, _body: Body, _topic: str) -> Out:
    # Random bytes are not a valid event (they could, at astronomically low odds, be a
    # JSON object such as `{}`, which is an invalid event).
    return rng.randbytes(rng.randint(1, 300)), EITHER


def not_an_object(rng: random.Random, body: Body, _topic: str) -> Out:
    choices = [
        b"null",
        b"[]",
        b"42",
        b"-0",
        b'"text"',
        b"true",
        b"false",
        b"1e400",
        dumps([body]),
        dumps(dumps(body).decode()),  # the event JSON-encoded twice
    ]
    return rng.choice(choices), INVALID_JSON


def empty(rng: random.Random, _body: Body, _topic: str) -> tuple[bytes | None, frozenset[str]]:
    value: bytes | None = rng.choice([None, b"", b" ", b"\n\t", b"\x00", b"\xef\xbb\xbf", b"{}"])
    return value, INVALID_EVENT if value == b"{}" else INVALID_JSON


_NUMERIC_FIELDS: Final = ("duration_seconds", "amount", "recharge_amount", "trigger_balance")


def nan_and_huge(rng: random.Random, body: Body, _topic: str) -> Out:
    numeric = [f for f in _NUMERIC_FIELDS if f in body]
    field = rng.choice(numeric or _required(body))
    tokens = [
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1e-400",
        "1" + "0" * rng.randint(19, 5000),
        "-" + "9" * rng.randint(19, 5000),
        "0.1e1",
        "86400.0000000001",
    ]
    if field in _NUMERIC_FIELDS:
        # Money spelled as strings but not as the contract's decimal strings (for
        # duration_seconds any string is the wrong type). Not for text fields, where
        # "NaN" is a fine id.
        tokens += [
            '"NaN"',
            '"Infinity"',
            '"1e400"',
            '"' + "9" * rng.randint(19, 400) + '"',
            '"0.' + "0" * rng.randint(12, 400) + '1"',
        ]
    if field != "duration_seconds":
        tokens += ["5", "5.5", "1e3"]  # money must be a JSON string, never a number
    return _with_raw(body, field, rng.choice(tokens)), EITHER


def deep_nesting(rng: random.Random, body: Body, _topic: str) -> Out:
    depth = rng.choice([2, 50, 200, 1_000, 20_000, 100_000])
    if rng.random() < 0.25:
        return b"[" * depth + dumps(body) + b"]" * depth, INVALID_JSON
    field = rng.choice(list(body))
    nested = "[" * depth + "]" * depth, '{"a":' * depth + "0" + "}" * depth
    token = rng.choice(nested)
    # Too deep for the parser (invalid_json) or a nested value where a scalar belongs.
    return _with_raw(body, field, token), EITHER


# Fields with an upper length bound in the contract, so a huge value always breaks.
_BOUNDED: Final = (
    "event_id",
    "command_id",
    "tenant_id",
    "call_id",
    "conference_id",
    "user_id",
    "participant_id",
    "call_type",
    "leg_type",
    "source_number",
    "destination_number",
    "number",
    "currency",
    "source",
    "recharge_request_id",
    "reason",
    "occurred_at",
)


def large_value(sizes: Sequence[int]) -> Defect:
    def defect(rng: random.Random, body: Body, _topic: str) -> Out:
        size = rng.choice(tuple(sizes))
        overhead = len(dumps(body))
        if rng.random() < 0.2:
            return bytes([rng.randrange(256)]) * size, EITHER
        field = rng.choice([f for f in _BOUNDED if f in body])
        # Sized so the whole record is `size` bytes: callers stay under the broker's cap.
        filler = rng.choice("xX9-") * max(2_000, size - overhead - len(field) - 8)
        return dumps({**body, field: filler}), INVALID_EVENT

    return defect


def unknown_type(rng: random.Random, body: Body, topic: str) -> Out:
    if topic == COMMANDS:
        if rng.random() < 0.15:
            return dumps({k: v for k, v in body.items() if k != "type"}), INVALID_EVENT
        value = rng.choice(
            ["", "funds_removed", "FUNDS_ADDED", "funds_added ", "refund", 5, None, ["funds_added"]]
        )
        return dumps({**body, "type": value}), INVALID_EVENT
    # Usage topics have no `type`; their discriminating enums are call_type and leg_type.
    field = "call_type" if topic == CALLS else "leg_type"
    bad: object = rng.choice(["inbound", "OUTBOUND", "", "dial_in", "toll_free", "sms", 1])
    return dumps({**body, field: bad}), INVALID_EVENT


def bad_duration(rng: random.Random, body: Body, _topic: str) -> Out:
    value = rng.choice(
        [
            -1,
            -60,
            -86400,
            86401,
            10**6,
            10**12,
            2**63,
            -(2**63),
            2**64 + 1,
            1.5,
            60.0,
            -0.5,
            "60",
            "",
            True,
            False,
            None,
            [60],
            {"seconds": 60},
        ]
    )
    return dumps({**body, "duration_seconds": value}), INVALID_EVENT


_OTHER_CURRENCIES: Final = ("EUR", "GBP", "JPY", "CHF", "AUD", "XXX")
_BAD_CURRENCIES: Final = ("usd", "US", "USDD", "", "€€€", "U$D", 840, ["USD"])


def wrong_currency(rng: random.Random, body: Body, _topic: str) -> Out:
    if rng.random() < 0.6:
        return dumps({**body, "currency": rng.choice(_OTHER_CURRENCIES)}), frozenset(
            {"currency_mismatch"}
        )
    value = rng.choice(_BAD_CURRENCIES)
    return dumps({**body, "currency": value}), INVALID_EVENT


def unrated_number(rng: random.Random, table: RateTable) -> str:
    for _ in range(20):
        number = "+" + str(rng.randint(1, 9)) + _digits(rng, rng.randint(1, 13))
        if CARD.lookup(table, number) is None:
            return number
    # +999 is unassigned: no card of ours prices it.
    return "+999" + _digits(rng, 6)


def no_rate(rng: random.Random, body: Body, topic: str) -> Out:
    if topic == CALLS:
        table, field = _CALL_TABLES[body["call_type"]], "destination_number"
    else:
        table, field = _LEG_TABLES[body["leg_type"]], "number"
    return dumps({**body, field: unrated_number(rng, table)}), frozenset({"no_rate"})


def wrong_type_for(rng: random.Random, body: dict[str, Any], field: str) -> Any:
    """A value of another JSON type than the field's valid one."""
    original = body[field]
    nullable = field in _optional(body)
    if isinstance(original, bool):
        choices: list[Any] = ["true", 1, 0, [], {}]
    elif isinstance(original, int):
        choices = [str(original), original + 0.5, float(original), True, [], {}]
    else:
        choices = [0, 1, -1, 3.5, True, False, [], [original], {}, {"value": original}]
    if not nullable:
        choices.append(None)
    return rng.choice(choices)


def wrong_type(rng: random.Random, body: Body, _topic: str) -> Out:
    field = rng.choice(list(body))
    return dumps({**body, field: wrong_type_for(rng, body, field)}), INVALID_EVENT


def null_field(rng: random.Random, body: Body, _topic: str) -> Out:
    return dumps({**body, rng.choice(_required(body)): None}), INVALID_EVENT


def missing_field(rng: random.Random, body: Body, _topic: str) -> Out:
    gone = rng.choice(_required(body))
    return dumps({k: v for k, v in body.items() if k != gone}), INVALID_EVENT


_IDS: Final = ("", "x" * 129, "tab\there", "é", "line\nbreak", "\x7f")
_NUMBERS: Final = ("+0123456", "14155550100", "+1", "+1234567890123456", "+1-415-555", "", "+")
_AMOUNTS: Final = (
    "0",
    "0.00",
    "-1.00",
    "1,00",
    "1e3",
    "+5",
    " 5",
    "1000000.01",
    "5.",
    ".5",
    "0x10",
    "١٢",
    "0.00001",  # decodes, but finer than the card's 4 places: the engine refuses it
)
BAD_VALUES: Final[dict[str, tuple[Any, ...]]] = {
    "tenant_id": ("", "x" * 65, "acme corp", "acmé", "a/b", "tenant\n", " acme"),
    "event_id": _IDS,
    "command_id": _IDS,
    "call_id": ("", "x" * 257),
    "conference_id": ("", "x" * 257),
    "user_id": ("x" * 129,),
    "participant_id": ("x" * 129,),
    "occurred_at": (
        "2026-11-25T10:00:00",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-25T24:00:00Z",
        "2026-11-25 10:00:00Z",
        "2026-11-25T10:00:00+25:00",
        "yesterday",
        "",
        "1969-12-31T23:59:59Z",
        "9000-01-01T00:00:00Z",
    ),
    "call_type": ("inbound", "OUTBOUND", ""),
    "leg_type": ("dial_in", "DIAL_OUT", ""),
    "source_number": _NUMBERS,
    "destination_number": _NUMBERS,
    "number": _NUMBERS,
    "duration_seconds": (-1, 86401),
    "type": ("", "funds_removed"),
    "amount": _AMOUNTS,
    "recharge_amount": _AMOUNTS,
    "trigger_balance": ("-0.01", "1000000.01", "1,00", "0.00001", "abc", "1e2"),
    "currency": ("usd", "US", "", "EURO"),
    # manual funds with a request id are fine; auto_recharge without one is not.
    "source": ("bank", "", "MANUAL", "auto_recharge"),
    "recharge_request_id": ("", "x" * 129),
    "reason": ("", "x" * 1001),
    "enabled": ("yes",),
}


def bad_value(rng: random.Random, body: Body, _topic: str) -> Out:
    field = rng.choice([f for f in body if f in BAD_VALUES])
    return dumps({**body, field: rng.choice(BAD_VALUES[field])}), INVALID_EVENT


def duplicate_key(rng: random.Random, body: Body, _topic: str) -> Out:
    """A key named twice in one object: last-wins would read the second value."""
    field = rng.choice(list(body))
    # The same value again, or one that would be valid on its own (a larger amount).
    second = rng.choice([body[field], "999999.00" if field.endswith("amount") else body[field]])
    text = dumps(body).decode()
    roll = rng.random()
    if roll < 0.4:  # compact, the repeat last
        return (text[:-1] + f",{json.dumps(field)}:{json.dumps(second)}}}").encode(), INVALID_EVENT
    if roll < 0.6:  # the repeat first
        return ("{" + f"{json.dumps(field)}:{json.dumps(second)}," + text[1:]).encode(), (
            INVALID_EVENT
        )
    if roll < 0.8:  # spaced as json.dumps and people write it
        spaced = json.dumps(body, indent=rng.choice([None, 1]))
        return (
            spaced.rstrip("}\n ") + f", {json.dumps(field)} : {json.dumps(second)}\n}}"
        ).encode(), INVALID_EVENT
    # Nested, inside an unknown field (which alone would be ignored).
    nested = (
        '{"a": 1, "b": {"k": 1, "k": 2}}' if rng.random() < 0.5 else '{"k": [{"x": 1, "x": 1}]}'
    )
    return (text[:-1] + f',"meta_{rng.randint(0, 99)}":{nested}}}').encode(), INVALID_EVENT


# --------------------------------------------------------------------- kinds


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    defect: Defect
    topics: tuple[str, ...] = TOPICS
    # Commands the defect applies to (empty: any).
    command_types: tuple[str, ...] = ()


def kinds(large_sizes: Sequence[int]) -> tuple[Kind, ...]:
    return (
        Kind("truncated_json", truncated_json),
        Kind("syntax_error", syntax_error),
        Kind("invalid_utf8", invalid_utf8),
        Kind("garbage", garbage),
        Kind("not_an_object", not_an_object),
        Kind("empty", empty),
        Kind("nan_and_huge", nan_and_huge),
        Kind("deep_nesting", deep_nesting),
        Kind("large_value", large_value(large_sizes)),
        Kind("unknown_type", unknown_type),
        Kind("bad_duration", bad_duration, USAGE),
        # After the currency: auto_recharge_configured may name its currency too.
        Kind(
            "wrong_currency",
            wrong_currency,
            (COMMANDS,),
            ("funds_added", "auto_recharge_configured"),
        ),
        Kind("no_rate", no_rate, USAGE),
        Kind("wrong_type", wrong_type),
        Kind("null_field", null_field),
        Kind("missing_field", missing_field),
        Kind("bad_value", bad_value),
        Kind("duplicate_key", duplicate_key),
    )


def key_for(rng: random.Random, tenant: str) -> bytes | None:
    """Mostly the contract's key; sometimes none, another tenant's, or not UTF-8."""
    roll = rng.random()
    if roll < 0.7:
        return tenant.encode()
    if roll < 0.8:
        return None
    if roll < 0.9:
        return rng.choice(TENANTS).encode()
    return rng.choice([b"\xff\xfe" + rng.randbytes(4), b"", rng.randbytes(8)])


def make(kind: Kind, rng: random.Random) -> Malformed:
    topic = rng.choice(kind.topics)
    tenant = rng.choice(TENANTS)
    # Ids of malformed records never collide with the valid ones ("ok-..."): a record
    # whose id was applied before would be a duplicate, not a rejection.
    ident = f"bad-{rng.getrandbits(48):012x}"
    body = valid_body(rng, topic, ident, tenant, kind.command_types)
    value, reasons = kind.defect(rng, body, topic)
    return Malformed(kind.name, topic, key_for(rng, tenant), value, reasons)


def generate(
    count: int, seed: int, large_sizes: Sequence[int] = (1_000, 20_000, 100_000)
) -> list[Malformed]:
    """`count` malformed records, the kinds in equal shares, the same for a seed."""
    rng = random.Random(seed)
    all_kinds = kinds(large_sizes)
    return [make(all_kinds[i % len(all_kinds)], rng) for i in range(count)]
