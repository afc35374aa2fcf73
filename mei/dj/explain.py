"""Why a computed table of mei has nothing to compute: which linked tables are empty, and how
to fill them. Used by ``populate()`` (a warning) and the command line (one line)."""

from __future__ import annotations

import contextlib
from typing import Any

LINKS = ("method_table", "seed_table", "trained_model_table", "selector_table")
"""The tables an MEI table's keys come from."""


def empty_inputs(table: Any) -> list[Any]:
    """For an MEI table: its linked tables (instances) that have no rows, so no keys."""
    empty = []
    for link in LINKS:
        linked = getattr(table, link, None)
        if linked is None:
            continue
        instance = linked() if isinstance(linked, type) else linked
        with contextlib.suppress(Exception):
            if len(instance) == 0:
                empty.append(instance)
    return empty


def how_to_fill(table: Any) -> str:
    name = type(table).__name__
    if hasattr(table, "add_method"):
        return f'{name}().add_method("mei.methods.gradient_ascent", config)'
    if name == "MEISeed":
        return f'{name}().insert1({{"mei_seed": 42}})'
    if hasattr(table, "create_ensemble"):
        return f"{name}().create_ensemble(key)"
    if hasattr(table, "make"):
        return f"{name}().populate()"
    return f"{name}().insert(...)"


def why_nothing_to_compute(table: Any) -> str:
    """Why ``table`` has no keys to compute: which linked tables are empty, and how to fill
    them."""
    empty = empty_inputs(table)
    if not empty:
        return "its key source is empty"
    names = ", ".join(type(t).__name__ for t in empty)
    verb = "has" if len(empty) == 1 else "have"
    fixes = "; ".join(how_to_fill(t) for t in empty)
    return f"{names} {verb} no rows: fill {'it' if len(empty) == 1 else 'them'}, e.g. {fixes}"
