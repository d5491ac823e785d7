"""What the engine answers for one input: its status, the outputs to publish, and why
it was rejected or ignored."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from processor.core.outputs import Output
from processor.core.state import Account
from processor.core.values import fast_init


class Status(StrEnum):
    APPLIED = "applied"  # took effect (possibly a zero charge: no entry, nothing else)
    DUPLICATE = "duplicate"  # seen before within the dedupe window; nothing changed
    REJECTED = "rejected"  # not applied; goes to credits.rejected for a later replay
    IGNORED = "ignored"  # valid but moot: a stale answer or timer; nothing changed
    REPLAYED = "replayed"  # already in the balance (re-read after a crash); outputs again


@fast_init
@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


@fast_init
@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    tenant_id: str
    outputs: tuple[Output, ...] = ()
    rejection: Rejection | None = None
    # Why an ignored input was moot, for logs and metrics.
    note: str | None = None
    account: Account | None = None
    # The account value's write counter after this input (0: nothing written).
    seq: int = 0
    # What became of a recharge request (fulfilled, failed, ...), for metrics.
    recharge: tuple[str, ...] = ()
