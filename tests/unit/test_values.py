"""Frozen values with a fast `__init__` behave exactly as the dataclass would build them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from processor.core import values
from processor.core.state import Account
from processor.core.stored import Position, StoredAccount
from processor.core.values import fast_init


@dataclass(frozen=True, slots=True)
class Plain:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()
    seen: list[str] = field(default_factory=list)


@fast_init
@dataclass(frozen=True, slots=True)
class Fast:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()
    seen: list[str] = field(default_factory=list)


def fields_of(value: Any) -> dict[str, object]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("a",), {}),
        (("a", 3), {}),
        (("a",), {"tags": ("x",)}),
        ((), {"name": "a", "count": 2, "tags": ("x", "y"), "seen": ["z"]}),
        (("a", 1, ("t",), ["s"]), {}),
    ],
)
def test_builds_what_the_dataclass_would(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    assert fields_of(Fast(*args, **kwargs)) == fields_of(Plain(*args, **kwargs))


def test_refuses_what_the_dataclass_refuses() -> None:
    with pytest.raises(TypeError):
        Fast()  # type: ignore[call-arg]  # the missing argument is the test
    with pytest.raises(TypeError):
        Fast("a", colour="red")  # type: ignore[call-arg]  # the unknown keyword is the test
    with pytest.raises(TypeError):
        Fast("a", 1, (), [], "extra")  # type: ignore[call-arg]  # one too many is the test


def test_stays_frozen_hashable_and_comparable() -> None:
    value = Fast("a", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.count = 2  # type: ignore[misc]  # writing a frozen field is the test
    assert value == Fast("a", 1) and value != Fast("a", 2)
    assert hash(Position("calls:0", 5)) == hash(Position("calls:0", 5))
    assert {Position("calls:0", 5)} == {Position(tp="calls:0", offset=5)}


def test_a_default_factory_gives_each_value_its_own() -> None:
    first, second = Fast("a"), Fast("b")
    assert first.seen == [] and first.seen is not second.seen


def test_replace_changes_only_the_named_fields() -> None:
    account = Account("t1", entries=3)
    moved = values.replace(account, entries=4)
    assert moved == dataclasses.replace(account, entries=4)
    assert account.entries == 3 and moved.tenant_id == "t1"
    stored = StoredAccount(account, seq=2)
    assert values.replace(stored, seq=3, epoch=1) == dataclasses.replace(stored, seq=3, epoch=1)
    with pytest.raises(TypeError):
        values.replace(account, colour="red")
    with pytest.raises(TypeError):
        values.replace(Plain("a"), count=1)


def test_refuses_classes_it_would_build_differently() -> None:
    @dataclass(slots=True)
    class Mutable:
        name: str

    @dataclass(frozen=True, slots=True)
    class Checked:
        name: str

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        name: str

    for cls in (Mutable, Checked, KeywordOnly):
        with pytest.raises(TypeError):
            fast_init(cls)
