"""Return the keys of dead workers to the queue and remove the files they left behind.

A worker that dies (SIGKILL, a lost machine) leaves its keys reserved in the job table, and
possibly files in the store that no row refers to. :func:`recover` finds reservations whose
database connection no longer exists, removes their keys' files and releases them.
"""

from __future__ import annotations

from typing import Any

from .backend import backend

Key = dict[str, Any]


def remove_orphan_files(table: Any, key: Key) -> int:
    """Remove the store files written for ``key`` if no row of ``table`` holds ``key``.

    Returns the number of files or folders removed. Call only for keys nobody is computing
    (:func:`recover` checks that their worker's connection is gone).
    """
    if key in table:
        return 0
    return backend().remove_key_files(table, key)


def recover(table: Any, *, older_than: float = 0.0, dead_only: bool = True) -> list[Key]:
    """Return the keys of dead workers to the queue and remove files they left behind.

    A reserved job is recovered when it is older than ``older_than`` seconds and (with
    ``dead_only``, the default) the database connection that reserved it no longer exists,
    so a live worker's keys are never taken away. Works on both DataJoint generations (2.x
    also offers ``table.jobs.refresh(orphan_timeout=...)``, which is time-based only).
    Returns the recovered keys.
    """
    queue = backend().jobs(table)
    live = backend().live_connection_ids(table.connection) if dead_only else set()
    recovered = []
    for job in queue.reserved(older_than):
        if dead_only and job["connection_id"] in live:
            continue
        key = job["key"]
        remove_orphan_files(table, key)
        queue.release(key)
        recovered.append(key)
    return recovered
