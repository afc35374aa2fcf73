"""Small helpers the original library's tables used, at their old names.

:func:`import_module` imports a method function from its dotted path (``MEIMethod.import_func``);
:func:`load_pickled_data` and :func:`get_mappings` read the pickled datafiles of a ``csrf_v1``
dataset into the rows of a CSRF V1 objective (selector) table. Nothing here imports DataJoint.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any

from ..import_helpers import resolve_path

__all__ = ["get_mappings", "import_module", "load_pickled_data"]


def import_module(path: str) -> Any:
    """The object a dotted path such as ``"mei.methods.gradient_ascent"`` names.

    Despite its (original) name it returns the object, not its module.
    """
    return resolve_path(path)


def load_pickled_data(path: str) -> Any:
    """Unpickle the file at ``path`` (a trusted datafile: unpickling runs code)."""
    with open(path, "rb") as datafile:
        return pickle.load(datafile)


def get_mappings(
    dataset_config: Mapping[str, Any],
    key: Mapping[str, Any],
    load_func: Callable[[str], Any] = load_pickled_data,
) -> list[dict[str, Any]]:
    """One row per neuron of every datafile of a ``csrf_v1`` dataset.

    ``dataset_config["datafiles"]`` lists the files; each holds ``unit_indices`` (the neuron
    ids, in the order of the model's outputs for that session) and ``session_id``. A row is
    ``key`` plus ``neuron_id``, ``neuron_position`` (the neuron's index in its session's
    output) and ``session_id``.
    """
    rows = []
    for path in dataset_config["datafiles"]:
        data = load_func(path)
        for position, neuron_id in enumerate(data["unit_indices"]):
            rows.append(
                dict(
                    key,
                    neuron_id=neuron_id,
                    neuron_position=position,
                    session_id=data["session_id"],
                )
            )
    return rows
