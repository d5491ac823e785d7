"""`meter replay-rejected`: send rejected records back to their source topic.

A record rejected for a cause that can be fixed outside the record (a rate card that
gains the prefix: `no_rate`; a card in the command's currency: `currency_mismatch`; a
processor bug that is fixed: `internal_error`) waits in `credits.rejected`. Once the
cause is fixed, this re-sends the *original* bytes with the original key to the topic
they first arrived on, so the processor decides again, exactly as for a new record:
applied if the cause is gone, rejected again (a new `credits.rejected` record) if not.

Replaying is idempotent because the processor is: a replayed usage event or command
keeps its `event_id` / `command_id`, and one that was applied once is a duplicate
afterwards. So replaying twice, or replaying a record its producer has since re-sent,
changes a balance once (within `METER_DEDUPE_DAYS` of the first application).

The selection (`select`, `finish`) is pure and tested without Kafka; `replay_rejected`
does the I/O. A rejected payload over 256 KiB holds only a prefix
(`payload_truncated`); its original is read back from the source topic at
`source_partition` / `source_offset`, and reported as a problem when the topic no
longer has it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from processor.kafka.topics import TopicNames
from processor.ops.reconcile import read_topic
from processor.worker.records import H_FORCE_TOO_OLD, H_REPLAY_OF
from schemas.types import parse_timestamp

# Causes a fix outside the record can cure. invalid_event is not among them by default
# (the same bytes break the same schema), but may be asked for: after a processor
# upgrade that accepts more, for amounts finer than a card that now has more places, or
# for an occurred_at too far ahead once that time has come. too_old and too_large are
# not either: too_old only with --force-too-old (an operator's word that the event was
# never applied), too_large only once the topics take larger records.
DEFAULT_REASONS: Final = frozenset({"no_rate", "currency_mismatch", "internal_error"})
# Bytes that are not a JSON object can never decode, whatever is fixed: the producer
# has to send a corrected record, which is a new record, not a replay.
NEVER: Final = frozenset({"invalid_json"})
# Set on every replayed record, so a reader of the input topic can tell a replay from
# the producer's own record, and find the rejection it came from.
REPLAY_HEADER: Final = H_REPLAY_OF


def replay_reasons(requested: Sequence[str], force_too_old: bool = False) -> frozenset[str]:
    """The reasons to replay: the defaults, or those asked for; never invalid_json.

    `--force-too-old` selects too_old besides (only too_old, when no reason is named).
    """
    if not requested:
        return frozenset({"too_old"}) if force_too_old else DEFAULT_REASONS
    refused = sorted(set(requested) & NEVER)
    if refused:
        raise ValueError(
            f"records rejected as {', '.join(refused)} are never replayed: their bytes are "
            "not a JSON object and would be rejected again; the producer must send a "
            "corrected record"
        )
    return frozenset(requested) | ({"too_old"} if force_too_old else set())


def parse_since(text: str) -> datetime:
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise ValueError(f"--since {text!r} {exc}") from None


@dataclass(frozen=True, slots=True, order=True)
class SourceRef:
    """Where a rejected record first arrived."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """One `credits.rejected` record, read tolerantly (the contract may add fields)."""

    reason: str
    source: SourceRef
    rejected_at: datetime
    key: bytes | None
    # None when the rejection kept only a prefix: the original is at `source`.
    payload: bytes | None
    payload_size: int | None = None


def _bytes(text: Any, encoding: Any, what: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a string")
    if encoding is None:
        return text.encode("utf-8")
    if encoding != "base64":
        raise ValueError(f"unknown {what}_encoding {encoding!r}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from None


def parse_rejected(value: bytes | None) -> Rejected:
    """A rejected record's value; ValueError when it is not a readable RejectedRecord."""
    if value is None:
        raise ValueError("the record value is null")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("type") != "rejected":
        raise ValueError("not a RejectedRecord (type is not 'rejected')")
    try:
        reason = body["reason"]
        source = SourceRef(
            body["source_topic"], int(body["source_partition"]), int(body["source_offset"])
        )
        rejected_at = parse_timestamp(body["rejected_at"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"missing or malformed field: {exc}") from None
    if not isinstance(reason, str) or not isinstance(source.topic, str):
        raise ValueError("reason and source_topic must be strings")
    key = _bytes(body.get("key"), body.get("key_encoding"), "key")
    # Either cut short: the original (key and value) is read back from its source.
    if body.get("payload_truncated") or body.get("key_truncated"):
        size = body.get("payload_size")
        if not body.get("payload_truncated"):
            payload = _bytes(body.get("payload"), body.get("payload_encoding"), "payload")
            size = len(payload or b"")
        return Rejected(reason, source, rejected_at, key, None, size if type(size) is int else None)
    payload = _bytes(body.get("payload"), body.get("payload_encoding"), "payload")
    return Rejected(reason, source, rejected_at, key, payload)


@dataclass(frozen=True, slots=True)
class Replay:
    """A record to send again: to `rejected.source.topic`, with `key` and `value`."""

    rejected: Rejected
    key: bytes | None
    # None until the original of a truncated rejection has been read from its source.
    value: bytes | None
    fetched: bool = False


@dataclass
class Selection:
    replays: list[Replay] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    read: int = 0


def select(
    records: Iterable[tuple[str, bytes | None]],
    *,
    reasons: frozenset[str],
    inputs: frozenset[str],
    since: datetime | None = None,
) -> Selection:
    """Which rejected records to replay, oldest rejection first.

    `records` are (where the rejection is, for messages; its value). A source record
    rejected more than once (a worker re-processed it after a crash) is replayed once.
    `--limit` and the de-duplication of equal payloads wait for `finish`, after the
    originals of truncated rejections have been fetched.
    """
    sel = Selection()
    parsed: list[Rejected] = []
    for where, value in records:
        sel.read += 1
        try:
            rejected = parse_rejected(value)
        except ValueError as exc:
            sel.skipped["unreadable rejected record"] += 1
            sel.warnings.append(f"{where}: unreadable rejected record: {exc}")
            continue
        if rejected.reason not in reasons:
            sel.skipped[f"reason {rejected.reason} not selected"] += 1
        elif since is not None and rejected.rejected_at < since:
            sel.skipped["rejected before --since"] += 1
        elif rejected.source.topic not in inputs:
            # E.g. a re-routed record that lost its origin headers, or a timer tick:
            # neither is a producer's record that could be sent again.
            sel.skipped["not from an input topic"] += 1
        else:
            parsed.append(rejected)
    parsed.sort(key=lambda r: (r.rejected_at, r.source))
    seen: set[SourceRef] = set()
    for rejected in parsed:
        if rejected.source in seen:
            sel.skipped["source record rejected more than once"] += 1
            continue
        seen.add(rejected.source)
        sel.replays.append(Replay(rejected, rejected.key, rejected.payload))
    return sel


def finish(sel: Selection, limit: int | None) -> list[Replay]:
    """Drop replays of a payload already selected, then apply `--limit`.

    The same bytes to the same topic under the same key are the same event (same id):
    typically an earlier replay rejected again because its cause was not fixed yet.
    Sending them once per run is enough, and keeps each run from doubling the
    rejections of a cause that is still there.
    """
    out: list[Replay] = []
    payloads: set[tuple[str, bytes | None, bytes]] = set()
    for replay in sel.replays:
        if replay.value is None:
            out.append(replay)  # its original could not be fetched: reported, not sent
            continue
        identity = (replay.rejected.source.topic, replay.key, replay.value)
        if identity in payloads:
            sel.skipped["same payload already selected"] += 1
            continue
        payloads.add(identity)
        out.append(replay)
    if limit is not None and len(out) > limit:
        sel.skipped["over --limit"] += len(out) - limit
        out = out[:limit]
    return out


def record_id(value: bytes | None) -> str:
    """The event_id or command_id in a payload, for the operator's eyes only."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return "?"
    if isinstance(body, dict):
        ident = body.get("event_id", body.get("command_id"))
        if isinstance(ident, str):
            return ident
    return "?"


@dataclass
class ReplayReport:
    dry_run: bool
    read: int = 0
    replayed: Counter[str] = field(default_factory=Counter)
    fetched: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        by_reason = ", ".join(f"{r} {n}" for r, n in sorted(self.replayed.items())) or "-"
        skipped = ", ".join(f"{why}: {n}" for why, n in sorted(self.skipped.items())) or "-"
        lines = [
            f"rejected records read: {self.read}",
            f"{verb}: {sum(self.replayed.values())} ({by_reason}); "
            f"originals read back from their source topic: {self.fetched}",
            f"skipped: {skipped}",
        ]
        lines.extend(f"WARNING {w}" for w in self.warnings)
        lines.extend(f"PROBLEM {p}" for p in self.problems)
        lines.append(f"problems: {len(self.problems)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ I/O


async def fetch_originals(
    bootstrap: str, refs: Sequence[SourceRef], within: float = 60.0, **client_options: Any
) -> dict[SourceRef, tuple[bytes | None, bytes | None]]:
    """The (key, value) at each ref that its topic still holds (retention may not)."""
    found: dict[SourceRef, tuple[bytes | None, bytes | None]] = {}
    if not refs:
        return found
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **client_options,
    )
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        for ref in sorted(set(refs)):
            tp = TopicPartition(ref.topic, ref.partition)
            consumer.assign([tp])
            start = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            if not start <= ref.offset < end:
                continue  # deleted by retention, or never there
            consumer.seek(tp, ref.offset)
            deadline = loop.time() + within
            while loop.time() < deadline and tp not in found:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                records = batch.get(tp, [])
                if records:
                    rec = records[0]
                    if rec.offset == ref.offset:
                        found[ref] = (rec.key, rec.value)
                    break  # a later offset first: compacted away or an aborted write
                if await consumer.position(tp) >= end:
                    break
    finally:
        await consumer.stop()
    return found


async def replay_rejected(
    bootstrap: str,
    names: TopicNames,
    *,
    reasons: frozenset[str] = DEFAULT_REASONS,
    since: datetime | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    within: float = 600.0,
    client_options: dict[str, Any] | None = None,
    force_too_old: bool = False,
) -> ReplayReport:
    """Read credits.rejected, select, and re-send (or, dry, only list) the originals.

    `force_too_old`: the records go back with `meter-force-too-old: 1`, which the
    processor honours on a replayed record only: it applies them without the age
    check (docs/contract.md, "Rejected records").
    """
    report = ReplayReport(dry_run=dry_run)
    options = client_options or {}
    rows = await read_topic(bootstrap, names.rejected, within=within, **options)
    sel = select(
        ((f"{r.topic}[{r.partition}]@{r.offset}", r.value) for r in rows),
        reasons=reasons,
        inputs=frozenset({names.calls, names.conferencing, names.commands}),
        since=since,
    )
    truncated = [r.rejected.source for r in sel.replays if r.value is None]
    originals = await fetch_originals(bootstrap, truncated, within=min(within, 60.0), **options)
    for i, replay in enumerate(sel.replays):
        original = originals.get(replay.rejected.source)
        if replay.value is None and original is not None:
            sel.replays[i] = Replay(replay.rejected, original[0], original[1], fetched=True)
    replays = finish(sel, limit)
    report.read, report.skipped, report.warnings = sel.read, sel.skipped, sel.warnings

    sendable: list[Replay] = []
    for replay in replays:
        if replay.value is None:
            report.problems.append(
                f"{replay.rejected.source}: the rejection kept only a prefix of the "
                f"{replay.rejected.payload_size or '?'} bytes, and the original could not "
                "be read back from the source topic (deleted by retention?); not replayed"
            )
        else:
            sendable.append(replay)
    for replay in sendable:
        r = replay.rejected
        echo(
            f"{'would replay' if dry_run else 'replay'} {r.source} reason={r.reason} "
            f"id={record_id(replay.value)} key={replay.key!r} ({len(replay.value or b'')} "
            f"bytes{', read back from the source' if replay.fetched else ''})"
        )
    report.fetched = sum(r.fetched for r in sendable)
    if dry_run:
        report.replayed.update(r.rejected.reason for r in sendable)
        return report

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options
    )
    await producer.start()
    try:
        pending = [
            (
                replay,
                await producer.send(
                    replay.rejected.source.topic,
                    replay.value,
                    key=replay.key,
                    headers=_headers(replay, force_too_old),
                ),
            )
            for replay in sendable
        ]
        for replay, fut in pending:
            try:
                await fut
            except KafkaError as exc:
                report.problems.append(f"{replay.rejected.source}: send failed: {exc!r}")
            else:
                report.replayed[replay.rejected.reason] += 1
    finally:
        await producer.stop()
    return report


def _headers(replay: Replay, force_too_old: bool) -> list[tuple[str, bytes]]:
    headers = [(REPLAY_HEADER, str(replay.rejected.source).encode())]
    if force_too_old:  # every replay: an old event rejected since for another reason too
        headers.append((H_FORCE_TOO_OLD, b"1"))
    return headers
