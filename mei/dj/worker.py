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
    and exits; a second one interrupts it, and its reserved keys go back to the queue.
    ``device`` overrides the method configs' device (one worker per GPU: ``"cuda:0"``, ...).
    Before anything else, a worker that would run a pending key's method on a device this
    machine lacks raises :class:`mei.errors.DeviceUnavailableError` (naming the device, the
    method rows and the table's ``device`` override), so it reserves nothing; so does one
    whose store does not take files (:class:`mei.errors.StoreUnavailableError`).
    With ``recover_dead``, the keys of dead workers are returned to the queue first. Returns
    ``{"success_count", "error_list", "keys", "stopped_by"}`` (``keys``: the keys this worker
    inserted).
    """
    if device is not None:
        table.device = device
    check_devices(table, *restrictions)
    check_store(table)  # before recover() looks into it and before a key is reserved
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
    success, stopped_by = 0, "no pending keys"
    errors: list[Any] = []
    keys: list[Any] = []
    try:
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
                    break
    finally:
        signal.signal(signal.SIGTERM, old)
    logger.info(
        "worker %s stopped (%s): %d done, %d errors", os.getpid(), stopped_by, success, len(errors)
    )
    return {"success_count": success, "error_list": errors, "keys": keys, "stopped_by": stopped_by}
