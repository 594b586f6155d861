"""Compiled shaping: one generated Python function per object shape, for long lists of rows.

The generic :meth:`Shaper.obj` walks a shape's entries for every row, asking each entry's kind,
looking its mask and serialiser up, and filling a dict key by key. For a page of 10,000 rows that
walk cost more than fetching the rows (measured: about half the gateway's time on the bulk
query). Here a shape's entries are turned once into the source of a function that builds the
object as one dict display, its masks resolved and bound, strings and integers passed through
without a call, so a row costs one call and the values' own work.

Only the *structure* of a shape (entry kinds, keys, columns, types, masks) goes into the
function, which is kept (bounded, least recently used first out) and reused by later requests of
the same kind; per-request entries (nested fetches, entity shapes, constants, withheld messages)
are passed in and handled by the Shaper's own methods, so the generic and compiled paths cannot
drift apart. Names, columns and values never enter the generated source: they are bound as
variables of the function's namespace. A shape with a non-null withheld field (whose null nulls
the whole object) is left to the generic path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from catalog.model import DataType
from gateway.plan import Conditional, Const, EntityRef, KeyValue, Nested, ObjShape, Scalar, Withheld
from policies.masks import Masker

if TYPE_CHECKING:
    from gateway.shape import PathLink, Shaper
    from resolvers.base import Row

__all__ = ["COMPILE_FROM", "CompiledShapes"]

# Lists shorter than this are shaped generically: compiling costs about as much as shaping a few
# dozen objects, and a lookup's lists hold a handful.
COMPILE_FROM = 64
_MAX_FUNCTIONS = 256

Build = Callable[["Row", "PathLink", "Shaper", list[Any]], "dict[str, Any] | None"]
_PASS_THROUGH = {DataType.STRING: "str", DataType.INTEGER: "int"}
_DELEGATED = {
    Conditional: "sh.conditional(E[{i}], row, path)",
    Nested: "sh.nested(E[{i}], row, (path, K{i}))",
    EntityRef: "sh.entity_ref(E[{i}], row, path)",
    KeyValue: "sh.key_value(E[{i}], row)",
    Withheld: "sh.withheld_value(E[{i}], path)",
    Const: "E[{i}].value",
}


def _signature(shape: ObjShape) -> tuple[Any, ...] | None:
    parts: list[tuple[Any, ...]] = []
    for e in shape.entries:
        if isinstance(e, Scalar):
            parts.append(("s", e.key, e.column, e.type, e.mask))
        elif isinstance(e, Withheld):
            if e.non_null:
                return None
            parts.append(("w", e.key))
        else:
            parts.append((type(e).__name__, e.key))
    return tuple(parts)


class CompiledShapes:
    """The compiled functions of one gateway (its masks are bound in: one masking key)."""

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self._functions: OrderedDict[tuple[Any, ...], Build] = OrderedDict()

    def __len__(self) -> int:
        return len(self._functions)

    def get(self, shape: ObjShape) -> Build | None:
        signature = _signature(shape)
        if signature is None:
            return None
        fn = self._functions.get(signature)
        if fn is None:
            fn = self._functions[signature] = self._compile(shape)
            if len(self._functions) > _MAX_FUNCTIONS:
                self._functions.popitem(last=False)
        else:
            self._functions.move_to_end(signature)
        return fn

    def _compile(self, shape: ObjShape) -> Build:
        from gateway.shape import SERIALISERS

        ns: dict[str, Any] = {"date": date}
        items: list[str] = []
        for i, e in enumerate(shape.entries):
            ns[f"K{i}"] = e.key
            value: str
            if isinstance(e, Scalar):
                ns[f"C{i}"], ns[f"S{i}"] = e.column, SERIALISERS[e.type]
                masked = ""
                if e.mask is not None:
                    ns[f"M{i}"] = self.masker.function(e.mask)
                    masked = f" or (v{i} := M{i}(v{i})) is None"
                kind = _PASS_THROUGH.get(e.type)
                if kind is not None:  # already of the answer's type (masks give strings): no call
                    serialised = f"v{i} if v{i}.__class__ is {kind} else S{i}(v{i})"
                elif e.type is DataType.DATE:
                    serialised = f"v{i}.isoformat() if v{i}.__class__ is date else S{i}(v{i})"
                else:
                    serialised = f"S{i}(v{i})"
                value = f"None if (v{i} := get(C{i})) is None{masked} else {serialised}"
            else:  # everything but a plain scalar is the Shaper's own method, given the entry
                value = _DELEGATED[type(e)].format(i=i)
            items.append(f"K{i}: ({value})")
        # Objects are counted against max_nodes by Shaper.objs, per list.
        source = ("def build(row, path, sh, E):\n"
                  "    get = row.get\n"
                  "    return {" + ", ".join(items) + "}\n")
        # The source comes from the fixed templates above; every name and value is in ns.
        exec(compile(source, "<hutong compiled shape>", "exec"), ns)
        build: Build = ns["build"]
        return build
