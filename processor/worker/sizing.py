"""How large a record the broker takes, and rejections built to fit under it.

A record is refused whole when it is larger than the producer's `max_request_size` or
the topic's `max.message.bytes`; a refused output fails its flush, and a worker that
cannot flush replays the same input forever. So everything the handler derives from
an input of any size (a rejection, a re-route) is measured here before it is staged:
keys longer than `KEY_BOUND` are never copied whole (a prefix, their size and their
SHA-256 stand in for them), a rejection's payload is cut until the encoded record fits,
and a re-route that cannot fit is rejected as `too_large` instead.

Pure functions: no Kafka client, no clock.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from processor.kafka.wire import dumps
from schemas.types import scrub_text

# Keys longer than this are not copied into a rejection or a re-route header, and not
# reused as an output record's key: a prefix of this many bytes, the size and the hash.
KEY_BOUND: Final = 1024
# A rejected payload keeps at most this prefix (the original stays at its offset).
MAX_REJECTED_PAYLOAD: Final = 256 * 1024
# Kafka's default max.message.bytes (the broker's message.max.bytes is 12 bytes more).
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576
# What a record costs besides its key, value and headers, as aiokafka estimates it
# (DefaultRecordBatchBuilder): the batch header, and a record's own worst-case overhead.
BATCH_HEADER: Final = 61
RECORD_OVERHEAD: Final = 21
# Detail text a minimal rejection keeps.
MINIMAL_DETAIL: Final = 500

Headers = Sequence[tuple[str, bytes]]


def varint_size(n: int) -> int:
    """Bytes of Kafka's zig-zag varint for `n`."""
    v = (n << 1) ^ (n >> 63)
    size = 1
    while v > 0x7F:
        v >>= 7
        size += 1
    return size


def _field(data: bytes | None) -> int:
    return 1 if data is None else varint_size(len(data)) + len(data)


def record_size(key: bytes | None, value: bytes | None, headers: Headers | None = None) -> int:
    """An upper bound of the bytes a record takes alone in its batch on the wire.

    The same bound the producer checks against `max_request_size` (aiokafka's
    `estimate_size_in_bytes`), and what the broker checks against `max.message.bytes`.
    """
    size = BATCH_HEADER + RECORD_OVERHEAD + _field(key) + _field(value)
    headers = headers or ()
    size += varint_size(len(headers))
    for name, raw in headers:
        size += _field(name.encode()) + _field(raw)
    return size


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest record each output topic takes: the producer's and the topic's cap."""

    max_request_size: int = DEFAULT_MAX_MESSAGE_BYTES
    # max.message.bytes per topic, as described by the broker; absent: the default.
    topics: Mapping[str, int] = field(default_factory=dict)

    def limit(self, topic: str) -> int:
        return min(self.max_request_size, self.topics.get(topic, DEFAULT_MAX_MESSAGE_BYTES))

    def batch_bytes(self) -> int:
        """The largest record batch every topic takes: the size the worker's producers
        fill their batches to.

        aiokafka sends one batch per partition in a produce request and keeps one
        request in flight per broker, so a partition with a second batch in a round
        waits a whole round trip for it (and a transaction adds its partition again).
        Its default of 16 KiB made a busy partition's round take several produce
        requests one after the other (docs/performance.md); a batch as large as the
        smallest topic takes makes it one.
        """
        return min(self.max_request_size, DEFAULT_MAX_MESSAGE_BYTES, *self.topics.values())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What stands in for a key too long to copy: its size and SHA-256 (hex)."""

    size: int
    sha256: str


def clip_key(key: bytes | None) -> tuple[bytes | None, KeyFacts | None]:
    """The key itself when short; else its first `KEY_BOUND` bytes and its facts."""
    if key is None or len(key) <= KEY_BOUND:
        return key, None
    return key[:KEY_BOUND], KeyFacts(len(key), sha256_hex(key))


