"""Fast constructors of frozen slotted dataclasses: the one implementation.

The generated ``__init__`` of a frozen dataclass sets each field through
``object.__setattr__``; writing the slots directly builds the same object for less
(``bench/construct.py``; docs/benchmarks.md). The few objects made once per datagram (the
envelope, ``Ping``, ``Ack``, ``SendDatagram``, ``DatagramReceived``) are built with a
constructor from :func:`fast_constructor`; ``tests/core/test_fast_construct.py`` checks
that each one gives an object equal to the plain constructor's.

Only for frozen slotted dataclasses without a ``__post_init__`` (which the fast path
would skip): :func:`fast_constructor` refuses anything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

FAST_CONSTRUCTORS: dict[type[Any], Callable[..., Any]] = {}
"""Every fast constructor made, by class (what the equality test walks)."""


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """A function ``(field values, positionally, all of them) -> cls instance`` that
    writes the slots directly; the object equals ``cls(*values)``."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__ the fast path would skip")
    fields = [field.name for field in dataclasses.fields(cls)]
    # One function per class, written out as dataclasses writes ``__init__``: a loop over
    # the setters would cost more than the generated ``__init__`` it replaces.
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = [f"def new_{cls.__name__}({', '.join(fields)}):", "    instance = new(cls)"]
    for name in fields:
        namespace[f"set_{name}"] = vars(cls)[name].__set__
        lines.append(f"    set_{name}(instance, {name})")
    lines.append("    return instance")
    exec("\n".join(lines), namespace)  # the source is built from field names only
    build: Callable[..., T] = namespace[f"new_{cls.__name__}"]
    build.__doc__ = f"``{cls.__name__}(...)`` built slot by slot (meshgpu.core.fast_construct)."
    FAST_CONSTRUCTORS[cls] = build
    return build
