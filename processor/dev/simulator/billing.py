"""The simulated billing system's memory: each recharge request charged at most once."""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from processor.dev.simulator.contract import FAILURE_REASONS
from processor.dev.simulator.events import make_funds_added, make_recharge_failed


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
