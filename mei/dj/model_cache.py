"""Models for keys, loaded once and handed out as private copies.

Nothing here imports DataJoint: the MEI table gives :class:`ModelLoader` its trained model
table's ``load_model``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .hashing import make_hash


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
