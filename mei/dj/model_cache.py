"""Models for keys, loaded once and handed out as private copies.

Nothing here imports DataJoint: the MEI table gives :class:`ModelLoader` its trained model
table, whose ``load_model`` loads a model.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .hashing import make_hash


class ModelLoader:
    """Loads ``(dataloaders, model)`` for a key through ``load`` and keeps the last few.

    Two ways to make one:

    - ``ModelLoader(model_table, cache_size_limit=10)``, as in the original library: models
      come from ``model_table().load_model(key=...)`` (a trained model table class, e.g. your
      ``TrainedEnsembleModel``), and its primary key identifies a model;
    - ``ModelLoader(load_model, primary_key, cache_size_limit=10)``: ``load_model(key)`` is
      called with the part of a key named by ``primary_key``.

    At most ``cache_size_limit`` models are kept, least recently used dropped first; ``0``
    disables the cache. :meth:`load` returns a deep copy of the cached model, so a run that
    moves, trains or otherwise changes its model never changes the cached one. Dataloaders are
    shared, not copied: methods only read from them. ``hits`` and ``misses`` count cache
    lookups.
    """

    def __init__(
        self,
        load_model: Any,
        primary_key: Iterable[str] | int | None = None,
        cache_size_limit: int = 10,
    ):
        if isinstance(primary_key, int) and not isinstance(primary_key, bool):
            cache_size_limit, primary_key = primary_key, None  # ModelLoader(table, 10)
        if int(cache_size_limit) < 0:
            raise ValueError(f"cache_size_limit must be >= 0, got {cache_size_limit!r}")
        self.model_table: Any = None
        """The trained model table of the original form, else ``None``."""
        self._primary_key: list[str] | None = None
        if primary_key is None:  # the original form: a trained model table
            if not hasattr(load_model, "load_model"):
                raise TypeError(
                    "ModelLoader(model_table, cache_size_limit) needs a table with load_model(), "
                    f"got {load_model!r}; or pass ModelLoader(load_model, primary_key)"
                )
            self.model_table = load_model
            self.load_model: Callable[[dict[str, Any]], Any] = self._load_from_table
        elif isinstance(primary_key, int):  # a bool
            raise TypeError(f"primary_key must be attribute names, got {primary_key!r}")
        else:
            self.load_model = load_model
            self._primary_key = list(primary_key)
        self.cache_size_limit = int(cache_size_limit)
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _table(self) -> Any:
        table = self.model_table
        return table() if isinstance(table, type) else table

    def _load_from_table(self, key: dict[str, Any]) -> Any:
        return self._table().load_model(key=key)

    @property
    def primary_key(self) -> list[str]:
        """The key attributes that identify a model (of a table: read on first use)."""
        if self._primary_key is None:
            self._primary_key = list(self._table().primary_key)
        return self._primary_key

    @primary_key.setter
    def primary_key(self, names: Iterable[str]) -> None:
        self._primary_key = list(names)

    def __repr__(self) -> str:
        source = (
            f"model_table={self.model_table!r}"
            if self.model_table is not None
            else f"load_model={self.load_model!r}, primary_key={self._primary_key!r}"
        )
        return (
            f"{type(self).__name__}({source}, cache_size_limit={self.cache_size_limit}, "
            f"cached={len(self.cache)}, hits={self.hits}, misses={self.misses})"
        )

    def model_key(self, key: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``key`` that identifies a model."""
        missing = [k for k in self.primary_key if k not in key]
        if missing:
            raise KeyError(f"key {dict(key)!r} lacks the model key attributes {missing}")
        return {k: key[k] for k in self.primary_key}

    def load(self, key: Mapping[str, Any], device: str | None = None) -> Any:
        """``(dataloaders, model)`` for ``key``; the model is a private copy.

        With ``device`` (e.g. ``"cuda:0"``), a cached ``torch.nn.Module`` is moved there once
        and copied there for each key: a GPU worker does not copy the model from the host
        for every key. A device that is not available here is left to the run to refuse.
        """
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
        if device is not None:
            _move(model, device)
        return dataloaders, copy.deepcopy(model)

    def clear(self) -> None:
        """Forget all cached models."""
        self.cache.clear()


def _move(model: Any, device: str) -> None:
    """Move the module ``model`` to ``device`` in place, if it is a module, the device
    exists and its parameters are elsewhere."""
    if not isinstance(model, torch.nn.Module):
        return
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError):
        return
    if target.type == "cuda":
        if not torch.cuda.is_available():
            return
        index = torch.cuda.current_device() if target.index is None else target.index
        target = torch.device("cuda", index)
    if any(p.device != target for p in itertools.chain(model.parameters(), model.buffers())):
        model.to(target)
