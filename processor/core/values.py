"""Frozen value classes that are cheap to build, for the per-record path.

A `dataclass(frozen=True, slots=True)` sets each field in `__init__` through
`object.__setattr__`, looked up and called per field, several times what a plain
class costs, and a usage record builds about sixteen of them (its position, account,
stored value, ledger entry, outputs...). `fast_init` replaces that `__init__` with one
that writes each slot through its own descriptor, which a frozen class's `__setattr__`
does not stand in front of: the same signature, defaults and immutability, for less.
`replace` is `dataclasses.replace` for such classes, cheaper because it does not walk
the fields and build keyword arguments on every call. The figures are in
docs/performance.md ("Figures behind design choices").
"""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T", bound=type)
V = TypeVar("V")

# Per class given a fast __init__: a function building a copy with some fields changed.
_REPLACERS: dict[type, Any] = {}


def fast_init(cls: T) -> T:
    """Give a frozen, slotted dataclass a faster `__init__` of the same signature.

    Apply it on top of `@dataclass(frozen=True, slots=True)`. Only plain fields are
    supported (positional-or-keyword, with or without a default or default factory);
    anything else raises at import rather than building values differently.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if not is_dataclass(cls) or params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__}: fast_init is for frozen, slotted dataclasses")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: fast_init does not call __post_init__")
    namespace: dict[str, Any] = {"_MISSING": MISSING, "_cls": cls, "_new": object.__new__}
    args: list[str] = []
    body: list[str] = []
    keeps: list[str] = []
    copies: list[str] = []
    for f in fields(cls):
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: fast_init needs plain init fields")
        name = f.name
        namespace[f"_set_{name}"] = vars(cls)[name].__set__
        value = name
        if f.default is not MISSING:
            namespace[f"_default_{name}"] = f.default
            args.append(f"{name}=_default_{name}")
        elif f.default_factory is not MISSING:
            namespace[f"_factory_{name}"] = f.default_factory
            args.append(f"{name}=_MISSING")
            value = f"_factory_{name}() if {name} is _MISSING else {name}"
        else:
            args.append(name)
        body.append(f"    _set_{name}(self, {value})")
        keeps.append(f"{name}=_MISSING")
        copies.append(f"    _set_{name}(new, self.{name} if {name} is _MISSING else {name})")
    source = f"def __init__(self, {', '.join(args)}):\n" + ("\n".join(body) or "    pass") + "\n"
    source += f"def replace(self, *, {', '.join(keeps)}):\n" if keeps else "def replace(self):\n"
    source += "    new = _new(_cls)\n" + "".join(c + "\n" for c in copies) + "    return new\n"
    exec(source, namespace)  # noqa: S102 - built from the class's own field names
    _REPLACERS[cls] = namespace["replace"]
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses a method assignment
    return cls


def replace(obj: V, **changes: Any) -> V:
    """`dataclasses.replace` for a class given `fast_init`: a copy with `changes`."""
    replacer = _REPLACERS.get(type(obj))
    if replacer is None:
        raise TypeError(f"{type(obj).__name__} was not given fast_init")
    return replacer(obj, **changes)  # type: ignore[no-any-return]
