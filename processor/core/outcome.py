"""What the engine answers for one input: its status, the outputs to publish, and why
it was rejected or ignored."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from processor.core.outputs import Output
from processor.core.state import Account


class Status(StrEnum):
    APPLIED = "applied"  # took effect (possibly a zero charge: no entry, nothing else)
    DUPLICATE = "duplicate"  # seen before within the dedupe window; nothing changed
    REJECTED = "rejected"  # not applied; goes to credits.rejected for a later replay
    IGNORED = "ignored"  # valid but moot: a stale answer or timer; nothing changed
    REPLAYED = "replayed"  # already in the balance (re-read after a crash); outputs again


@dataclass(init=False, unsafe_hash=True, slots=True)
class Rejection:
    reason: Final[str]
    detail: Final[str]

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


@dataclass(init=False, unsafe_hash=True, slots=True)
class Outcome:
    status: Final[Status]
    tenant_id: Final[str]
    outputs: Final[tuple[Output, ...]]
    rejection: Final[Rejection | None]
    # Why an ignored input was moot, for logs and metrics.
    note: Final[str | None]
    account: Final[Account | None]
    # The account value's write counter after this input (0: nothing written).
    seq: Final[int]
    # What became of a recharge request (fulfilled, failed, ...), for metrics.
    recharge: Final[tuple[str, ...]]

    def __init__(
        self,
        status: Status,
        tenant_id: str,
        outputs: tuple[Output, ...] = (),
        rejection: Rejection | None = None,
        note: str | None = None,
        account: Account | None = None,
        seq: int = 0,
        recharge: tuple[str, ...] = (),
    ) -> None:
        self.status = status
        self.tenant_id = tenant_id
        self.outputs = outputs
        self.rejection = rejection
        self.note = note
        self.account = account
        self.seq = seq
        self.recharge = recharge
