"""Every option of a sweep file, its type, default and meaning, read from the pydantic models (their
`Field(description=...)`): `multistep sweep --options` prints it, docs/config.md is it."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from multistep.config.schema import Axis, SweepCfg
from multistep.data import DATA_KINDS
from multistep.methods import METHODS

HEADER = """# Sweep file options

Every key of a sweep file (`multistep sweep FILE`), generated from the config models by
`multistep sweep --options > docs/config.md` (a test checks that this file is current). A trial file is the same
without the sweep-level keys. `data:` and `method:` are flat sections: the section's own keys plus the keys of
the chosen data kind (data/<kind>.py) or method (methods/<name>.py).
"""


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bounds(metadata) -> str:
    """' (>= 1)', ' (> 0, <= 1)' of a constrained type's metadata (annotated_types Ge, Gt, Le, Lt)."""
    parts = [f"{op} {getattr(m, k):g}" for m in metadata for k, op in _BOUNDS.items() if hasattr(m, k)]
    return f" ({', '.join(parts)})" if parts else ""


def _type(a, metadata=()) -> str:
    """A readable type: int (>= 1), 'uniform' | 'lognormal', list[float], Axis | None."""
    origin, args = typing.get_origin(a), typing.get_args(a)
    if origin is typing.Annotated:
        inner = [m for x in args[1:] for m in (getattr(x, "metadata", None) or [x])]
        return _type(args[0]) + _bounds(inner)
    if origin is typing.Literal:
        text = " | ".join(repr(x) for x in args)
    elif origin is typing.Union or isinstance(a, types.UnionType):
        text = " | ".join(_type(x) for x in args)
    elif origin in (list, dict, tuple):
        text = f"{origin.__name__}[{', '.join(_type(x) for x in args)}]"
    elif a is type(None):
        text = "None"
    elif a is typing.Any:
        text = "any"
    else:
        text = getattr(a, "__name__", str(a))
    return text + _bounds(metadata)


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models a field holds: Model, Model | None, or a (discriminated) union of models."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models(args[0])
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return [m for a in args for m in _models(a)]
    return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def _variant(model: type[BaseModel]) -> str:
    """How a union's member is chosen: `name: loglinear` (its Literal name), else its class name."""
    name = model.model_fields.get("name")
    values = typing.get_args(name.annotation) if name is not None else ()
    return f"name: {values[0]}" if len(values) == 1 else model.__name__


def _default(info) -> str:
    if info.is_required():
        return "(required)"
    d: Any = info.get_default(call_default_factory=True)
    if isinstance(d, BaseModel):
        return ""
    return f"`{d!r}`"


def _rows(model: type[BaseModel], prefix: str, skip: frozenset = frozenset()) -> list[str]:
    rows, nested = [], []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        if subs := _models(info.annotation):
            for sub in subs:
                title = f"{prefix}{name}" if len(subs) == 1 else f"{prefix}{name}` with `{_variant(sub)}"
                nested.append((title, sub, info.description or "", f"{prefix}{name}"))
            continue
        desc = (info.description or "").replace("|", "\\|")
        kind = _type(info.annotation, info.metadata).replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{kind}` | {_default(info)} | {desc} |")
    out = rows
    for title, sub, desc, key in nested:
        out += _section(sub, key, desc, title)
    return out


def _section(model: type[BaseModel], key: str, desc: str = "", title: str = "") -> list[str]:
    lines = ["", f"## `{title or key}`", ""]
    if doc := (model.__doc__ or "").strip():
        lines += [" ".join(doc.split()), ""]
    if desc:
        lines += [desc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += _rows(model, f"{key}.")
    if key == "data":
        for name, kind in DATA_KINDS.items():
            lines += ["", f"`data.kind: {name}` adds:", "", "| key | type | default | meaning |", "|---|---|---|---|"]
            lines += _rows(kind.options, "data.")
    if key == "method":
        for name, spec in METHODS.items():
            if spec.options.model_fields:
                lines += [
                    "",
                    f"`method.name: {name}` adds:",
                    "",
                    "| key | type | default | meaning |",
                    "|---|---|---|---|",
                ]
                lines += _rows(spec.options, "method.")
    return lines


def reference() -> str:
    """The whole reference as Markdown."""
    top = [HEADER, "## Top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    axis = _section(
        Axis,
        "<axis>",
        "The value of each `search:` key (a dotted config path) and of each `scheduler.mutations:` key.",
        "search axes",
    )
    return "\n".join(top + _rows(SweepCfg, "") + axis) + "\n"
