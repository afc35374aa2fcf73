"""Content hashes of configs and keys, identical to NNFabrik's.

Nothing here imports DataJoint: ``method_hash`` and ``ensemble_hash`` are plain md5 digests.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any


def make_hash(obj: Any) -> str:
    """A 32-character md5 hex digest identifying the content of ``obj``.

    Reproduces NNFabrik's ``make_hash`` exactly, because it defines the ``method_hash`` values
    already stored in lab databases: a string hashes its encoded text; a mapping hashes
    ``str(key)`` and the hash of each value, keys sorted by ``str`` (an ``OrderedDict`` keeps its
    order); any other iterable hashes the hash of each element in order; anything else hashes
    ``str(obj)``.
    """
    hashed = hashlib.md5()
    if isinstance(obj, str):
        hashed.update(obj.encode())
    elif isinstance(obj, OrderedDict):
        for k, v in obj.items():
            hashed.update(str(k).encode())
            hashed.update(make_hash(v).encode())
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            hashed.update(str(k).encode())
            hashed.update(make_hash(obj[k]).encode())
    elif isinstance(obj, Iterable):
        for v in obj:
            hashed.update(make_hash(v).encode())
    else:
        hashed.update(str(obj).encode())
    return hashed.hexdigest()


def find_unhashable(obj: Any, where: str) -> tuple[str, Any] | None:
    """Where :func:`make_hash` fails in ``obj``: ``(location, value)`` of the first value it
    cannot hash, or ``None``.

    NNFabrik's ``make_hash`` (which this reproduces) iterates every iterable down to its
    elements; iterating a 0-d tensor or array raises ``TypeError``. So no torch tensor (its
    elements are 0-d tensors) and no 0-d numpy array can be hashed; numpy arrays of one or
    more dimensions can (their elements are numpy scalars, hashed by ``str``).
    """
    if isinstance(obj, str):
        return None
    if isinstance(obj, Mapping):
        children: Iterable[tuple[str, Any]] = ((f"{where}[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, Iterable):  # arrays, tensors: named as a whole
        try:
            make_hash(obj)
        except TypeError:
            return where, obj
        return None
    else:
        return None
    for location, value in children:
        found = find_unhashable(value, location)
        if found is not None:
            return found
    return None


def hash_list_of_dictionaries(list_of_dicts: Iterable[Mapping[str, Any]]) -> str:
    """The hash of a set of keys: order and duplicates do not matter.

    The dictionaries are deduplicated and sorted by their own :func:`make_hash`; the result is
    the :func:`make_hash` of that list. This is how ``ensemble_hash`` is computed from the
    primary keys of an ensemble's members.
    """
    by_hash = {make_hash(d): d for d in list_of_dicts}
    return make_hash([by_hash[h] for h in sorted(by_hash)])
