"""processor/kafka/glue/ reaches into the libraries' private members: an upgrade that
moves one must fail here, loudly, before it fails in the fault suite."""

from __future__ import annotations

import ast
import inspect
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from processor.kafka import glue
from processor.kafka.glue import transactions_v2

# The glue is a package: every module of it.
GLUE_SOURCE = "\n".join(
    path.read_text(encoding="utf-8") for path in sorted(Path(glue.__file__).parent.glob("*.py"))
)
# Private names of the glue's own making (its own classes' members), not the libraries'.
OWN = {"_count", "_pause_here"}


@pytest.mark.parametrize("distribution", sorted(glue.VERSIONS))
def test_the_installed_libraries_are_those_the_glue_was_written_against(
    distribution: str,
) -> None:
    assert version(distribution) == glue.VERSIONS[distribution], (
        f"{distribution} is {version(distribution)}, the glue was written against "
        f"{glue.VERSIONS[distribution]}: check every reach in processor/kafka/glue/ "
        "against the new sources, then update VERSIONS"
    )


def _reach_id(reach: glue.Reach) -> str:
    return f"{reach.owner.__qualname__}.{reach.name}"


@pytest.mark.parametrize("reach", glue.REACHES, ids=_reach_id)
def test_each_private_member_the_glue_reaches_is_where_it_expects(reach: glue.Reach) -> None:
    if reach.kind == "method":
        member = inspect.getattr_static(reach.owner, reach.name, None)
        assert member is not None, f"{_reach_id(reach)} is gone ({reach.why})"
        found = getattr(reach.owner, reach.name)
        assert callable(found)
        if reach.params is not None:
            params = tuple(inspect.signature(found).parameters)
            assert params == reach.params, f"{_reach_id(reach)}{params} ({reach.why})"
        return
    if reach.kind == "class attribute":
        assert name_on_class(reach.owner, reach.name), f"{_reach_id(reach)} is gone ({reach.why})"
        return
    assigned = re.compile(rf"\bself\.{re.escape(reach.name)}\s*(:[^=\n]*)?=[^=]")
    places = [
        cls.__dict__[reach.set_in]
        for cls in reach.owner.__mro__
        if reach.set_in in cls.__dict__ and cls is not object
    ]
    assert any(assigned.search(inspect.getsource(place)) for place in places), (
        f"no {reach.owner.__qualname__}.{reach.set_in} assigns self.{reach.name} ({reach.why})"
    )


def name_on_class(owner: type[Any], name: str) -> bool:
    return any(name in vars(cls) for cls in owner.__mro__)


def _private_names_used() -> set[str]:
    """Every `x._name` and every `"_name"` string (getattr, setattr) in the glue."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(GLUE_SOURCE)):
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        else:
            continue
        if re.fullmatch(r"_[A-Za-z]\w*", name) and not name.startswith("__"):
            names.add(name)
    return names


def test_every_private_member_the_glue_uses_is_listed_in_its_reaches() -> None:
    listed = {reach.name for reach in glue.REACHES}
    state = {"_" + name for name in glue.CONSUMER_STATE}
    # `set_consumer_state` prefixes its names with "_": each is a listed reach too.
    assert state <= listed
    unlisted = _private_names_used() - listed - OWN - {"_"}
    assert not unlisted, f"private members the glue uses but REACHES does not list: {unlisted}"


def test_the_overrides_override_something() -> None:
    # An override of a method the library renamed would silently never be called.
    for cls in (
        glue.FetchLoop,
        glue.ConsumerThread,
        glue.MainLoopConsumer,
        transactions_v2.SenderV2,
        transactions_v2.ProduceV2Handler,
        transactions_v2.EndTxnV2Handler,
    ):
        for name, member in vars(cls).items():
            if name.startswith("_") and not name.startswith("__") and callable(member):
                if name in OWN:
                    continue
                base: Any = cls.__mro__[1]
                assert hasattr(base, name), f"{cls.__name__}.{name} overrides nothing"
                assert name in {reach.name for reach in glue.REACHES}, name
