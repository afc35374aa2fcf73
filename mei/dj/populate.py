"""Populate MEI tables at scale: many neurons per batch, many workers per table.

:func:`populate` fills an MEI table like DataJoint's ``populate`` does, but groups the pending
keys that share everything but the neuron (method, model, seed, and selector outputs that wrap
the same model the same way) and optimizes each group in one batched engine run
(:func:`mei.dj.run.compute`); each key still gets its own row. A batch's rows and files go
in one transaction and one insert statement after re-checking what was fetched (if that
fails, key by key). Keys that cannot share a run run alone; rows equal what unbatched
populate stores. Every populate runs in :func:`mei.dj.backend.populate_session`. A table
with ``batch_group(key)`` and ``compute_many(keys, fatal=)`` (the MEI validation table) groups
and computes its keys itself and goes through the same reserve, insert and error path.

With ``reserve_jobs=True`` any number of workers on any number of machines share the work
through DataJoint's job tables (:meth:`mei.dj.backend.Backend.jobs`): every key is reserved
before it is computed, errors are recorded with key and traceback, and
:func:`mei.dj.recovery.recover` returns the keys of dead workers to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from ..config import parse_device
from ..errors import ConfigError, DeviceUnavailableError, StoreUnavailableError
from ..progress import progress_bar
from . import run
from .backend import (
    JobQueue,
    backend,
    discard_files,
    file_journal,
    leftover_files,
    populate_session,
    worker_liveness,
)
from .faults import fault, reason
from .hashing import make_hash
from .store import check_store, describe, store_spec, wait_for_store

Key = dict[str, Any]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- grouping
def _group_key(table: Any, key: Key) -> str:
    """Keys with the same group key differ only in selector attributes (the neuron); a table
    with ``batch_group(key)`` (a validation table: the validating model) says itself."""
    batch_group = getattr(table, "batch_group", None)
    if batch_group is not None:
        return make_hash(batch_group(key))
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


class Stored(NamedTuple):
    """What became of a batch handed to :func:`_insert`."""

    inserted: list[Key]
    """Keys whose rows this call committed."""
    done: list[Key]
    """Keys now in the table (``inserted`` and those somebody else had inserted)."""
    lost: list[Key]
    """Keys whose reservation this worker no longer holds: left to their new owner."""


def _insert(table: Any, items: Sequence[tuple[Key, Any, Any]], queue: JobQueue | None) -> Stored:
    """Insert computed keys ``(key, fetched, result)`` in one transaction, all or none.

    With a job ``queue``, the job rows of the keys are locked first, and only keys still
    reserved by this worker are inserted (a worker that lost its connection may have lost
    them to :func:`mei.dj.recovery.recover`). Re-checks the fetched inputs; keys already in the
    table are skipped. If the transaction fails, the files it stored for keys that have no
    row are removed before the exception propagates (if the connection was lost, only after
    reconnecting: the commit may have gone through).
    """
    be = backend()
    keys = [key for key, _, _ in items]
    hashes = [make_hash(key) for key in keys]
    new: list[tuple[Key, Any]] = []  # the keys to insert and their results
    written: list[tuple[Any, ...]] = []  # the files stored for them
    try:
        with be.allow_insert(table), table.connection.transaction:
            owned = queue.lock_reserved(keys) if queue is not None else keys
            owned_hashes = {make_hash(k) for k in owned}
            present = {make_hash(k) for k in be.keys(table & keys)} if keys else set()
            mine = [h in owned_hashes for h in hashes]
            _same_inputs(table, [item for item, m in zip(items, mine, strict=True) if m])
            new = [
                (key, result)
                for (key, _, result), h, m in zip(items, hashes, mine, strict=True)
                if m and h not in present
            ]
            with file_journal() as written:
                many = getattr(table, "make_insert_many", None)
                if many is not None:  # the rows and files of the batch in one statement
                    many([(key, *result) for key, result in new])
                else:
                    for key, result in new:
                        table.make_insert(key, *result)
        inserted = [key for key, _ in new]
        lost = [k for k, m in zip(keys, mine, strict=True) if not m]
        if lost:
            logger.warning(
                "%d key(s) were given to another worker while this one computed them "
                "(its connection was lost): not inserted here",
                len(lost),
            )
        return Stored(inserted, [k for k, m in zip(keys, mine, strict=True) if m], lost)
    except BaseException as e:
        if be.is_connection_error(e):
            _reconnect(table, queue)
        if written:
            # The batch's rows committed together or not at all (a lost connection may have
            # let the commit through): its files go unless its rows are there.
            try:
                if not be.keys(table & [k for k, _ in new]):
                    discard_files(table, written, e)
            except Exception:  # the store or the connection is gone: recover() cleans up
                logger.warning("could not remove the files of %d key(s)", len(new), exc_info=True)
        raise


def _reconnect(table: Any, queue: JobQueue | None) -> None:
    """Open a new session after a lost connection."""
    logger.warning("the database connection was lost: reconnecting")
    backend().reconnect(table.connection)


def _insert_each(
    table: Any, items: Sequence[tuple[Key, Any, Any]], queue: JobQueue | None
) -> tuple[Stored, list[tuple[Key, Exception]]]:
    """Insert a batch in one transaction; if that fails, each key in its own, so that a key
    that cannot be stored fails alone. Returns what was stored and the failures. A lost
    connection is not a key's failure: it propagates."""
    try:
        return _insert(table, items, queue), []
    except Exception as e:
        if backend().is_connection_error(e) or fault(e) is not None:
            raise  # the connection or the store failed, not a key
        if len(items) == 1:
            e.__mei_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            return Stored([], [], []), [(items[0][0], e)]
        logger.warning("inserting %d keys together failed; inserting them one by one", len(items))
    stored = Stored([], [], [])
    failed: list[tuple[Key, Exception]] = []
    for item in items:
        one, errors = _insert_each(table, [item], queue)
        stored = Stored(*(a + b for a, b in zip(stored, one, strict=True)))
        failed += errors
    return stored, failed


