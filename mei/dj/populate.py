"""Populate MEI tables at scale: many neurons per batch, many workers per table.

:func:`populate` fills an MEI table like DataJoint's ``populate`` does, but groups the pending
keys that share everything but the neuron (method, model, seed, and selector outputs that wrap
the same model the same way) and optimizes each group in one batched engine run
(:func:`mei.dj.run.compute`); each key still gets its own row, inserted in its own transaction
after re-checking what was fetched. Keys that cannot share a run run alone; rows equal what
unbatched populate stores.

With ``reserve_jobs=True`` any number of workers on any number of machines share the work
through DataJoint's job tables (:meth:`mei.dj.backend.Backend.jobs`): every key is reserved
before it is computed, errors are recorded with key and traceback, and
:func:`mei.dj.recovery.recover` returns the keys of dead workers to the queue.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..progress import progress_bar
from . import run
from .backend import backend
from .hashing import make_hash

Key = dict[str, Any]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- grouping
def _group_key(table: Any, key: Key) -> str:
    """Keys with the same group key differ only in selector attributes (the neuron)."""
    neuron = set(table.selector_table.primary_key) - set(table.trained_model_table.primary_key)
    neuron -= set(table.method_table.primary_key) | set(table.seed_table.primary_key)
    return make_hash({k: v for k, v in key.items() if k not in neuron})


def _groups(table: Any, keys: Sequence[Key]) -> list[list[Key]]:
    groups: OrderedDict[str, list[Key]] = OrderedDict()
    for key in keys:
        groups.setdefault(_group_key(table, key), []).append(key)
    return list(groups.values())


def _same_inputs(table: Any, items: Sequence[tuple[Key, Any, Any]]) -> None:
    """Raise if the method or seed of a key changed while its MEI was computed.

    Keys fetched with the same method and seed are checked once, through one of them.
    """
    checked: dict[str, Key] = {}
    for key, fetched, _ in items:
        checked.setdefault(make_hash(fetched), key)
    for fetched_hash, key in checked.items():
        if make_hash(table.make_fetch(key)) != fetched_hash:
            raise RuntimeError(f"the method or seed of {key!r} changed while its MEI was computed")


def _insert(table: Any, items: Sequence[tuple[Key, Any, Any]]) -> list[Key]:
    """Insert computed keys ``(key, fetched, result)`` in one transaction, all or none.

    Re-checks the fetched inputs first; keys already in the table (somebody else computed
    them) are skipped. Returns the keys inserted. If the transaction fails, the files it wrote
    for keys that have no row are removed before the exception propagates.
    """
    keys = [key for key, _, _ in items]
    try:
        with backend().allow_insert(table), table.connection.transaction:
            present = {make_hash(k) for k in backend().keys(table & keys)}
            _same_inputs(table, items)
            inserted = []
            for key, _, result in items:
                if make_hash(key) not in present:
                    table.make_insert(key, *result)
                    inserted.append(key)
        return inserted
    except BaseException:
        for key in keys:
            try:
                if key not in table:
                    backend().remove_key_files(table, key)
            except Exception:  # the store or the connection is gone: recover() cleans up
                logger.warning("could not remove the files of %s", key, exc_info=True)
        raise


def _insert_each(
    table: Any, items: Sequence[tuple[Key, Any, Any]]
) -> tuple[list[Key], list[tuple[Key, Exception]]]:
    """Insert a batch in one transaction; if that fails, each key in its own, so that a key
    that cannot be stored fails alone. Returns the keys inserted and the failures."""
    try:
        return _insert(table, items), []
    except Exception as e:
        if len(items) == 1:
            e.__mei_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            return [], [(items[0][0], e)]
        logger.warning("inserting %d keys together failed; inserting them one by one", len(items))
    inserted: list[Key] = []
    failed: list[tuple[Key, Exception]] = []
    for item in items:
        done, errors = _insert_each(table, [item])
        inserted += done
        failed += errors
    return inserted, failed


# --------------------------------------------------------------------------- populate
def populate(
    table: Any,
    *restrictions: Any,
    batch_size: int = 64,
    reserve_jobs: bool = False,
    suppress_errors: bool = False,
    max_calls: int | None = None,
    display_progress: bool | None = None,
    order: str = "original",
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Fill ``table`` for its pending keys, ``batch_size`` neurons per engine run.

    Returns ``{"success_count": n, "error_list": [(key, message), ...], "keys": [...]}`` like
    DataJoint, plus the keys inserted.
    ``max_calls`` caps the number of keys taken; ``order`` is ``"original"`` or ``"random"``
    (random group order spreads concurrent workers over different groups); ``stop`` is polled
    between batches. Without ``suppress_errors`` the first failing key raises after its error
    is recorded and the other reserved keys are given back.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if order not in ("original", "random"):
        raise ValueError(f"order must be 'original' or 'random', got {order!r}")
    todo = backend().todo(table, restrictions)
    queue = backend().jobs(table) if reserve_jobs else None
    keys = queue.pending(todo) if queue is not None else backend().keys(todo)
    groups = _groups(table, keys)
    if order == "random":
        random.shuffle(groups)
    batches = [g[i : i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    total = len(keys) if max_calls is None else min(len(keys), max_calls)
    done, inserted = 0, []
    errors: list[tuple[Key, str]] = []
    started = time.monotonic()
    with progress_bar(
        enabled=display_progress, total=total, desc=type(table).__name__, unit="MEI"
    ) as bar:
        for batch in batches:
            if done + len(errors) >= total or (stop is not None and stop()):
                break
            batch = batch[: total - done - len(errors)]
            taken = [k for k in batch if queue is None or queue.reserve(k)]
            if not taken:
                continue
            pending_keys = list(taken)
            try:
                outcomes = run.compute(table, taken)
                computed = []
                failed: list[tuple[Key, Exception]] = []
                for key, outcome in zip(taken, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        failed.append((key, outcome))
                    else:
                        computed.append((key, *outcome))
                stored, not_stored = _insert_each(table, computed) if computed else ([], [])
                unstored = {id(key) for key, _ in not_stored}
                succeeded = [key for key, *_ in computed if id(key) not in unstored]
                if queue is not None:
                    queue.complete_many(succeeded)
                for key in succeeded:
                    pending_keys.remove(key)
                failed += not_stored
                done += len(stored)
                inserted += stored
                for key, error in failed:
                    message = f"{type(error).__name__}: {error}"
                    if queue is not None:
                        queue.error(key, message[:2047], getattr(error, "__mei_traceback__", ""))
                    pending_keys.remove(key)
                    errors.append((key, message))
                if bar is not None and succeeded:
                    bar.update(len(succeeded))
                    rate = done / max(time.monotonic() - started, 1e-9) * 60
                    bar.set_postfix_str(f"{rate:.1f} MEIs/min")
                if failed and not suppress_errors:
                    raise failed[0][1]
            finally:
                if queue is not None:
                    for key in pending_keys:  # interrupted: give the rest back
                        queue.release(key)
    return {"success_count": done, "error_list": errors, "keys": inserted}
