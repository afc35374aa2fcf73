"""Populate MEI tables at scale: many neurons per batch, many workers per table.

:func:`populate` fills an MEI table like DataJoint's ``populate`` does, but groups the pending
keys that share everything but the neuron (method, model, seed, and selector outputs that wrap
the same model the same way) and optimizes each group in one batched engine run
(:func:`mei.methods.gradient_ascent_units`); each key still gets its own row, inserted in its
own transaction after re-checking what was fetched. Keys that cannot share a run run alone;
rows equal what unbatched populate stores.

With ``reserve_jobs=True`` any number of workers on any number of machines share the work
through DataJoint's job tables (2.x: the table's ``jobs``; 0.14: the schema's ``~jobs``):
every key is reserved before it is computed, errors are recorded with key and traceback, and
:func:`recover` returns the keys of dead workers to the queue and removes the files they may
have left in the store. :func:`run_worker` is the loop one process per GPU runs.
"""

from __future__ import annotations

import logging
import numbers
import os
import random
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _dj
from .integration import make_hash
from .modules import ConstrainedOutputModel
from .progress import progress_bar

logger = logging.getLogger(__name__)

Key = dict[str, Any]


# --------------------------------------------------------------------------- job queues
class JobQueue:
    """Reservations for one computed table, the same calls on both DataJoint generations."""

    def __init__(self, table: Any):
        self.table = table
        if _dj.IS_DJ2:
            if table._jobs is None:
                # `table.jobs` would declare the jobs table on first access, racing with the
                # other workers that start at the same moment: declare it here, tolerantly.
                from datajoint.jobs import Job

                jobs = Job(table)
                _declare_concurrently(jobs)
                table._jobs = jobs
            self.jobs = table.jobs
        else:
            self.jobs = table.connection.schemas[table.database].jobs
            self.table_name = table.table_name

    def pending(self, todo: Any) -> list[Key]:
        """Keys of ``todo`` (key source minus done) that nobody reserved, failed or ignored."""
        if _dj.IS_DJ2:
            self.jobs.refresh(delay=-1)
            pending = (self.jobs.pending & "scheduled_time <= CURRENT_TIMESTAMP(3)").restrict(
                todo, semantic_check=False
            )
            names = self.table.primary_key
            return [
                {n: k[n] for n in names} for k in pending.keys(order_by="priority, scheduled_time")
            ]
        from datajoint.hash import key_hash

        excluded = set(
            (
                self.jobs
                & {"table_name": self.table_name}
                & 'status in ("error", "ignore", "reserved")'
            ).fetch("key_hash")
        )
        return [k for k in _dj.keys(todo) if key_hash(k) not in excluded]

    def reserve(self, key: Key) -> bool:
        if _dj.IS_DJ2:
            return self.jobs.reserve(key)
        return self.jobs.reserve(self.table_name, key)

    def complete(self, key: Key) -> None:
        if _dj.IS_DJ2:
            self.jobs.complete(key)
        else:
            self.jobs.complete(self.table_name, key)

    def error(self, key: Key, message: str, stack: str) -> None:
        if _dj.IS_DJ2:
            self.jobs.error(key, error_message=message, error_stack=stack)
        else:
            self.jobs.error(self.table_name, key, error_message=message, error_stack=stack)

    def release(self, key: Key) -> None:
        """Give a reserved key back to the queue without computing it."""
        if _dj.IS_DJ2:
            (self.jobs & self.jobs._get_pk(key)).delete_quick()
            self.jobs.refresh(delay=-1)
        else:
            self.jobs.complete(self.table_name, key)  # 0.14: no row means available

    def reserved(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        """Reserved jobs older than ``older_than`` seconds (server time): ``key`` and
        ``connection_id`` of the connection that reserved it."""
        seconds = float(older_than)
        if _dj.IS_DJ2:
            query = self.jobs.reserved
            if seconds > 0:
                interval = self.jobs.adapter.interval_expr(seconds, "second")
                query = query & f"reserved_time < CURRENT_TIMESTAMP(3) - {interval}"
            names = self.table.primary_key
            return [
                {"key": {n: r[n] for n in names}, "connection_id": int(r["connection_id"] or 0)}
                for r in _dj.to_dicts(query)
            ]
        query = self.jobs & {"table_name": self.table_name} & 'status="reserved"'
        if seconds > 0:
            query = query & f"timestamp < CURRENT_TIMESTAMP - INTERVAL {seconds} SECOND"
        return [
            {"key": dict(r["key"]), "connection_id": int(r["connection_id"])}
            for r in query.fetch(as_dict=True)
        ]


def _declare_concurrently(jobs: Any, attempts: int = 10) -> None:
    """Declare a 2.x jobs table that several workers may be declaring at the same moment."""
    for attempt in range(attempts):
        if jobs.is_declared:
            return
        try:
            jobs.declare()
            return
        except Exception:  # another worker won the race (or is half-way): look again
            if attempt == attempts - 1 and not jobs.is_declared:
                raise
            time.sleep(0.1 * (attempt + 1))


def _live_connection_ids(connection: Any) -> set[int]:
    """Ids of the connections the database server has open now (every user's)."""
    postgres = _dj.IS_DJ2 and "postgres" in type(connection.adapter).__name__.lower()
    sql = (
        "SELECT pid FROM pg_stat_activity"
        if postgres
        else "SELECT ID FROM information_schema.PROCESSLIST"
    )
    return {int(row[0]) for row in connection.query(sql).fetchall()}


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


def _batch_plan(model: Any, selected: Sequence[Any]) -> tuple[Any, Any, list[int]] | None:
    """``(target_fn, forward_kwargs, units)`` if every selected model picks one int unit of
    ``model`` the same way, else ``None``."""
    if not all(isinstance(s, ConstrainedOutputModel) for s in selected):
        return None
    first = selected[0]
    for s in selected:
        if (
            s.model is not model
            or not isinstance(s.constraint, numbers.Integral)
            or s.target_fn is not first.target_fn
            or s.forward_kwargs != first.forward_kwargs
        ):
            return None
    return first.target_fn, first.forward_kwargs, [int(s.constraint) for s in selected]


def _keyed(method_config: Mapping[str, Any]) -> bool:
    """Whether some component receives the MEI's key (then configs differ per key)."""
    from .mixins import KEYED_COMPONENTS

    return any(
        isinstance(method_config.get(n), Mapping)
        and "key" in (method_config[n].get("kwargs") or {})
        for n in KEYED_COMPONENTS
    )


def compute_batch(table: Any, keys: Sequence[Key]) -> list[Any]:
    """Compute the MEIs of ``keys``: one batched run where they can share one, else one by one.

    Returns, per key, ``(fetched, (mei, score, output))`` or the exception it raised.
    """
    from .mixins import check_result, validate_method

    fetched = [table.make_fetch(k) for k in keys]
    if len(keys) > 1 and len({make_hash(f) for f in fetched}) == 1:
        method_fn, method_config, seed = fetched[0]
        fn = validate_method(method_fn, method_config, check_config=False)
        batched = getattr(fn, "batched", None)
        if batched is not None and not _keyed(method_config):
            dataloaders, model = table.model_loader.load(keys[0])
            selector = table.selector_table()
            selected = [selector.get_output_selected_model(model, k) for k in keys]
            plan = _batch_plan(model, selected)
            if plan is not None:
                target_fn, forward_kwargs, units = plan
                config = table.run_config(method_config, keys[0])
                try:
                    results = batched(
                        dataloaders,
                        model,
                        config,
                        seed,
                        units,
                        target_fn=target_fn,
                        forward_kwargs=forward_kwargs,
                    )
                    return [
                        (f, check_result(method_fn, r, k))
                        for f, r, k in zip(fetched, results, keys, strict=True)
                    ]
                except Exception:
                    logger.warning(
                        "batched run of %d keys failed; computing them one by one to find the "
                        "failing key(s)",
                        len(keys),
                        exc_info=True,
                    )
    outcomes: list[Any] = []
    for f, key in zip(fetched, keys, strict=True):
        try:
            outcomes.append((f, table.make_compute(key, *f)))
        except Exception as e:
            e.__mei_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            outcomes.append(e)
    return outcomes


def _insert(table: Any, key: Key, fetched: Any, result: Any) -> bool:
    """Insert one computed key in its own transaction after re-checking its inputs.

    Returns ``False`` if the key was already there (somebody else computed it).
    """
    cls = type(table)
    cls._allow_insert = True
    try:
        with table.connection.transaction:
            if key in table:
                return False
            if make_hash(table.make_fetch(key)) != make_hash(fetched):
                raise RuntimeError(
                    f"the method or seed of {key!r} changed while its MEI was computed"
                )
            table.make_insert(key, *result)
        return True
    finally:
        cls._allow_insert = False


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
    todo = table._jobs_to_do(restrictions) - table.proj()
    queue = JobQueue(table) if reserve_jobs else None
    keys = queue.pending(todo) if queue is not None else _dj.keys(todo)
    groups = _groups(table, keys)
    if order == "random":
        random.shuffle(groups)
    batches = [g[i : i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    total = len(keys) if max_calls is None else min(len(keys), max_calls)
    done, errors, inserted = 0, [], []
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
                outcomes = compute_batch(table, taken)
                for key, outcome in zip(taken, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        message = f"{type(outcome).__name__}: {outcome}"
                        stack = getattr(outcome, "__mei_traceback__", "")
                        if queue is not None:
                            queue.error(key, message[:2047], stack)
                        pending_keys.remove(key)
                        errors.append((key, message))
                        if not suppress_errors:
                            raise outcome
                        continue
                    fetched, result = outcome
                    if _insert(table, key, fetched, result):
                        done += 1
                        inserted.append(key)
                    if queue is not None:
                        queue.complete(key)
                    pending_keys.remove(key)
                    if bar is not None:
                        bar.update(1)
                        rate = done / max(time.monotonic() - started, 1e-9) * 60
                        bar.set_postfix_str(f"{rate:.1f} MEIs/min")
            finally:
                if queue is not None:
                    for key in pending_keys:  # interrupted: give the rest back
                        queue.release(key)
    return {"success_count": done, "error_list": errors, "keys": inserted}


# --------------------------------------------------------------------------- recovery
def _store_dirs_2x(table: Any, key: Key) -> tuple[Any, str]:
    """The store backend and the folder that holds ``key``'s files (DataJoint 2.x)."""
    from datajoint.hash_registry import get_store_backend
    from datajoint.storage import build_object_path

    config = table.connection._config
    spec = config.get_store_spec(table.storage)
    path, _ = build_object_path(
        schema=table.database,
        table=table.class_name,
        field="x",
        primary_key={k: key[k] for k in table.primary_key},
        ext=None,
        partition_pattern=spec.get("partition_pattern"),
        token_length=spec.get("token_length", 8),
        schema_prefix=spec["schema_prefix"],
    )
    return get_store_backend(table.storage, config=config), path.rsplit("/", 1)[0]


def remove_orphan_files(table: Any, key: Key) -> int:
    """Remove the store files written for ``key`` if no row of ``table`` holds ``key``.

    Returns the number of files or folders removed. Call only for keys nobody is computing
    (:func:`recover` checks that their worker's connection is gone).
    """
    if key in table:
        return 0
    if _dj.IS_DJ2:
        backend, folder = _store_dirs_2x(table, key)
        if backend.exists(folder):
            backend.remove_folder(folder)
            return 1
        return 0
    spec = table.connection.schemas[table.database].external[table.storage].spec
    if spec["protocol"] != "file":
        return 0  # 0.14 on S3: `schema.external[store].delete()` removes tracked orphans
    removed = 0
    root = Path(spec["location"]) / table.database
    for name in _dj.attachment_names(key):
        for path in root.rglob(f"*.{name}"):
            path.unlink()
            removed += 1
    return removed


def recover(table: Any, *, older_than: float = 0.0, dead_only: bool = True) -> list[Key]:
    """Return the keys of dead workers to the queue and remove files they left behind.

    A reserved job is recovered when it is older than ``older_than`` seconds and (with
    ``dead_only``, the default) the database connection that reserved it no longer exists,
    so a live worker's keys are never taken away. Works on both DataJoint generations (2.x
    also offers ``table.jobs.refresh(orphan_timeout=...)``, which is time-based only).
    Returns the recovered keys.
    """
    queue = JobQueue(table)
    live = _live_connection_ids(table.connection) if dead_only else set()
    recovered = []
    for job in queue.reserved(older_than):
        if dead_only and job["connection_id"] in live:
            continue
        key = job["key"]
        remove_orphan_files(table, key)
        queue.release(key)
        recovered.append(key)
    return recovered


# --------------------------------------------------------------------------- worker
def run_worker(
    table: Any,
    *restrictions: Any,
    batch_size: int = 64,
    device: str | None = None,
    max_keys: int | None = None,
    max_time: float | None = None,
    recover_dead: bool = True,
    display_progress: bool | None = None,
) -> dict[str, Any]:
    """One worker's loop: reserve, compute and insert batches until nothing is left.

        Stops when no pending key remains, after ``max_keys`` keys or ``max_time`` seconds
        (checked between batches), or on SIGTERM: the first SIGTERM lets the current batch finish
        and exits; a second one interrupts it, and its reserved keys go back to the queue.
        ``device`` overrides the method configs' device (one worker per GPU: ``"cuda:0"``, ...).
        With ``recover_dead``, the keys of workers whose database connection is gone are returned
        to the queue first. Returns ``{"success_count", "error_list", "keys", "stopped_by"}``
    (``keys``: the keys this worker inserted).
    """
    if device is not None:
        table.device = device
    if recover_dead:
        for key in recover(table):
            logger.info("recovered the reservation of a dead worker: %s", key)
    state = {"signals": 0}

    def on_sigterm(signum: int, frame: Any) -> None:
        state["signals"] += 1
        if state["signals"] > 1:
            raise SystemExit(128 + signum)
        logger.info("SIGTERM: finishing the current batch, then stopping")

    started = time.monotonic()

    def out_of_time() -> bool:
        return max_time is not None and time.monotonic() - started >= max_time

    def should_stop() -> bool:
        return state["signals"] > 0 or out_of_time()

    old = signal.signal(signal.SIGTERM, on_sigterm)
    success, errors, keys, stopped_by = 0, [], [], "no pending keys"
    try:
        while True:
            if state["signals"]:
                stopped_by = "SIGTERM"
                break
            if out_of_time():
                stopped_by = "max_time"
                break
            left = None if max_keys is None else max_keys - success - len(errors)
            if left is not None and left <= 0:
                stopped_by = "max_keys"
                break
            result = populate(
                table,
                *restrictions,
                batch_size=batch_size,
                reserve_jobs=True,
                suppress_errors=True,
                max_calls=batch_size if left is None else min(batch_size, left),
                display_progress=display_progress,
                order="random",
                stop=should_stop,
            )
            success += result["success_count"]
            errors += result["error_list"]
            keys += result["keys"]
            if not result["success_count"] and not result["error_list"]:
                if should_stop():
                    continue
                break
    finally:
        signal.signal(signal.SIGTERM, old)
    logger.info(
        "worker %s stopped (%s): %d done, %d errors", os.getpid(), stopped_by, success, len(errors)
    )
    return {"success_count": success, "error_list": errors, "keys": keys, "stopped_by": stopped_by}