def as_text(raw: bytes) -> tuple[str, bool]:
    """The bytes as text when they are UTF-8, else base64 (and say so)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True


def rejection_key(key: bytes | None, facts: KeyFacts | None, tenant: str | None) -> bytes | None:
    """The Kafka key of a rejection: the original's when short (a replay lands where
    the original would have); for a longer one the tenant the body named, else none."""
    if facts is None and (key is None or len(key) <= KEY_BOUND):
        return key
    return tenant.encode() if tenant else None


def rejection_value(
    body: dict[str, Any],
    *,
    key: bytes | None,
    key_facts: KeyFacts | None,
    value: bytes | None,
    out_key: bytes | None,
    limit: int,
) -> bytes:
    """The encoded rejection: `body` (reason, detail, coordinates, time) with the key
    and the payload filled in, cut so that the record keyed `out_key` fits `limit`.

    `key` is the original key, or (with `key_facts`) a prefix of it. A key over
    `KEY_BOUND` keeps a prefix, with `key_truncated`, `key_size` and `key_sha256`. A
    payload keeps at most `MAX_REJECTED_PAYLOAD` bytes, less when its encoding (JSON
    escapes, base64) would not fit; a cut one carries `payload_truncated`,
    `payload_size` and `payload_sha256`. When not even an empty payload fits, the body
    is the minimal one (no payload, a short detail).
    """
    body["detail"] = scrub_text(str(body.get("detail", "")))
    clipped, facts = clip_key(key)
    facts = key_facts or facts
    body["key"] = None
    if clipped is not None:
        body["key"], key_b64 = as_text(clipped)
        if key_b64:
            body["key_encoding"] = "base64"
    if facts is not None:
        body["key_truncated"] = True
        body["key_size"] = facts.size
        body["key_sha256"] = facts.sha256
    body["payload"] = None
    if value is None:
        return _fit_or_minimal(body, out_key, limit, value)
    keep = min(len(value), MAX_REJECTED_PAYLOAD)
    for _ in range(8):
        _set_payload(body, value, keep)
        encoded = dumps(body)
        size = record_size(out_key, encoded)
        if size <= limit:
            return encoded
        if keep == 0:
            break
        # Shrink by the excess, scaled by what each original byte costs encoded.
        per_byte = max(1.0, (len(encoded) - _overhead(body)) / keep)
        keep = max(0, int(keep - (size - limit) / per_byte) - 64)
    return _fit_or_minimal(body, out_key, limit, value)


def _overhead(body: dict[str, Any]) -> int:
    return len(dumps({**body, "payload": ""}))


def _set_payload(body: dict[str, Any], value: bytes, keep: int) -> None:
    body.pop("payload_encoding", None)
    text, b64 = as_text(value[:keep])
    body["payload"] = text
    if b64:
        body["payload_encoding"] = "base64"
    if keep < len(value):
        body["payload_truncated"] = True
        body["payload_size"] = len(value)
        body["payload_sha256"] = sha256_hex(value)


def _fit_or_minimal(
    body: dict[str, Any], out_key: bytes | None, limit: int, value: bytes | None
) -> bytes:
    if value is None:
        encoded = dumps(body)
        if record_size(out_key, encoded) <= limit:
            return encoded
    return minimal_value(body, value)


def minimal_value(body: Mapping[str, Any], value: bytes | None) -> bytes:
    """The least a rejection says: reason, a short detail, coordinates, sizes, hashes.

    `body` is a rejection body (or what is known of one); `value` the rejected
    record's value when at hand (else the body's `payload_size`/`payload_sha256` are
    kept). No payload and no key text: the original is at its source offset.
    """
    keep = (
        "type",
        "reason",
        "source_topic",
        "source_partition",
        "source_offset",
        "key_encoding",
        "key_size",
        "key_sha256",
        "payload_size",
        "payload_sha256",
        "rejected_at",
    )
    out: dict[str, Any] = {k: body[k] for k in keep if k in body}
    detail = scrub_text(str(body.get("detail", "")))
    out["detail"] = (
        detail if len(detail) <= MINIMAL_DETAIL else detail[: MINIMAL_DETAIL - 3] + "..."
    )
    out.pop("key_encoding", None)
    out["key"] = None
    if body.get("key") is not None or "key_size" in body:
        out["key_truncated"] = True
        if "key_size" not in out and isinstance(body.get("key"), str):
            raw = _original(body["key"], body.get("key_encoding"))
            out["key_size"], out["key_sha256"] = len(raw), sha256_hex(raw)
    out["payload"] = None
    if value is not None:
        out["payload_truncated"] = True
        out["payload_size"] = len(value)
        out["payload_sha256"] = sha256_hex(value)
    elif "payload_size" in out:
        out["payload_truncated"] = True
    elif isinstance(body.get("payload"), str):
        raw = _original(body["payload"], body.get("payload_encoding"))
        out["payload_truncated"] = True
        out["payload_size"], out["payload_sha256"] = len(raw), sha256_hex(raw)
    return dumps(out)


def _original(text: str, encoding: Any) -> bytes:
    if encoding == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8", "surrogatepass")


def minimal_from_rejection(value: bytes) -> bytes | None:
    """A refused rejection's minimal form (None when `value` is not a rejection body)."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("type") != "rejected":
        return None
    return minimal_value(body, None)
