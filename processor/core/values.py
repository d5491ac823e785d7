"""Copies of the value classes with some fields changed, for the per-record path.

The value classes (position, account, stored value, ledger entry, outputs...) are
dataclasses with `Final` fields and an `__init__` of their own: mypy refuses any
assignment to them, and the compiled build (processor/ops/compiled.py) makes them
native classes whose attributes cannot be set. Neither a class decorator mypyc does
not know nor an `__init__` left to `dataclasses` would: either keeps the class built by
interpreted code (docs/performance.md, "The value classes native"). `replace` is
`dataclasses.replace` for them, cheaper because it does not walk the fields and build
keyword arguments on every call.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

V = TypeVar("V")

# Per class: a function building a copy with some fields changed.
_REPLACERS: dict[type, Any] = {}


def _replacer(cls: type) -> Any:
    if not is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    names = [f.name for f in fields(cls)]
    keeps = ", ".join(f"{name}=_MISSING" for name in names)
    args = ", ".join(f"self.{name} if {name} is _MISSING else {name}" for name in names)
    source = f"def replace(self, *, {keeps}):\n    return _cls({args})\n"
    namespace: dict[str, Any] = {"_MISSING": MISSING, "_cls": cls}
    exec(source, namespace)  # noqa: S102 - built from the class's own field names
    return namespace["replace"]


def replace(obj: V, **changes: Any) -> V:
    """`dataclasses.replace` for the value classes: a copy with `changes`."""
    cls = type(obj)
    replacer = _REPLACERS.get(cls)
    if replacer is None:
        replacer = _REPLACERS[cls] = _replacer(cls)
    return replacer(obj, **changes)  # type: ignore[no-any-return]
