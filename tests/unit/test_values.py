"""The value classes: immutable by their `Final` fields, built field by field in order,
copied by `values.replace` as `dataclasses.replace` would."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from processor.core import values
from processor.core.state import (
    Account,
    AutoRecharge,
    Lot,
    Notifications,
    PendingRecharge,
)
from processor.core.stored import Position, StoredAccount
from processor.core.usage import MonthUsage
from processor.ops import compiled


def compiled_module_names() -> list[str]:
    """The modules `compiled.MODULES` names, a package's own modules each."""
    names: list[str] = []
    for path in compiled.MODULES:
        name = path.removesuffix("/").removesuffix(".py").replace("/", ".")
        if path.endswith("/"):
            package = importlib.import_module(name)
            names += [f"{name}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
        else:
            names.append(name)
    return names


def value_classes() -> list[type]:
    """The compiled modules' dataclasses hashed by their fields: the value classes."""
    found: list[type] = []
    for name in compiled_module_names():
        module = importlib.import_module(name)
        for cls in vars(module).values():
            params = getattr(cls, "__dataclass_params__", None)
            if (
                isinstance(cls, type)
                and cls.__module__ == module.__name__
                and params is not None
                and params.unsafe_hash
            ):
                found.append(cls)
    return found


VALUE_CLASSES = value_classes()


def test_the_value_classes_are_found() -> None:
    names = {cls.__name__ for cls in VALUE_CLASSES}
    assert {"Account", "StoredAccount", "Position", "LedgerOut", "Record", "Debit"} <= names


@pytest.mark.parametrize("cls", VALUE_CLASSES, ids=lambda cls: cls.__qualname__)
def test_a_value_class_is_immutable_and_built_in_field_order(cls: type) -> None:
    # mypy refuses an assignment to a Final field, and the compiled build makes them
    # read-only; `values.replace` passes the fields positionally, in their order.
    for f in dataclasses.fields(cls):
        assert str(f.type).startswith("Final["), f"{cls.__name__}.{f.name} is not Final"
    params = list(inspect.signature(cls).parameters)
    assert params == [f.name for f in dataclasses.fields(cls)]


def test_equal_values_are_equal_and_hash_alike() -> None:
    assert Position("calls:0", 5) == Position(tp="calls:0", offset=5)
    assert Position("calls:0", 5) != Position("calls:0", 6)
    assert {Position("calls:0", 5)} == {Position(tp="calls:0", offset=5)}


def test_replace_changes_only_the_named_fields() -> None:
    account = Account("t1", entries=3)
    moved = values.replace(account, entries=4)
    assert moved == dataclasses.replace(account, entries=4)
    assert account.entries == 3 and moved.tenant_id == "t1"
    stored = StoredAccount(account, seq=2)
    assert values.replace(stored, seq=3, epoch=1) == dataclasses.replace(stored, seq=3, epoch=1)
    assert values.replace(stored) == stored
    with pytest.raises(TypeError):
        values.replace(account, colour="red")
    with pytest.raises(TypeError):
        values.replace(object())


def test_an_accounts_move_copies_every_field_it_does_not_change() -> None:
    # Account.moved names each field: a field added to Account must be added there too.
    assert [f.name for f in dataclasses.fields(Account)] == [
        "tenant_id",
        "balance",
        "auto_recharge",
        "pending",
        "updated_at",
        "entries",
        "requests_issued",
        "status_seq",
        "credit_limit",
        "notify_below",
        "lots",
        "usage",
        "notifications",
    ]
    at = datetime(2026, 12, 7, tzinfo=UTC)
    account = Account(
        "t1",
        Decimal("5.0000"),
        AutoRecharge(True, Decimal("20.00"), Decimal("5.00")),
        PendingRecharge("r-1", Decimal("20.00"), 1, at),
        at,
        3,
        1,
        2,
        Decimal("1.0000"),
        Decimal("2.0000"),
        (Lot("l-1", Decimal("5.0000"), at),),
        (MonthUsage(202612),),
        Notifications(("a@example.com",), None, None, ("recharge_failed",), "n-1"),
    )
    later = at + timedelta(seconds=1)
    lots = (Lot("l-1", Decimal("4.0000"), at),)
    usage = (MonthUsage(202612), MonthUsage(202611))
    assert account.moved(Decimal("4.0000"), 4, later, lots, usage) == dataclasses.replace(
        account, balance=Decimal("4.0000"), entries=4, updated_at=later, lots=lots, usage=usage
    )
