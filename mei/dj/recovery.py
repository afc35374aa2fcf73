"""Return the keys of dead workers to the queue and remove the files they left behind.

A worker that dies (SIGKILL, a lost machine) leaves its keys reserved in the job table, and
possibly files in the store that no row refers to. :func:`recover` finds reservations whose
database connection no longer exists, removes their keys' files and releases them. It also
removes the files that inserts left behind when the store failed mid-batch and could not
take the removal either (stray files: no row refers to them, no worker holds their key).
"""

from __future__ import annotations

import logging
from typing import Any

from .backend import backend

logger = logging.getLogger(__name__)

Key = dict[str, Any]

STRAY_AGE = 600.0
"""Seconds: :func:`recover` leaves younger stray files alone by default (an insert without a
reservation may be about to commit them; no insert takes this long)."""


def remove_orphan_files(table: Any, key: Key) -> int:
    """Remove the store files written for ``key`` if no row of ``table`` holds ``key``.

    Returns the number of files or folders removed. Call only for keys nobody is computing
    (:func:`recover` checks that their worker's connection is gone).
    """
    if key in table:
        return 0
    return backend().remove_key_files(table, key)


def recover(
    table: Any,
    *,
    older_than: float = 0.0,
    dead_only: bool = True,
    stray_files_older_than: float | None = STRAY_AGE,
) -> list[Key]:
    """Return the keys of dead workers to the queue and remove files they left behind.

    A reserved job is recovered when it is older than ``older_than`` seconds and (with
    ``dead_only``, the default) its worker is dead: no session holds the worker lock of the
    host and process that reserved it (mei's workers hold one while they have reservations,
    re-taken after a reconnect) and the connection that reserved it no longer exists. So a
    live worker's keys are never taken, even after its connection was dropped and
    re-opened. Each key is taken with its job row locked, so a worker that is committing it
    at that moment either commits first (then the key is done, and only its job is closed)
    or finds its reservation gone and commits nothing. Returns the recovered keys.

    Then the files in the table's store that no row refers to and whose key nobody holds are
    removed if they are older than ``stray_files_older_than`` seconds (``None``: not looked
    for); ``0`` removes them all, which is safe only while no populate without reservations
    (``reserve_jobs=False``) runs on the table. That takes one listing of the table's folder
    in the store; the store must be reachable.
    """
    be = backend()
    connection = table.connection
    queue = be.jobs(table)
    live = be.live_connection_ids(connection) if dead_only else set()
    recovered = []
    for job in queue.reserved(older_than):
        if dead_only and (
            job["connection_id"] in live or be.worker_alive(connection, job["host"], job["pid"])
        ):
            continue
        key = job["key"]
        owner = {k: job[k] for k in ("host", "pid", "connection_id")}
        with connection.transaction:
            if not queue.lock_reserved([key], **owner):
                continue  # taken or finished meanwhile
            if key in table:  # its worker committed, then died before closing the job
                queue.complete_many([key])
                continue
            remove_orphan_files(table, key)
            queue.release_many([key])
        recovered.append(key)
    if stray_files_older_than is not None and getattr(table, "storage", None):
        busy = [job["key"] for job in queue.reserved()]
        removed = be.remove_stray_files(table, busy, float(stray_files_older_than))
        if removed:
            logger.info(
                "removed %d stray file(s) of %s from its store", removed, type(table).__name__
            )
    return recovered
