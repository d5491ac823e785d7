"""Records of any size end applied or rejected: rejections and re-routes built to fit.

processor/worker/sizing.py measures what the handler derives from an input (a rejection, a
re-route) against what the topic takes; a key too long to copy stands in as a prefix,
its size and its SHA-256. The handler's path runs here with an in-memory publisher;
the real broker's side is tests/integration/test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from processor.core.dedupe import DedupeWindow
from processor.core.state import RechargePolicy
from processor.kafka.routing import partition_for
from processor.testing import MemoryPublisher
from processor.worker import sizing
from processor.worker.intake import minimal_rejection
from processor.worker.pipeline import Pipeline
from processor.worker.publisher import KafkaPublisher
from processor.worker.records import (
    H_FORCE_TOO_OLD,
    H_KEY,
    H_KEY_SHA256,
    H_KEY_SIZE,
    H_REPLAY_OF,
    Out,
    Record,
    Source,
)
from processor.worker.sizing import KEY_BOUND, Limits, record_size
from schemas import RejectedRecord
from schemas.types import format_timestamp, parse_timestamp
from tests.support import malformed
from tests.unit.test_fuzz_decoders import NAMES

NOW = parse_timestamp(malformed.NOW)  # the events' time
PARTITIONS = 4
LIMIT = 1_000_000  # Faust's producer max_request_size, under the topic's 1 MiB
TENANT = "fuzz-01"
HOME = partition_for(TENANT, PARTITIONS)
AWAY = (HOME + 1) % PARTITIONS


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Rig:
    def __init__(self, limits: Limits | None = None) -> None:
        self.pub = MemoryPublisher()
        self.accounts: dict[str, Any] = {}
        self.pipeline = Pipeline.build(
            malformed.CARD,
            RechargePolicy(timeout=timedelta(hours=1)),
            DedupeWindow(7),
            self.accounts,
            {},
            NAMES,
            PARTITIONS,
            self.pub,
            clock=lambda: NOW,
            limits=limits or Limits(LIMIT),
        )
        self.offset = 0

    def put(
        self,
        key: bytes | None,
        value: bytes | None,
        partition: int = HOME,
        topic: str = malformed.CALLS,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> str:
        self.offset += 1
        source = {
            malformed.CALLS: Source.CALLS,
            malformed.CONFERENCING: Source.CONFERENCING,
            malformed.COMMANDS: Source.COMMANDS,
        }[topic]
        rec = Record(topic, partition, self.offset, key, value, headers)
        status = self.pipeline.intake.stage(source, rec)
        asyncio.run(self.pipeline.flusher.flush())
        return status

    def rerouted_again(self) -> str:
        """Feed the last re-routed record back, as the re-route agent would."""
        [(topic, key, value, headers)] = [r for r in self.pub.sent if r[0] == NAMES.reroute]
        self.pub.sent.clear()
        self.offset += 1
        rec = Record(topic, HOME, self.offset, key, value, tuple(headers or ()))
        status = self.pipeline.intake.stage_rerouted(rec)
        asyncio.run(self.pipeline.flusher.flush())
        return status

    def rejection(self) -> tuple[bytes | None, dict[str, Any], bytes]:
        [(topic, key, value, _)] = self.pub.sent
        assert topic == NAMES.rejected
        assert record_size(key, value) <= LIMIT
        body = orjson.loads(value)
        RejectedRecord.model_validate(body)  # the contract's shape
        return key, body, value


def call(tenant: str = TENANT, **extra: Any) -> dict[str, Any]:
    body = malformed.valid_call(random.Random(1), f"e-{random.random()}", tenant)
    body["destination_number"] = "+14155550123"
    body["duration_seconds"] = 60
    return {**body, **extra}


def padded(size: int, tenant: str = TENANT, **extra: Any) -> bytes:
    """A valid call with an unknown `padding` field, `size` bytes in all."""
    base = malformed.dumps(call(tenant, padding="", **extra))
    return malformed.dumps(call(tenant, padding="x" * (size - len(base)), **extra))


# ---- the pure functions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (None, None, []),
        (b"k", b"v", []),
        (b"k" * 300, b"v" * 70_000, [("h", b"x" * 200), ("meter-source", b"calls")]),
        (b"k" * 600_000, b"not json", [("a", b"")]),
    ],
)
def test_record_size_is_the_producers_own_estimate(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    assert record_size(key, value, headers) == DefaultRecordBatchBuilder.estimate_size_in_bytes(
        key, value, headers
    )


def test_limits_take_the_smaller_of_the_producers_and_the_topics() -> None:
    limits = Limits(1_000_000, {"small": 50_000, "big": 5_000_000})
    assert limits.limit("small") == 50_000
    assert limits.limit("big") == 1_000_000
    assert limits.limit("unknown") == 1_000_000
    assert Limits().limit("unknown") == sizing.DEFAULT_MAX_MESSAGE_BYTES


def test_a_batch_holds_what_the_smallest_topic_takes() -> None:
    assert Limits().batch_bytes() == sizing.DEFAULT_MAX_MESSAGE_BYTES
    assert Limits(1_000_000, {"big": 5_000_000}).batch_bytes() == 1_000_000
    assert Limits(1_000_000, {"big": 5_000_000, "small": 50_000}).batch_bytes() == 50_000
    # A topic taking more than Kafka's default does not make batches larger than that.
    assert Limits(8_000_000, {"big": 5_000_000}).batch_bytes() == 1_048_576


def test_a_long_key_is_clipped_with_its_size_and_hash() -> None:
    assert sizing.clip_key(b"k" * KEY_BOUND) == (b"k" * KEY_BOUND, None)
    assert sizing.clip_key(None) == (None, None)
    key = bytes(range(256)) * 10
    assert sizing.clip_key(key) == (key[:KEY_BOUND], sizing.KeyFacts(len(key), sha(key)))


# ---- rejections built to fit ----------------------------------------------------------


def test_a_huge_key_is_truncated_in_the_body_and_not_reused_as_the_output_key() -> None:
    rig = Rig()
    key = b"K" * 600_000
    assert rig.put(key, b"not json") == "rejected"
    out_key, body, _ = rig.rejection()
    assert body["reason"] == "invalid_json"
    assert out_key is None  # the body names no tenant
    assert body["key"] == "K" * KEY_BOUND and body["key_truncated"] is True
    assert (body["key_size"], body["key_sha256"]) == (600_000, sha(key))
    assert body["payload"] == "not json" and "payload_truncated" not in body


def test_a_huge_key_rejection_is_keyed_by_the_tenant_the_body_names() -> None:
    rig = Rig()
    value = malformed.dumps({**call(), "duration_seconds": -1})
    assert rig.put(b"\xff" * 5000, value) == "rejected"
    out_key, body, _ = rig.rejection()
    assert body["reason"] == "invalid_event"
    assert out_key == TENANT.encode()
    assert body["key_encoding"] == "base64" and body["key_size"] == 5000
    # A short key is kept as it is: a replay lands where the original would have.
    rig.pub.sent.clear()
    assert rig.put(b"short", value) == "rejected"
    out_key, body, _ = rig.rejection()
    assert out_key == b"short" and body["key"] == "short" and "key_truncated" not in body


def test_a_payload_whose_escapes_would_not_fit_is_cut_until_it_does() -> None:
    # 256 KiB of control characters is 1.5 MB as JSON (\u0001 each).
    rig = Rig()
    value = b"\x01" * 1_000_000
    assert rig.put(TENANT.encode(), value) == "rejected"
    _, body, encoded = rig.rejection()
    assert body["payload_truncated"] is True
    assert (body["payload_size"], body["payload_sha256"]) == (len(value), sha(value))
    kept = body["payload"].encode()
    assert value.startswith(kept) and 100_000 < len(kept) < sizing.MAX_REJECTED_PAYLOAD
    assert record_size(TENANT.encode(), encoded) > LIMIT - 20_000  # kept what fitted


def test_a_topic_smaller_than_any_payload_gets_the_minimal_rejection() -> None:
    rig = Rig(Limits(LIMIT, {NAMES.rejected: 700}))
    key = b"k" * 2000
    assert rig.put(key, b"x" * 5000) == "rejected"
    [(_, out_key, value, _)] = rig.pub.sent
    body = orjson.loads(value)
    RejectedRecord.model_validate(body)
    assert record_size(out_key, value) <= 700
    assert body["reason"] == "invalid_json" and body["payload"] is None and body["key"] is None
    assert (body["payload_size"], body["payload_sha256"]) == (5000, sha(b"x" * 5000))
    assert (body["key_size"], body["key_sha256"]) == (2000, sha(key))


# ---- re-routes built to fit --------------------------------------------------------------


def test_a_reroute_that_cannot_fit_is_rejected_as_too_large() -> None:
    rig = Rig()
    value = padded(LIMIT - 150)  # fits the input topic; not with the re-route's headers
    assert rig.put(b"wrong-key", value, partition=AWAY) == "rejected"
    out_key, body, _ = rig.rejection()
    assert body["reason"] == "too_large"
    assert NAMES.reroute in body["detail"] and "keyed by its tenant_id" in body["detail"]
    assert out_key == b"wrong-key"
    assert body["payload_truncated"] is True and body["payload_size"] == len(value)
    assert not rig.accounts


def test_a_large_reroute_that_fits_is_applied() -> None:
    rig = Rig()
    value = padded(900_000)
    assert rig.put(b"wrong-key", value, partition=AWAY) == "rerouted"
    [(topic, _, sent, _)] = rig.pub.sent
    assert topic == NAMES.reroute and sent == value
    assert rig.rerouted_again() == "applied"
    assert str(rig.accounts[TENANT].account.balance) == "-0.0200"


def test_a_reroute_carries_a_prefix_of_a_huge_key_and_its_rejection_names_the_key() -> None:
    rig = Rig()
    key = b"W" * 600_000
    value = malformed.dumps(call(destination_number="+9990000000"))  # unrated: no_rate
    assert rig.put(key, value, partition=AWAY) == "rerouted"
    [(_, out_key, _, headers)] = rig.pub.sent
    assert out_key == TENANT.encode()
    h = dict(headers or ())
    assert h[H_KEY] == key[:KEY_BOUND]
    assert (h[H_KEY_SIZE], h[H_KEY_SHA256]) == (b"600000", sha(key).encode())
    assert rig.rerouted_again() == "rejected"
    out_key, body, _ = rig.rejection()
    assert body["reason"] == "no_rate" and out_key == TENANT.encode()
    assert (body["source_partition"], body["key"]) == (AWAY, "W" * KEY_BOUND)
    assert (body["key_size"], body["key_sha256"]) == (600_000, sha(key))


# ---- the broker refusing a record for its size ------------------------------------------


def test_a_refused_rejection_becomes_a_minimal_one() -> None:
    rig = Rig()
    assert rig.put(b"k" * 5000, b"y" * 300_000) == "rejected"
    [(topic, key, value, _)] = rig.pub.sent
    stand_in = minimal_rejection(NAMES, lambda: NOW, Out(topic, key, value))
    assert stand_in is not None and stand_in.topic == NAMES.rejected and stand_in.key is None
    body = orjson.loads(stand_in.value or b"")
    RejectedRecord.model_validate(body)
    assert body["reason"] == "invalid_json" and body["payload"] is None
    assert (body["payload_size"], body["payload_sha256"]) == (300_000, sha(b"y" * 300_000))
    assert (body["key_size"], body["key_sha256"]) == (5000, sha(b"k" * 5000))
    assert (body["source_topic"], body["source_offset"]) == (malformed.CALLS, rig.offset)


def test_a_refused_reroute_becomes_a_too_large_rejection() -> None:
    rig = Rig()
    key = b"W" * 3000
    value = padded(500_000)
    assert rig.put(key, value, partition=AWAY) == "rerouted"
    [(topic, out_key, sent, headers)] = rig.pub.sent
    stand_in = minimal_rejection(NAMES, lambda: NOW, Out(topic, out_key, sent, headers))
    assert stand_in is not None
    body = orjson.loads(stand_in.value or b"")
    RejectedRecord.model_validate(body)
    assert body["reason"] == "too_large"
    assert (body["source_topic"], body["source_partition"]) == (malformed.CALLS, AWAY)
    assert (body["payload_size"], body["payload_sha256"]) == (len(value), sha(value))
    assert (body["key_size"], body["key_sha256"]) == (3000, sha(key))
    assert minimal_rejection(NAMES, lambda: NOW, Out(NAMES.ledger, b"t", b"{}")) is None


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: Any, value: Any, timestamp: Any, headers: Any) -> object | None:
        if self.records and len(value or b"") > 100:  # a large record goes alone
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class _Producer:
    """Refuses every batch holding a value over 100 bytes, as the broker would."""

    def __init__(self) -> None:
        self.landed: list[tuple[str, bytes | None, bytes | None]] = []

    def create_batch(self) -> _Batch:
        return _Batch()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        if any(len(v or b"") > 100 for _, v in batch.records):
            future.set_exception(MessageSizeTooLargeError("too large"))
        else:
            self.landed += [(topic, k, v) for k, v in batch.records]
            future.set_result(None)
        return future


def test_the_publisher_sends_the_stand_in_of_a_record_refused_for_size() -> None:
    producer = _Producer()
    small = Out("t", b"k", b"small")
    big = Out("t", b"k", b"B" * 500)
    publisher = KafkaPublisher(
        lambda: producer, fallback=lambda out: Out("rejected", None, b"minimal")
    )
    asyncio.run(publisher.publish([small, big]))
    assert producer.landed == [("t", b"k", b"small"), ("rejected", None, b"minimal")]
    # Without a stand-in the publish fails, as before.
    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(KafkaPublisher(lambda: _Producer()).publish([big]))


# ---- forcing a too-old event: only a replay's word ---------------------------------------


def test_a_too_old_event_is_applied_only_when_replay_forces_it() -> None:
    rig = Rig()
    old = format_timestamp(NOW - timedelta(days=30))
    value = malformed.dumps(call(occurred_at=old))
    assert rig.put(TENANT.encode(), value) == "rejected"
    assert rig.rejection()[1]["reason"] == "too_old"
    # The force header alone (any producer can set headers) is not enough.
    rig.pub.sent.clear()
    assert rig.put(TENANT.encode(), value, headers=((H_FORCE_TOO_OLD, b"1"),)) == "rejected"
    rig.pub.sent.clear()
    replayed = ((H_REPLAY_OF, b"usage.calls[0]@1"), (H_FORCE_TOO_OLD, b"1"))
    assert rig.put(TENANT.encode(), value, headers=replayed) == "applied"
    # Under a wrong key the force travels with the re-route.
    other = malformed.dumps(call(occurred_at=old))
    rig.pub.sent.clear()
    assert rig.put(b"wrong", other, partition=AWAY, headers=replayed) == "rerouted"
    assert rig.rerouted_again() == "applied"
    assert str(rig.accounts[TENANT].account.balance) == "-0.0400"
