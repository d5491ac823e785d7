"""The unit balances are kept in, and the arithmetic that keeps them exact.

Pure: no Kafka, Faust or metrics.

Every balance is kept in the rate card's currency at its decimals, and each stored
account value says which (`StoredAccount.unit`). A worker started with a card in
another currency, or with fewer decimals than its accounts were kept at, would read
dollars as euros or round every balance again; `unit_problem` says so, and the worker
refuses to start (processor/worker/store.py, processor/ops/service_commands.py).

Balance arithmetic goes through `EXACT`, a context that traps every signal that
would change a result silently (inexact or rounded results, overflow, a float mixed
in), so a sum that could not be represented exactly raises instead of rounding under
Python's default 28-digit context. Rounding happens only where the rate card says,
through `RateCard.quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    Clamped,
    Context,
    Decimal,
    DivisionByZero,
    FloatOperation,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Subnormal,
    Underflow,
)
from typing import Final

# 64 significant digits: 36 more than the default context, far beyond any balance the
# contract's limits let a tenant reach (amounts of at most 1,000,000 at <= 12 places),
# so a signal below is a bug (a division, a float, a corrupt value), never a balance;
# it raises rather than rounding. (Not MAX_PREC: an inexact division would then try to
# allocate the whole precision and fail with MemoryError instead of Inexact.)
PRECISION: Final = 64
EXACT: Final = Context(
    prec=PRECISION,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[
        InvalidOperation,
        DivisionByZero,
        Overflow,
        Underflow,
        Subnormal,
        Clamped,
        Inexact,
        Rounded,
        FloatOperation,
    ],
)

# Zero, at no particular precision (a balance's zero at the card's decimals is
# `RateCard.zero`).
ZERO = Decimal(0)


@dataclass(init=False, unsafe_hash=True, slots=True)
class Unit:
    """What a balance's number means: a currency and the decimals it is kept at."""

    currency: Final[str]
    decimals: Final[int]

    def __init__(self, currency: str, decimals: int) -> None:
        self.currency = currency
        self.decimals = decimals

    def __str__(self) -> str:
        return f"{self.currency} at {self.decimals} decimals"


class UnitMismatch(ValueError):
    """Stored balances that the running rate card cannot take as they are."""


def unit_problem(stored: Unit | None, running: Unit, tenant: str | None = None) -> str | None:
    """Why balances kept in `stored` cannot be run with a card in `running`, or None.

    `stored` None is a value written before units were stored: it was written with
    the card of its time, taken to be the running one. More decimals than the
    balances were kept at is fine (every balance is exact at more places); fewer,
    or another currency, is not.
    """
    if stored is None or stored == running:
        return None
    whose = f"account {tenant!r}" if tenant is not None else "an account"
    if stored.currency != running.currency:
        return (
            f"{whose} is kept in {stored.currency}, but the rate card is in "
            f"{running.currency}: balances are never converted; start the worker with a "
            f"rate card in {stored.currency} (METER_RATE_CARD)"
        )
    if running.decimals < stored.decimals:
        return (
            f"{whose} is kept at {stored.decimals} decimals, but the rate card rounds to "
            f"{running.decimals}: balances are never rounded again; start the worker with a "
            f"rate card of at least {stored.decimals} decimals (METER_RATE_CARD)"
        )
    return None


def check_unit(stored: Unit | None, running: Unit, tenant: str | None = None) -> None:
    """Raise UnitMismatch when `unit_problem` finds one."""
    problem = unit_problem(stored, running, tenant)
    if problem is not None:
        raise UnitMismatch(problem)