STORE_OUTAGE_WAIT = 300.0
"""Seconds a populate waits for its store to come back after it failed mid-batch (connection
refused, timeouts, server errors) before it gives up on the batch."""


def _store_failure(table: Any, error: BaseException) -> StoreUnavailableError:
    """The store failed for good while a batch was stored: what to tell the user."""
    name = str(getattr(table, "storage", ""))
    try:
        where = describe(name, store_spec(name))
    except Exception:
        where = repr(name)
    why = reason(error)
    if fault(error) == "transient":
        why += f", and was not back within {STORE_OUTAGE_WAIT:g} s"
    return StoreUnavailableError(f"the store {where} {why}", store=name, reason=why)


def _remove_leftovers(left: list[tuple[Any, list[tuple[Any, ...]]]]) -> None:
    """Remove the files a failed attempt could not remove while the store was out."""
    for table, entries in left:
        try:
            backend().remove_files(table, entries)
        except Exception:
            logger.warning("could not remove %d stray file(s): recover() will", len(entries))


def _insert_batch(
    table: Any, items: Sequence[tuple[Key, Any, Any]], queue: JobQueue | None
) -> tuple[Stored, list[tuple[Key, Exception]]]:
    """:func:`_insert_each`, riding out a store outage: if the store fails while the batch is
    stored, wait for it (up to :data:`STORE_OUTAGE_WAIT` seconds), remove what the failed
    attempt wrote, and store the batch again (it is computed: nothing is recomputed). Raises
    :class:`mei.errors.StoreUnavailableError` if the store refuses the work (credentials,
    bucket, permissions) or does not come back; files that could not be removed are left for
    :func:`mei.dj.recovery.recover`."""
    for attempt in range(2):
        with leftover_files() as left:
            try:
                return _insert_each(table, items, queue)
            except Exception as e:
                kind = fault(e)
                if kind is None:
                    raise
                error: Exception = e
        if kind != "transient" or attempt == 1:
            break
        logger.warning(
            "the store failed while %d key(s) were stored (%s): waiting up to %g s for it",
            len(items),
            reason(error),
            STORE_OUTAGE_WAIT,
        )
        if not wait_for_store(table, STORE_OUTAGE_WAIT):
            break
        logger.warning("the store is back: storing the batch again")
        _remove_leftovers(left)
    raise _store_failure(table, error) from error


# --------------------------------------------------------------------------- devices
def _unavailable(device: Any) -> str | None:
    """Why ``device`` cannot be used here, or ``None`` if it can (or is not a torch device
    name at all: then it is the method's own business)."""
    try:
        parse_device(device, check_exists=False)
    except ConfigError:
        return None
    try:
        parse_device(device)
    except ConfigError as e:
        return str(e).removeprefix("config['device']: ")
    return None


