"""Glue between the engine and the DataJoint tables: hashing and model loading with a cache.

Nothing here imports DataJoint; the tables in :mod:`mei.main` use these helpers.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
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


def hash_list_of_dictionaries(list_of_dicts: Iterable[Mapping[str, Any]]) -> str:
    """The hash of a set of keys: order and duplicates do not matter.

    The dictionaries are deduplicated and sorted by their own :func:`make_hash`; the result is
    the :func:`make_hash` of that list. This is how ``ensemble_hash`` is computed from the
    primary keys of an ensemble's members.
    """
    by_hash = {make_hash(d): d for d in list_of_dicts}
    return make_hash([by_hash[h] for h in sorted(by_hash)])


class ModelLoader:
    """Loads ``(dataloaders, model)`` for a key through ``load`` and keeps the last few.

    ``load_model(key)`` is called for keys not in the cache; ``primary_key`` names the key
    attributes that identify a model (the trained model table's primary key). At most
    ``cache_size_limit`` models are kept, least recently used dropped first; ``0`` disables
    the cache. :meth:`load` returns a deep copy of the cached model, so a run that moves,
    trains or otherwise changes its model never changes the cached one. Dataloaders are shared,
    not copied: methods only read from them. ``hits`` and ``misses`` count cache lookups.
    """

    def __init__(
        self,
        load_model: Callable[[dict[str, Any]], Any],
        primary_key: Iterable[str],
        cache_size_limit: int = 10,
    ):
        if int(cache_size_limit) < 0:
            raise ValueError(f"cache_size_limit must be >= 0, got {cache_size_limit!r}")
        self.load_model = load_model
        self.primary_key = list(primary_key)
        self.cache_size_limit = int(cache_size_limit)
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(load_model={self.load_model!r}, "
            f"primary_key={self.primary_key!r}, cache_size_limit={self.cache_size_limit}, "
            f"cached={len(self.cache)}, hits={self.hits}, misses={self.misses})"
        )

    def model_key(self, key: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``key`` that identifies a model."""
        missing = [k for k in self.primary_key if k not in key]
        if missing:
            raise KeyError(f"key {dict(key)!r} lacks the model key attributes {missing}")
        return {k: key[k] for k in self.primary_key}

    def load(self, key: Mapping[str, Any]) -> Any:
        """``(dataloaders, model)`` for ``key``; the model is a private copy."""
        model_key = self.model_key(key)
        if self.cache_size_limit == 0:
            self.misses += 1
            return self.load_model(model_key)
        cache_key = make_hash(model_key)
        if cache_key in self.cache:
            self.hits += 1
            self.cache.move_to_end(cache_key)
        else:
            self.misses += 1
            self.cache[cache_key] = self.load_model(model_key)
            while len(self.cache) > self.cache_size_limit:
                self.cache.popitem(last=False)
        dataloaders, model = self.cache[cache_key]
        return dataloaders, copy.deepcopy(model)

    def clear(self) -> None:
        """Forget all cached models."""
        self.cache.clear()
