"""One worker's loop: reserve, compute and insert batches until nothing is left.

Start one per GPU, on as many machines as you like (``mei worker``); they share the table's
keys through DataJoint's job table.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from .backend import worker_liveness
from .populate import check_devices, populate
from .recovery import recover
from .store import check_store

logger = logging.getLogger(__name__)


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
    and exits; a second one interrupts it, and its reserved keys go back to the queue. A
    SIGTERM that comes while the worker is still starting (checking devices, recovering)
    stops it before it reserves anything.
    ``device`` overrides the method configs' device (one worker per GPU: ``"cuda:0"``, ...).
    Before anything else, a worker that would run a pending key's method on a device this
    machine lacks raises :class:`mei.errors.DeviceUnavailableError` (naming the device, the
    method rows and the table's ``device`` override), so it reserves nothing; so does one
    whose store does not take files (:class:`mei.errors.StoreUnavailableError`).
    With ``recover_dead``, the keys of dead workers are returned to the queue first, and again
    when no key is pending any more (so the workers that are left finish the keys of one that
    was killed meanwhile: a cancelled or preempted scheduler task). Returns
    ``{"success_count", "error_list", "keys", "stopped_by"}`` (``keys``: the keys this worker
    inserted).
    """
    state = {"signals": 0}

    def on_sigterm(signum: int, frame: Any) -> None:
        state["signals"] += 1
        if state["signals"] > 1:
            raise SystemExit(128 + signum)
        logger.info("SIGTERM: finishing the current batch, then stopping")

    # first: a scheduler's SIGTERM during the start-up must not kill a worker that is about
    # to reserve keys
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _loop(
            table,
            restrictions,
            state,
            batch_size,
            device,
            max_keys,
            max_time,
            recover_dead,
            display_progress,
        )
    finally:
        signal.signal(signal.SIGTERM, old)


def _recover_dead(table: Any) -> list[Any]:
    keys = recover(table)
    for key in keys:
        logger.info("recovered the reservation of a dead worker: %s", key)
    return keys


def _loop(
    table: Any,
    restrictions: tuple[Any, ...],
    state: dict[str, int],
    batch_size: int,
    device: str | None,
    max_keys: int | None,
    max_time: float | None,
    recover_dead: bool,
    display_progress: bool | None,
) -> dict[str, Any]:
    if device is not None:
        table.device = device
    check_devices(table, *restrictions)
    check_store(table)  # before recover() looks into it and before a key is reserved
    if recover_dead:
        _recover_dead(table)
    started = time.monotonic()

    def out_of_time() -> bool:
        return max_time is not None and time.monotonic() - started >= max_time

    def should_stop() -> bool:
        return state["signals"] > 0 or out_of_time()

    success, stopped_by = 0, "no pending keys"
    errors: list[Any] = []
    keys: list[Any] = []
    with worker_liveness(table.connection):
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
                max_calls=left,  # one pass over the pending keys; stop() between batches
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
                if recover_dead and _recover_dead(table):
                    continue  # a worker died meanwhile: its keys are pending again
                break
    logger.info(
        "worker %s stopped (%s): %d done, %d errors", os.getpid(), stopped_by, success, len(errors)
    )
    return {"success_count": success, "error_list": errors, "keys": keys, "stopped_by": stopped_by}
