"""The bytes of a usage record (usage.calls, usage.conferencing) to the engine's UsageEvent.

The contract's models (schemas/inputs.py) say what a usage record may be and why one is
refused. Building a model is most of what decoding a usage record costs, and nearly
every record has one shape: the contract's fields and no others, in compact JSON. Such
a record is read here with orjson and the checks the models make, straight into a
UsageEvent. Anything else (an unknown or repeated field, spacing, a value these checks
do not pass) goes to the models, which accept it or give the rejection's reason and
detail: a verdict is always the models' (tests/unit/test_usage_wire.py compares the two
over malformed and generated records).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import orjson

from processor.core.usage import UsageEvent
from schemas.inputs import CallUsage, ConferenceUsage, decode_call, decode_conference
from schemas.types import (
    MAX_DURATION_SECONDS,
    MAX_E164_DIGITS,
    MAX_EXTERNAL_ID_LENGTH,
    MAX_ID_LENGTH,
    MAX_TENANT_ID_LENGTH,
    MAX_TEXT_LENGTH,
    parse_timestamp,
)


class _Shape:
    """What a topic's common record holds, by field name."""

    def __init__(
        self,
        kind: str,
        usage_type: str,
        usage_types: tuple[str, ...],
        rated: str,
        external_id: str,
        optional_text: str,
        other_numbers: tuple[str, ...],
    ) -> None:
        self.kind: Final = kind
        self.usage_type: Final = usage_type
        self.usage_types: Final = usage_types
        self.rated: Final = rated
        self.external_id: Final = external_id
        self.optional_text: Final = optional_text
        self.other_numbers: Final = other_numbers
        # The fields but the optional one: the four every usage event has, the usage
        # type, the rated number, the external id, and any other numbers.
        self.size: Final = 7 + len(other_numbers)


_CALL: Final = _Shape(
    "call",
    "call_type",
    ("outbound", "toll_free_inbound"),
    "destination_number",
    "call_id",
    "user_id",
    ("source_number",),
)
_CONFERENCE: Final = _Shape(
    "conference",
    "leg_type",
    ("dial_out", "toll_free_dial_in"),
    "number",
    "conference_id",
    "participant_id",
    (),
)
# schemas.types.TENANT_ID_PATTERN's characters.
_TENANT_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"


# `raw: object`, not `bytes | None`: compiled, a function refuses an argument of another
# type with a TypeError, and a value of any type must become a rejection.


def read_call(raw: object) -> UsageEvent:
    """A usage.calls record's value as a UsageEvent, or DecodeError (as decode_call)."""
    event = _try_common(raw, _CALL)
    return event if event is not None else call_event(decode_call(raw))


def read_conference(raw: object) -> UsageEvent:
    """A usage.conferencing record's value as a UsageEvent, or DecodeError."""
    event = _try_common(raw, _CONFERENCE)
    return event if event is not None else conference_event(decode_conference(raw))


def _try_common(raw: object, shape: _Shape) -> UsageEvent | None:
    if type(raw) is not bytes:
        return None
    try:
        return _common(raw, shape)
    except Exception:  # a bug here must cost the fast path, not the record
        return None


def call_event(model: CallUsage) -> UsageEvent:
    return UsageEvent(
        model.event_id,
        model.tenant_id,
        model.occurred_at,
        "call",
        model.call_type,
        model.destination_number,
        model.duration_seconds,
    )


def conference_event(model: ConferenceUsage) -> UsageEvent:
    return UsageEvent(
        model.event_id,
        model.tenant_id,
        model.occurred_at,
        "conference",
        model.leg_type,
        model.number,
        model.duration_seconds,
    )


# ---- the common shape ----------------------------------------------------------------


def common_call(data: bytes) -> UsageEvent | None:
    """The call in `data` when it has the common shape and passes every check the
    CallUsage model makes; None for the model to decide."""
    return _common(data, _CALL)


def common_conference(data: bytes) -> UsageEvent | None:
    """The leg in `data` when it has the common shape and passes every check the
    ConferenceUsage model makes; None for the model to decide."""
    return _common(data, _CONFERENCE)


def _common(data: bytes, shape: _Shape) -> UsageEvent | None:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict:
        return None
    optional = body.get(shape.optional_text)
    named = optional is not None or shape.optional_text in body
    # As many fields as the shape has, counting the optional one when named: every
    # other one is read below (a KeyError for one missing), so there is no other.
    if len(body) != shape.size + named:
        return None
    try:
        usage_type = body[shape.usage_type]
        number = body[shape.rated]
        external_id = body[shape.external_id]
        others = [body[name] for name in shape.other_numbers]
        event = _event(body, shape.kind, usage_type, number)
    except KeyError:
        return None
    if (
        event is None
        or usage_type not in shape.usage_types
        or not _e164(number)
        or not _external_id(external_id)
        or not _optional_text(optional)
    ):
        return None
    for other in others:
        if not _e164(other):
            return None
    # No key named twice (orjson keeps the last of repeated keys). Every value is text
    # now but the duration and a null optional field: with no key repeated and no
    # escaped quote, the text holds exactly two quotes a key and two a text value, and
    # a repeated key adds at least two (its own).
    texts = len(body) - 1 - (named and optional is None)
    if data.count(b'"') != 2 * (len(body) + texts):
        return None
    return event


def _event(body: dict[str, Any], kind: str, usage_type: str, number: str) -> UsageEvent | None:
    """The event from the fields every usage record has, when they pass the checks."""
    event_id = body["event_id"]
    tenant_id = body["tenant_id"]
    seconds = body["duration_seconds"]
    if not _event_id(event_id) or not _tenant_id(tenant_id):
        return None
    if type(seconds) is not int or not 0 <= seconds <= MAX_DURATION_SECONDS:
        return None
    occurred_at = _timestamp(body["occurred_at"])
    if occurred_at is None:
        return None
    return UsageEvent(event_id, tenant_id, occurred_at, kind, usage_type, number, seconds)


# The checks of schemas.types, written with str methods: each a few times faster than
# the pattern's regular expression, and exactly as strict (tests/unit/test_usage_wire.py).


def _event_id(value: object) -> bool:
    # ID_PATTERN, [ -~]{1,n}: printable ASCII is exactly the space to the tilde.
    return (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isascii()
        and value.isprintable()
    )


def _tenant_id(value: object) -> bool:
    # TENANT_ID_PATTERN: nothing is left once its characters are stripped from both ends.
    return (
        type(value) is str
        and 0 < len(value) <= MAX_TENANT_ID_LENGTH
        and not value.strip(_TENANT_CHARS)
    )


def _e164(value: object) -> bool:
    # E164_PATTERN, \+[1-9][0-9]{1,n-1}; isdigit alone would take other scripts' digits.
    return (
        type(value) is str
        and 3 <= len(value) <= 1 + MAX_E164_DIGITS
        and value.isascii()
        and value[0] == "+"
        and value[1] != "0"
        and value[1:].isdigit()
    )


def _external_id(value: object) -> bool:
    # ExternalId: any text of 1 to n characters.
    return type(value) is str and 0 < len(value) <= MAX_EXTERNAL_ID_LENGTH


def _optional_text(value: object) -> bool:
    # OptionalText | None: absent, null, or text of at most n characters.
    return value is None or (type(value) is str and len(value) <= MAX_TEXT_LENGTH)


def _timestamp(value: object) -> datetime | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None
