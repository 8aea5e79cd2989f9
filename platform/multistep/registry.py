"""What the kind registries share (data kinds: data/kinds.py; teacher kinds: teachers/kinds.py)."""

from __future__ import annotations


class FieldError(ValueError):
    """A kind's rule broken by one of its fields; the config reports it at <section>.<field> in one line."""

    def __init__(self, field: str, msg: str):
        super().__init__(msg)
        self.field = field


def register(registry: dict, entry, what: str):
    """Add `entry` (with a .name) to `registry`; a name registered twice is an error."""
    if entry.name in registry:
        raise ValueError(f"{what} {entry.name!r} registered twice")
    registry[entry.name] = entry
    return entry