def check_devices(table: Any, *restrictions: Any) -> None:
    """Refuse, before anything is reserved, to populate keys whose device this machine lacks.

    With the MEI table's ``device`` override set, that device must exist here; otherwise the
    ``device`` of every method row that a pending key of ``table`` (under ``restrictions``)
    uses must. Raises :class:`mei.errors.DeviceUnavailableError` naming the device, the method
    rows and the override attribute that would redirect them.
    """
    name = f"{type(table).__name__}.device"
    override = getattr(table, "device", None)
    if override is not None:
        reason = _unavailable(override)
        if reason is not None:
            raise DeviceUnavailableError(
                f"the device override {name} = {override!r} is not available here ({reason}); "
                f"no key was reserved. Set {name} (or `mei worker --device`) to a device this "
                "machine has, or to None to use each method's own device",
                device=str(override),
                override=name,
            )
        return
    be = backend()
    method_table = table.method_table()
    names = list(method_table.primary_key)
    todo = be.todo(table, restrictions)
    methods_of = getattr(table, "methods_of", None)  # a table whose methods go by other names
    needed = method_table & (methods_of(todo) if callable(methods_of) else todo.proj())
    by_device: dict[str, list[dict[str, Any]]] = {}
    reasons: dict[str, str | None] = {}
    for row in be.to_dicts(needed):
        config = row.get("method_config")
        device = config.get("device") if isinstance(config, Mapping) else None
        if device is None:
            continue
        if str(device) not in reasons:
            reasons[str(device)] = _unavailable(device)
        if reasons[str(device)] is not None:
            by_device.setdefault(str(device), []).append({n: row[n] for n in names})
    if not by_device:
        return
    device, methods = next(iter(by_device.items()))
    shown = ", ".join(repr(m) for m in methods[:3])
    if len(methods) > 3:
        shown += f" and {len(methods) - 3} more"
    rows = f"method row {shown} asks" if len(methods) == 1 else f"method rows {shown} ask"
    other = [d for d in by_device if d != device]
    others = f" (other rows ask for {other}, also missing)" if other else ""
    raise DeviceUnavailableError(
        f"{rows} for device {device!r} ({type(method_table).__name__}), which this machine "
        f"lacks: {reasons[device]}{others}. No key was reserved. To run them here, set the "
        f"device override {name} to a device this machine has (e.g. {name} = 'cpu', or "
        "`mei worker --device cpu`), or restrict the keys to other methods",
        device=device,
        methods=methods,
        override=name,
    )


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
    is recorded and the other reserved keys are given back. Keys whose method asks for a
    device this machine lacks are refused first, before anything is reserved
    (:func:`check_devices`), and so is a store that does not take files
    (:func:`mei.dj.store.check_store`). If the store fails mid-run, the batch in hand waits for
    it (:data:`STORE_OUTAGE_WAIT`); if it does not come back, or refuses the work, each key of
    the batch gets one error record with one line and
    :class:`mei.errors.StoreUnavailableError` is raised (also with ``suppress_errors``: the
    next keys would fail the same way).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if order not in ("original", "random"):
        raise ValueError(f"order must be 'original' or 'random', got {order!r}")
    be = backend()
    with populate_session(table.connection, f"{type(table).__name__}.populate"):
        check_devices(table, *restrictions)
        check_store(table)  # before a key is reserved, not after it is computed
        queue = be.jobs(table) if reserve_jobs else None
        if queue is None:
            return _populate(
                table, restrictions, None, int(batch_size), suppress_errors, max_calls,
                display_progress, order, stop,
            )  # fmt: skip
        be.sync_session(table.connection)
        with worker_liveness(table.connection):
            return _populate(
                table, restrictions, queue, int(batch_size), suppress_errors, max_calls,
                display_progress, order, stop,
            )  # fmt: skip


MAX_RECONNECTS = 3
"""Consecutive batches a worker may lose its connection in before it gives up."""


def _populate(
    table: Any,
    restrictions: tuple[Any, ...],
    queue: JobQueue | None,
    batch_size: int,
    suppress_errors: bool,
    max_calls: int | None,
    display_progress: bool | None,
    order: str,
    stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    be = backend()
    todo = be.todo(table, restrictions)
    keys = queue.pending(todo) if queue is not None else be.keys(todo)
    groups = _groups(table, keys)
    if order == "random":
        random.shuffle(groups)
    batches = [g[i : i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    total = len(keys) if max_calls is None else min(len(keys), max_calls)
    done, inserted, reconnects = 0, [], 0
    errors: list[tuple[Key, str]] = []
    started = time.monotonic()
    with progress_bar(
        enabled=display_progress, total=total, desc=type(table).__name__, unit="MEI"
    ) as bar:
        for batch in batches:
            if done + len(errors) >= total or (stop is not None and stop()):
                break
            batch = batch[: total - done - len(errors)]
            if queue is not None:
                be.sync_session(table.connection)  # DataJoint may have reconnected on its own
            taken = batch if queue is None else queue.reserve_many(batch)
            if not taken:
                continue
            pending_keys = list(taken)
            try:
                compute = getattr(table, "compute_many", None)
                outcomes = (
                    compute(taken, fatal=be.is_connection_error)
                    if compute is not None
                    else run.compute(table, taken, fatal=be.is_connection_error)
                )
                computed = []
                failed: list[tuple[Key, Exception]] = []
                for key, outcome in zip(taken, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        failed.append((key, outcome))
                    else:
                        computed.append((key, *outcome))
                try:
                    stored, not_stored = (
                        _insert_batch(table, computed, queue)
                        if computed
                        else (Stored([], [], []), [])
                    )
                except StoreUnavailableError as e:
                    _record_store_failure(
                        table, queue, [k for k, *_ in computed], failed, e, pending_keys, errors
                    )
                    raise
                if queue is not None:
                    queue.complete_many(stored.done)
                for key in stored.done + stored.lost:
                    pending_keys.remove(key)
                done += len(stored.inserted)
                inserted += stored.inserted
                for key, error in [*failed, *not_stored]:
                    message = f"{type(error).__name__}: {error}"
                    if queue is not None:
                        queue.error(key, message[:2047], getattr(error, "__mei_traceback__", ""))
                    pending_keys.remove(key)
                    errors.append((key, message))
                if bar is not None and stored.inserted:
                    bar.update(len(stored.inserted))
                    rate = done / max(time.monotonic() - started, 1e-9) * 60
                    bar.set_postfix_str(f"{rate:.1f} MEIs/min")
                reconnects = 0
                if (failed or not_stored) and not suppress_errors:
                    raise [*failed, *not_stored][0][1]
            except Exception as e:
                if not be.is_connection_error(e):
                    raise
                reconnects += 1
                if reconnects > MAX_RECONNECTS:
                    raise WorkerConnectionError(
                        f"lost the database connection in {reconnects} batches in a row; "
                        f"{len(pending_keys)} reserved key(s) of the last batch go back to the "
                        "queue when this worker's session ends (recover() returns them)"
                    ) from e
                with contextlib.suppress(Exception):
                    _reconnect(table, queue)
                with contextlib.suppress(Exception):  # rows it committed before the loss
                    committed = be.keys(table & pending_keys) if pending_keys else []
                    if queue is not None:
                        queue.complete_many(committed)
                    for key in committed:
                        pending_keys.remove(key)
                logger.warning("continuing after a lost database connection", exc_info=True)
            finally:
                if queue is not None and pending_keys:  # interrupted: give back what is ours
                    try:
                        queue.release_own(pending_keys)
                    except Exception as e:
                        if not be.is_connection_error(e):
                            raise
                        logger.warning(
                            "could not give back %d key(s) (connection lost); they return to "
                            "the queue with recover() once this session is gone",
                            len(pending_keys),
                        )
    return {"success_count": done, "error_list": errors, "keys": inserted}


def _record_store_failure(
    table: Any,
    queue: JobQueue | None,
    keys: list[Key],
    failed: list[tuple[Key, Exception]],
    error: StoreUnavailableError,
    pending_keys: list[Key],
    errors: list[tuple[Key, str]],
) -> None:
    """The store failed for good while ``keys`` were stored: one error record (one line) per
    key that has no row, the key's own error for the ``failed`` ones."""
    be = backend()
    try:
        done = {make_hash(k) for k in be.keys(table & keys)} if keys else set()
    except Exception:
        done = set()
    line = f"{type(error).__name__}: {error}"[:2047]
    outcome = [(k, line) for k in keys if make_hash(k) not in done]
    outcome += [(k, f"{type(e).__name__}: {e}"[:2047]) for k, e in failed]
    if queue is not None:
        queue.complete_many([k for k in keys if make_hash(k) in done])
    for key in keys:
        if make_hash(key) in done:
            pending_keys.remove(key)
    for key, message in outcome:
        if queue is not None:
            queue.error(key, message, "")
        pending_keys.remove(key)
        errors.append((key, message))
    logger.error("%s: %d key(s) recorded as errors", line, len(outcome))


class WorkerConnectionError(RuntimeError):
    """A worker lost its database connection again and again and stopped."""
