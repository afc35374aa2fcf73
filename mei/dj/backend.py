"""Everything that differs between DataJoint generations, behind one object chosen once.

mei's tables run on DataJoint 2.x (PostgreSQL, MySQL/MariaDB) and on DataJoint 0.14
(MySQL/MariaDB, the generation NNFabrik pipelines use). The two differ in type names, the
fetch API, stored files, job tables and dropping. :func:`backend` returns the one
:class:`Backend` for the installed DataJoint; the rest of mei calls its methods and never
asks which generation it runs on.

On DataJoint 2.x it also defines mei's file codec, ``<mei_file@store>``
(:class:`TorchFileCodec`), whose fetch gives a local path as 0.14's ``attach@store`` did.

This is also the only module that touches private DataJoint names (``_jobs``, ``_get_pk``,
``_allow_insert``, ``_jobs_to_do``, ``Job._heading``, ``connection._config``,
``_remove_external_file``, ``_make_uuid_path``, ``StorageBackend._full_path``, and the helpers ``SchemaCodec`` gives its
subclasses: ``_extract_context``, ``_codec_config``, ``_build_path``, ``_get_backend``): each is
used in exactly one place here, and
:meth:`Backend.missing_internals` lists the ones the installed DataJoint no longer has, so a
DataJoint release that changes them fails mei's tests loudly instead of its users' runs.

Importing this module imports DataJoint but connects to nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import hashlib
import io
import json
import logging
import os
import platform
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datajoint as dj
import torch

from .faults import fault
from .hashing import make_hash

logger = logging.getLogger(__name__)

Key = dict[str, Any]

SCHEMA_NAME_ENV = "MEI_SCHEMA_NAME"
"""Environment variable naming the schema of ``MEIMethod`` and ``MEISeed``."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# --------------------------------------------------------------------------- job queues
class JobQueue:
    """Reservations of one computed table: the same calls on both DataJoint generations.

    Make one with :meth:`Backend.jobs`. Keys are reserved before they are computed,
    completed, failed with an error record, or released (given back without computing).
    """

    statuses = ("reserved", "error", "ignore")

    def __init__(self, table: Any):
        self.table = table

    def pending(self, todo: Any) -> list[Key]:
        """Keys of ``todo`` (key source minus done) that nobody reserved, failed or ignored."""
        raise NotImplementedError

    def reserve(self, key: Key) -> bool:
        raise NotImplementedError

    def available(self, keys: list[Key]) -> list[Key]:
        """Those of ``keys`` that are still to be done and that nobody holds: one query."""
        raise NotImplementedError

    def reserve_many(self, keys: list[Key]) -> list[Key]:
        """Reserve those of ``keys`` still available; return the keys this worker now holds.

        A worker lists the pending keys once and then takes them batch by batch: the keys
        other workers took or finished since are dropped with one query per batch instead of
        a failed reservation each.
        """
        if len(keys) > 1:
            keys = self.available(keys)
        taken = [key for key in keys if self.reserve(key)]
        # A key finished a moment ago may still be reservable (0.14 deletes a finished key's
        # job row; a key computed without the queue keeps its pending row): look, as
        # DataJoint's populate does, and close its job
        finished = self._keys_in_table(taken)
        if finished:
            self.complete_many(finished)
            taken = [key for key in taken if key not in finished]
        return taken

    def _keys_in_table(self, keys: list[Key]) -> list[Key]:
        """Those of ``keys`` that have a row in the table."""
        if not keys:
            return []
        present = {_key_id(k) for k in backend().keys(self.table & keys)}
        return [key for key in keys if _key_id(key) in present]

    def complete(self, key: Key) -> None:
        raise NotImplementedError

    def complete_many(self, keys: list[Key]) -> None:
        """Mark ``keys`` (all reserved by this worker) as done."""
        for key in keys:
            self.complete(key)

    def error(self, key: Key, message: str, stack: str) -> None:
        raise NotImplementedError

    def release(self, key: Key) -> None:
        """Give a reserved key back to the queue without computing it."""
        raise NotImplementedError

    def reserved(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        """Reserved jobs older than ``older_than`` seconds (server time): ``key``, and
        ``host``, ``pid`` and ``connection_id`` of the worker that reserved it."""
        raise NotImplementedError

    def _mine(self, keys: list[Key], **owner: Any) -> Any:
        """The reserved job rows of ``keys`` whose owner matches ``owner`` (a query)."""
        raise NotImplementedError

    def lock_reserved(self, keys: list[Key], **owner: Any) -> list[Key]:
        """Lock the job rows of ``keys`` still reserved by ``owner`` (``host``, ``pid``,
        optionally ``connection_id``; default: this process) until the transaction ends, and
        return those keys. Call inside a transaction: a worker before it commits its rows,
        :func:`mei.dj.recovery.recover` before it takes a key."""
        if not keys:
            return []
        owner = owner or dict(zip(("host", "pid"), worker_identity(), strict=True))
        query = self._mine(keys, **owner)
        rows = self.table.connection.query(query.make_sql() + " FOR UPDATE", as_dict=True)
        return self._keys_of([dict(r) for r in rows.fetchall()], keys)

    def _keys_of(self, rows: list[dict[str, Any]], keys: list[Key]) -> list[Key]:
        raise NotImplementedError

    def release_many(self, keys: list[Key]) -> None:
        """Give reserved ``keys`` back to the queue without computing them."""
        for key in keys:
            self.release(key)

    def release_own(self, keys: list[Key]) -> None:
        """Give back those of ``keys`` that this process still holds; never another's."""
        if not keys:
            return
        connection = self.table.connection
        if connection.in_transaction:
            self.release_many(self.lock_reserved(keys))
            return
        with connection.transaction:
            self.release_many(self.lock_reserved(keys))

    def counts(self) -> dict[str, int]:
        """Number of jobs per status: ``reserved``, ``error``, ``ignore``."""
        raise NotImplementedError

    def errors(self) -> list[dict[str, Any]]:
        """The error jobs: ``key`` (a dict), ``error_message``, ``error_stack``."""
        raise NotImplementedError


class _JobQueue2(JobQueue):
    """DataJoint 2.x: one ``~~table`` jobs table per computed table."""

    def __init__(self, table: Any, *, declare: bool = True):
        super().__init__(table)
        from datajoint.jobs import Job

        if table._jobs is None:
            # `table.jobs` would declare the jobs table on first access, racing with the
            # other workers that start at the same moment: declare it here, tolerantly.
            jobs = Job(table)
            if declare:
                _declare_concurrently(jobs)
                table._jobs = jobs
            self.jobs = jobs
        else:
            self.jobs = table._jobs

    @property
    def declared(self) -> bool:
        return bool(self.jobs.is_declared)

    def _key(self, row: Mapping[str, Any]) -> Key:
        return {n: row[n] for n in self.table.primary_key}

    def _add_new_jobs(self) -> None:
        """Add a pending job row for each key to do that has none, in one statement.

        DataJoint's ``refresh`` inserts them one by one: every worker that starts while they
        are being added tries (and fails) to insert the same rows. Its refresh then finds
        nothing new and only cleans up.
        """
        from datajoint.condition import Not

        jobs, target = self.jobs, self.table
        if not jobs.is_declared:
            _declare_concurrently(jobs)
        new = (target.key_source - target.proj()).restrict(Not(jobs), semantic_check=False)
        keys = new.proj().keys()
        if not keys:
            return
        now = jobs.adapter.interval_expr(-1, "second")  # refresh(delay=-1): due at once
        due = jobs.connection.query(f"SELECT CURRENT_TIMESTAMP(3) + {now}").fetchone()[0]
        priority = jobs.connection._config.jobs.default_priority
        rows = [dict(k, status="pending", priority=priority, scheduled_time=due) for k in keys]
        jobs.insert(rows, ignore_extra_fields=True, skip_duplicates=True)

    def pending(self, todo: Any) -> list[Key]:
        self._add_new_jobs()
        self.jobs.refresh(delay=-1)
        pending = (self.jobs.pending & "scheduled_time <= CURRENT_TIMESTAMP(3)").restrict(
            todo, semantic_check=False
        )
        return [self._key(k) for k in pending.keys(order_by="priority, scheduled_time")]

    def reserve(self, key: Key) -> bool:
        return bool(self.jobs.reserve(key))

    def available(self, keys: list[Key]) -> list[Key]:
        # a pending job row exists exactly for the keys still to do that nobody holds
        from datajoint.condition import Not

        rows = (self.jobs.pending & [self._key(k) for k in keys]).restrict(
            Not(self.table.proj()), semantic_check=False
        )
        return self._keys_of(rows.to_dicts(), keys)

    def complete(self, key: Key) -> None:
        self.jobs.complete(key)

    def complete_many(self, keys: list[Key]) -> None:
        if not keys:
            return
        if dj.config.jobs.keep_completed:  # a success row per key, with its time
            super().complete_many(keys)
        else:  # no row means done: one statement for the whole batch
            (self.jobs & [self._key(k) for k in keys]).delete_quick()

    def error(self, key: Key, message: str, stack: str) -> None:
        self.jobs.error(key, error_message=message, error_stack=stack)

    def release(self, key: Key) -> None:
        self.release_many([key])

    def release_many(self, keys: list[Key]) -> None:
        if keys:
            (self.jobs & [self.jobs._get_pk(k) for k in keys]).delete_quick()
            self.jobs.refresh(delay=-1)  # back as pending

    def reserved(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        seconds = float(older_than)
        query = self.jobs.reserved
        if seconds > 0:
            interval = self.jobs.adapter.interval_expr(seconds, "second")
            query = query & f"reserved_time < CURRENT_TIMESTAMP(3) - {interval}"
        return [
            {
                "key": self._key(r),
                "host": r["host"],
                "pid": int(r["pid"] or 0),
                "connection_id": int(r["connection_id"] or 0),
            }
            for r in query.to_dicts()
        ]

    def _mine(self, keys: list[Key], **owner: Any) -> Any:
        return self.jobs & [self._key(k) for k in keys] & dict(owner, status="reserved")

    def _keys_of(self, rows: list[dict[str, Any]], keys: list[Key]) -> list[Key]:
        found = {make_hash(self._key(r)) for r in rows}
        return [k for k in keys if make_hash(self._key(k)) in found]

    def counts(self) -> dict[str, int]:
        if not self.declared:
            return dict.fromkeys(self.statuses, 0)
        progress = self.jobs.progress()
        return {s: int(progress.get(s, 0)) for s in self.statuses}

    def errors(self) -> list[dict[str, Any]]:
        if not self.declared:
            return []
        return [dict(r, key=self._key(r)) for r in self.jobs.errors.to_dicts()]


class _JobQueue014(JobQueue):
    """DataJoint 0.14: one ``~jobs`` table per schema, keyed by table name and key hash."""

    def __init__(self, table: Any, *, declare: bool = True):
        super().__init__(table)
        self.jobs = table.connection.schemas[table.database].jobs
        self.table_name = table.table_name

    def _table_jobs(self) -> Any:
        return self.jobs & {"table_name": self.table_name}

    def pending(self, todo: Any) -> list[Key]:
        from datajoint.hash import key_hash

        excluded = set(
            (self._table_jobs() & 'status in ("error", "ignore", "reserved")').fetch("key_hash")
        )
        return [k for k in todo.fetch("KEY") if key_hash(k) not in excluded]

    def reserve(self, key: Key) -> bool:
        return bool(self.jobs.reserve(self.table_name, key))

    def available(self, keys: list[Key]) -> list[Key]:
        from datajoint.hash import key_hash

        held = set(
            (self._table_jobs() & [{"key_hash": key_hash(k)} for k in keys]).fetch("key_hash")
        )
        done = {key_hash(k) for k in (self.table & keys).fetch("KEY")}
        return [k for k in keys if key_hash(k) not in held | done]

    def complete(self, key: Key) -> None:
        self.jobs.complete(self.table_name, key)

    def complete_many(self, keys: list[Key]) -> None:
        from datajoint.hash import key_hash

        if keys:  # 0.14 deletes a done job's row: one statement for the whole batch
            hashes = [{"table_name": self.table_name, "key_hash": key_hash(k)} for k in keys]
            (self.jobs & hashes).delete_quick()

    def error(self, key: Key, message: str, stack: str) -> None:
        self.jobs.error(self.table_name, key, error_message=message, error_stack=stack)

    def release(self, key: Key) -> None:
        self.jobs.complete(self.table_name, key)  # 0.14: no job row means available

    def reserved(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        seconds = float(older_than)
        query = self._table_jobs() & 'status="reserved"'
        if seconds > 0:
            query = query & f"timestamp < CURRENT_TIMESTAMP - INTERVAL {seconds} SECOND"
        return [
            {
                "key": dict(r["key"]),
                "host": r["host"],
                "pid": int(r["pid"]),
                "connection_id": int(r["connection_id"]),
            }
            for r in query.fetch(as_dict=True)
        ]

    def _mine(self, keys: list[Key], **owner: Any) -> Any:
        from datajoint.hash import key_hash

        hashes = [{"key_hash": key_hash(k)} for k in keys]
        return self._table_jobs() & hashes & dict(owner, status="reserved")

    def _keys_of(self, rows: list[dict[str, Any]], keys: list[Key]) -> list[Key]:
        from datajoint.hash import key_hash

        found = {r["key_hash"] for r in rows}
        return [k for k in keys if key_hash(k) in found]

    def counts(self) -> dict[str, int]:
        return {s: len(self._table_jobs() & {"status": s}) for s in self.statuses}

    def errors(self) -> list[dict[str, Any]]:
        return [
            dict(r, key=dict(r["key"]))
            for r in (self._table_jobs() & {"status": "error"}).fetch(as_dict=True)
        ]


def _key_id(key: Mapping[str, Any]) -> str:
    """A key's values as one comparable string (0.14 fetches numpy integers)."""
    return json.dumps({str(k): str(v) for k, v in key.items()}, sort_keys=True)


def _declare_concurrently(jobs: Any, attempts: int = 10) -> None:
    """Declare a 2.x jobs table that several workers may be declaring at the same moment."""
    for attempt in range(attempts):
        if jobs.is_declared:
            break
        try:
            jobs.declare()
            break
        except Exception:  # another worker won the race (or is half-way): look again
            if attempt == attempts - 1 and not jobs.is_declared:
                raise
            time.sleep(0.1 * (attempt + 1))
    _await_codecs(jobs)


def _await_codecs(jobs: Any, timeout: float = 30.0) -> None:
    """Give ``jobs`` a heading read after its declaration is complete.

    On PostgreSQL DataJoint declares a table with ``CREATE TABLE`` and then ``COMMENT ON``
    each column, outside a transaction, and the comments carry the codecs (``error_stack``
    is ``<blob>``). A worker that reads the heading in between keeps it without the codec and
    writes its error tracebacks unencoded, so that they read back as ``None``.
    """
    deadline = time.monotonic() + timeout
    while True:
        heading = type(jobs._heading)(table_info=jobs._heading.table_info)
        if heading.attributes["error_stack"].codec is not None or time.monotonic() > deadline:
            jobs._heading = heading
            return
        time.sleep(0.05)


def worker_identity() -> tuple[str, int]:
    """``(host, pid)`` as DataJoint writes them into a job reservation."""
    return platform.node(), os.getpid()


def worker_lock_name(host: str, pid: int) -> str:
    """The name of the advisory lock a worker holds while it has reservations."""
    return "mei_worker_" + hashlib.md5(f"{host}:{pid}".encode()).hexdigest()[:32]


_LOCK_NAMESPACE = 0x6D656931  # 'mei1': PostgreSQL advisory locks are (namespace, id) pairs


def _pg_lock_id(name: str) -> int:
    return int(name[-8:], 16) & 0x7FFFFFFF


class ConcurrentPopulateError(RuntimeError):
    """Two ``populate()`` calls at once on one database connection (e.g. from two threads)."""


#: connection id -> (thread id, depth, what): the populate running on each connection
_busy: dict[int, tuple[int, int, str]] = {}
_busy_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(connection: Any, what: str) -> Iterator[None]:
    """Refuse a second populate on ``connection`` while one runs (threads share connections).

    One DataJoint connection carries one transaction at a time; two threads populating on it
    interleave their transactions, so one thread's rollback undoes the other's inserts, and
    on MariaDB two threads querying one connection at once break its driver (``Packet
    sequence number wrong``). Enter this before the first query of a populate: the second
    thread is refused before it sends anything. The thread that holds it may enter it again
    (a populate calling another part of the populate).
    """
    ident = id(connection)
    me = threading.get_ident()
    with _busy_guard:
        running = _busy.get(ident)
        if running is not None and running[0] != me:
            raise ConcurrentPopulateError(
                f"{what}: another populate is running on this database connection "
                f"({running[2]}); DataJoint connections are not thread-safe: run populates "
                "one after another, or in separate processes (`mei worker`)"
            )
        depth = 0 if running is None else running[1]
        where = f"{what} in thread {threading.current_thread().name!r}"
        _busy[ident] = (me, depth + 1, where if running is None else running[2])
    try:
        yield
    finally:
        with _busy_guard:
            thread, depth, where = _busy[ident]
            if depth > 1:
                _busy[ident] = (thread, depth - 1, where)
            else:
                del _busy[ident]


@contextlib.contextmanager
def populate_session(connection: Any, what: str) -> Iterator[None]:
    """What every populate runs in: :func:`exclusive` use of ``connection``, and on
    PostgreSQL no JIT compilation (:meth:`Backend.without_jit`)."""
    with exclusive(connection, what), backend().without_jit(connection):
        yield


_journal: contextvars.ContextVar[list[tuple[Any, ...]] | None] = contextvars.ContextVar(
    "mei_file_journal", default=None
)


@contextlib.contextmanager
def file_journal() -> Iterator[list[tuple[Any, ...]]]:
    """Within the block, :meth:`Backend.insert_with_files` notes every file it stores, so that
    the files of rows whose transaction did not commit can be removed exactly
    (:meth:`Backend.remove_files`)."""
    written: list[tuple[Any, ...]] = []
    token = _journal.set(written)
    try:
        yield written
    finally:
        _journal.reset(token)


def _note(*entry: Any) -> None:
    written = _journal.get()
    if written is not None:
        written.append(entry)


_leftovers: contextvars.ContextVar[list[tuple[Any, list[tuple[Any, ...]]]] | None] = (
    contextvars.ContextVar("mei_leftover_files", default=None)
)


@contextlib.contextmanager
def leftover_files() -> Iterator[list[tuple[Any, list[tuple[Any, ...]]]]]:
    """Within the block, files of a failed insert that could not be removed (the store was
    out) are collected as ``(table, entries)``, so that they can be removed once the store
    is back (:meth:`Backend.remove_files`); what is never removed, :func:`mei.dj.recovery
    .recover` finds in the store."""
    left: list[tuple[Any, list[tuple[Any, ...]]]] = []
    token = _leftovers.set(left)
    try:
        yield left
    finally:
        _leftovers.reset(token)


def discard_files(table: Any, written: list[tuple[Any, ...]], error: BaseException) -> None:
    """Remove the files ``written`` for rows that did not commit because of ``error``.

    While the store itself is out (``error`` is its fault) or the removal fails, they are not
    waited for: they go to the open :func:`leftover_files` list and are logged."""
    if not written:
        return
    entries = list(written)
    if fault(error) is None:
        try:
            backend().remove_files(table, entries)
            return
        except Exception:
            logger.warning("could not remove %d file(s) of rows that did not commit", len(entries))
    else:
        logger.warning(
            "the store failed (%s): %d file(s) of rows that did not commit are left for recover()",
            type(error).__name__,
            len(entries),
        )
    left = _leftovers.get()
    if left is not None:
        left.append((table, entries))


# --------------------------------------------------------------------------- 2.x file codec
FILE_CODEC = "mei_file"
"""Name of mei's DataJoint 2.x codec for files written with ``torch.save``."""

_raw_files: contextvars.ContextVar[bool] = contextvars.ContextVar("mei_raw_files", default=False)
"""Inside :meth:`DataJoint2.load_file`: the codec returns the file's bytes, downloads nothing."""


def _download(content: bytes, name: str, folder: Path) -> Path:
    """Write ``content`` as ``folder/name``; reuse an identical file there, never overwrite a
    different one (then ``name`` gets a counter: ``mei_x_1.pth.tar``)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, dot, suffixes = name.partition(".")
    candidate, counter = folder / name, 0
    while candidate.exists():
        if candidate.is_file() and candidate.read_bytes() == content:
            return candidate
        counter += 1
        candidate = folder / f"{stem}_{counter}{dot}{suffixes}"
    candidate.write_bytes(content)
    return candidate


if hasattr(dj, "SchemaCodec"):  # DataJoint 2.x

    class TorchFileCodec(dj.SchemaCodec):
        """``<mei_file@store>``: one file in ``store``; fetching gives a local path.

        What DataJoint 0.14's ``attach@store`` gave the original library's users, on every
        DataJoint 2.x backend: ``torch.load((MEI & key).fetch1("mei"))`` works as before.

        - **Insert** a Python object (written with ``torch.save``), the ``bytes`` of such a
          file, or the path (``str`` or ``Path``) of a file to copy. The file goes to the
          store at a schema-addressed path (``{schema}/{table}/{key}/{field}_{token}.pth.tar``,
          as ``<object@>`` does); the column holds its JSON metadata.
        - **Fetch** downloads the file into DataJoint's ``download_path`` (default: the
          working directory; ``with dj.config.override(download_path=d)`` to choose) and
          returns its path as a ``str``; an identical file already there is reused.

        It is a ``SchemaCodec``, so DataJoint's garbage collection sees its files as
        referenced. Registered when :mod:`mei.dj.backend` is imported (any ``import
        mei.main``) and through the ``datajoint.codecs`` entry point, so DataJoint finds it
        without importing mei first.
        """

        name = FILE_CODEC

        def validate(self, value: Any) -> None:
            if isinstance(value, (str, Path)) and not Path(value).is_file():
                raise FileNotFoundError(f"<{FILE_CODEC}>: no file at {value!r}")

        def encode(
            self,
            value: Any,
            *,
            key: dict[str, Any] | None = None,
            context: dict[str, Any] | None = None,
            store_name: str | None = None,
        ) -> dict[str, Any]:
            ext = ".pth.tar"
            if isinstance(value, (bytes, bytearray)):
                content = bytes(value)
            elif isinstance(value, (str, Path)):
                path = Path(value)
                content = path.read_bytes()
                ext = "".join(path.suffixes) or ext
            else:
                buffer = io.BytesIO()
                torch.save(value, buffer)
                content = buffer.getvalue()
            schema, table, field, primary_key = self._extract_context(key, context or {})
            config = self._codec_config(key, context)
            path, _ = self._build_path(
                schema, table, field, primary_key, ext=ext, store_name=store_name, config=config
            )
            self._get_backend(store_name, config=config).put_buffer(content, path)
            _note(store_name, path)
            return {
                "path": path,
                "store": store_name,
                "size": len(content),
                "ext": ext,
                "is_dir": False,
                "item_count": None,
                "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }

        def decode(
            self,
            stored: dict[str, Any],
            *,
            key: dict[str, Any] | None = None,
            context: dict[str, Any] | None = None,
        ) -> Any:
            config = self._codec_config(key, context)
            store = self._get_backend(stored.get("store"), config=config)
            content = store.get_buffer(stored["path"])
            if _raw_files.get():
                return content
            if config is None:
                config = dj.config
            folder = Path(config.get("download_path", ".") or ".")
            return str(_download(content, Path(stored["path"]).name, folder))


class _Liveness:
    """This process's proof of life for :func:`mei.dj.recovery.recover`: a connection of its
    own holding the worker lock, re-taken by a watcher thread if the server drops it.

    It is independent of the connection the worker computes and inserts through, so a worker
    whose connection is dropped (and re-opened) stays alive to everybody else.
    """

    interval = 5.0

    def __init__(self, connection: Any):
        self.backend = backend()
        self.connection = self.backend.open_connection_like(connection)
        if not self.backend.take_worker_lock(self.connection):
            raise RuntimeError("could not take this worker's lock on the database server")
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="mei-liveness", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if not self.backend.holds_worker_lock(self.connection):
                    self.backend.take_worker_lock(self.connection)
            except Exception as e:
                if not self.backend.is_connection_error(e):
                    logger.warning("worker liveness check failed", exc_info=True)
                with contextlib.suppress(Exception):
                    self.backend.reconnect(self.connection)
                    self.backend.take_worker_lock(self.connection)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        with contextlib.suppress(Exception):
            self.connection.close()  # ends the session, and the lock with it


_liveness: list[Any] = [None, 0]  # [_Liveness, users]
_liveness_guard = threading.Lock()


@contextlib.contextmanager
def worker_liveness(connection: Any) -> Iterator[None]:
    """While inside, this process is alive to :func:`mei.dj.recovery.recover` (nested uses
    share one liveness connection)."""
    with _liveness_guard:
        if _liveness[0] is None:
            _liveness[0] = _Liveness(connection)
        _liveness[1] += 1
    try:
        yield
    finally:
        with _liveness_guard:
            _liveness[1] -= 1
            if _liveness[1] == 0:
                _liveness[0].close()
                _liveness[0] = None


# --------------------------------------------------------------------------- backends
class Backend:
    """What mei needs from DataJoint, in one small interface; see :func:`backend`."""

    generation: int
    """``2`` on DataJoint 2.x, ``0`` on DataJoint 0.x."""
    name: str
    supports_postgresql: bool
    """Whether this DataJoint can use PostgreSQL (mei's embedded database)."""
    types: Mapping[str, str]
    """The type names that differ: ``int``, ``uint16`` (0..65535), ``float``, ``blob``,
    ``timestamp``, ``file`` (with a ``{store}`` field)."""
    internals: tuple[tuple[str, str], ...]
    """The private DataJoint names this backend uses: ``(where, attribute)``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name} {dj.__version__}>"

    # -- types and schemas ----------------------------------------------------------------
    def type_map(self, store: str) -> dict[str, str]:
        """:attr:`types` with the stored-file type bound to ``store``, for ``str.format``."""
        if not isinstance(store, str) or not store or not store.replace("_", "").isalnum():
            raise ValueError(f"store must be a store name such as 'minio', got {store!r}")
        return {**self.types, "file": self.types["file"].format(store=store)}

    def default_schema_name(self) -> str:
        """Where ``MEIMethod`` and ``MEISeed`` live unless told: ``$MEI_SCHEMA_NAME``, else
        this generation's default."""
        return os.environ.get(SCHEMA_NAME_ENV) or self._default_schema_name()

    def _default_schema_name(self) -> str:
        raise NotImplementedError

    def drop_schema(self, schema: Any) -> None:
        """Drop ``schema`` with all its tables, without asking."""
        raise NotImplementedError

    def config_files(self) -> list[Path]:
        """DataJoint config files that exist and that this generation would read."""
        raise NotImplementedError

    # -- fetching -------------------------------------------------------------------------
    def to_dicts(self, query: Any) -> list[dict[str, Any]]:
        """All rows of ``query`` as a list of dicts."""
        raise NotImplementedError

    def keys(self, query: Any) -> list[Key]:
        """The primary keys of ``query``'s rows."""
        raise NotImplementedError

    def todo(self, table: Any, restrictions: tuple[Any, ...]) -> Any:
        """The keys of ``table``'s key source under ``restrictions`` not yet in ``table``."""
        return table._jobs_to_do(restrictions) - table.proj()

    @contextlib.contextmanager
    def allow_insert(self, table: Any) -> Iterator[None]:
        """Let this process insert into the computed ``table`` outside ``make``."""
        cls = type(table)
        cls._allow_insert = True
        try:
            yield
        finally:
            cls._allow_insert = False

    # -- stored files ---------------------------------------------------------------------
    def insert_with_files(
        self, table: Any, row: Mapping[str, Any], files: Mapping[str, Any], store: str
    ) -> None:
        """Insert ``row`` plus one stored file per ``files`` item, written with ``torch.save``.

        ``files`` maps attribute names to the Python objects to save; ``store`` is their store
        (``table.storage``). Files reach the store only as part of this insert; if the insert
        fails, the files it wrote are removed again, so a failed insert leaves neither a row
        nor an orphan file.
        """
        raise NotImplementedError

    def insert_many_with_files(
        self,
        table: Any,
        rows: Sequence[Mapping[str, Any]],
        files: Sequence[Mapping[str, Any]],
        store: str,
    ) -> None:
        """:meth:`insert_with_files` for several rows (``files[i]`` for ``rows[i]``) in one
        insert statement: all rows and files, or none of them."""
        if len(rows) != len(files):
            raise ValueError(f"{len(rows)} rows but {len(files)} sets of files")
        if rows:
            self._insert_many(table, rows, files, store)

    def _insert_many(
        self,
        table: Any,
        rows: Sequence[Mapping[str, Any]],
        files: Sequence[Mapping[str, Any]],
        store: str,
    ) -> None:
        """:meth:`insert_many_with_files` for at least one row: here one
        :meth:`insert_with_files` per row in one transaction; a backend inserts them in one
        statement where it can."""
        connection = table.connection
        atomic = contextlib.nullcontext() if connection.in_transaction else connection.transaction
        with file_journal() as written:
            try:
                with atomic:
                    for row, row_files in zip(rows, files, strict=True):
                        self.insert_with_files(table, row, row_files, store)
            except BaseException as e:
                discard_files(table, written, e)
                raise
        for entry in written:
            _note(*entry)

    def insert_with_parts(
        self,
        table: Any,
        row: Mapping[str, Any],
        files: Mapping[str, Any],
        store: str,
        parts: Sequence[tuple[Any, Sequence[Mapping[str, Any]]]],
    ) -> None:
        """:meth:`insert_with_files` for a master row, then the rows of its part tables,
        ``parts`` = ``[(part_table, rows), ...]``, all in one transaction (the caller's, e.g.
        ``populate``'s, if one is open). If any insert fails, the files stored for the row are
        removed again: a failure leaves no row, no part row and no file."""
        connection = table.connection
        atomic = contextlib.nullcontext() if connection.in_transaction else connection.transaction
        with file_journal() as written:
            try:
                with atomic:
                    self.insert_with_files(table, row, files, store)
                    for part, rows in parts:
                        part.insert(list(rows))
            except BaseException as e:
                discard_files(table, written, e)
                raise
        for entry in written:
            _note(*entry)

    def load_file(self, query: Any, attribute: str, *, weights_only: bool = False) -> Any:
        """Load the file stored in ``attribute`` of the single row of ``query`` with
        ``torch.load``.

        The files are pickles written by :meth:`insert_with_files`; ``weights_only=False``
        (the default) allows any Python object in them, so load only from stores you trust,
        as with DataJoint blobs.
        """
        raise NotImplementedError

    def remove_key_files(self, table: Any, key: Key) -> int:
        """Remove the store files written for ``key`` of ``table``; return how many.

        Call only when no row holds ``key`` and nobody is computing it.
        """
        raise NotImplementedError

    def remove_files(self, table: Any, written: list[tuple[Any, ...]]) -> int:
        """Remove exactly the files a :func:`file_journal` noted (of rows that did not
        commit); return how many."""
        raise NotImplementedError

    def remove_stray_files(self, table: Any, busy: Sequence[Key], older_than: float) -> int:
        """Remove the files in ``table``'s store that no row refers to (left by inserts that
        did not commit while the store was out, or by dead workers), except those of the
        ``busy`` keys (reserved: being computed) and those written less than ``older_than``
        seconds ago (a populate without reservations may be about to commit them). Returns
        how many were removed."""
        raise NotImplementedError

    # -- jobs and connections -------------------------------------------------------------
    def jobs(self, table: Any, *, declare: bool = True) -> JobQueue:
        """The job queue of ``table``; ``declare=False`` never creates a jobs table (for
        read-only looks such as ``mei status``)."""
        raise NotImplementedError

    def live_connection_ids(self, connection: Any) -> set[int]:
        """Ids of the connections the database server has open now (every user's)."""
        sql = (
            "SELECT pid FROM pg_stat_activity"
            if self.is_postgresql(connection)
            else "SELECT ID FROM information_schema.PROCESSLIST"
        )
        return {int(row[0]) for row in connection.query(sql).fetchall()}

    def is_postgresql(self, connection: Any) -> bool:
        return False

    @contextlib.contextmanager
    def without_jit(self, connection: Any) -> Iterator[None]:
        """PostgreSQL's JIT compilation off for ``connection``'s session within the block.

        Populate's queries are small, but on tables without statistics yet (new, or not yet
        analyzed) PostgreSQL estimates them as huge and JIT-compiles them: measured here,
        0.49 s of a 0.49 s query for the pending keys of 32 neurons, every batch. Elsewhere
        nothing changes; the setting is restored afterwards.
        """
        previous = None
        if self.is_postgresql(connection):  # NULL where the server has no JIT (before 11)
            previous = connection.query("SELECT current_setting('jit', true)").fetchone()[0]
        if previous is None:
            yield
            return
        connection.query("SET jit = off")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost session took the setting with it
                connection.query("SET jit = " + ("on" if previous == "on" else "off"))

    def session_id(self, connection: Any) -> int:
        """The server's id of ``connection``'s current session (changes on reconnect)."""
        sql = (
            "SELECT pg_backend_pid()"
            if self.is_postgresql(connection)
            else "SELECT CONNECTION_ID()"
        )
        return int(connection.query(sql).fetchone()[0])

    def sync_session(self, connection: Any) -> bool:
        """Notice a silent reconnect: DataJoint reconnects to MySQL on its own but keeps the
        old ``connection_id``, which then goes into new reservations and makes a live worker
        look dead. Corrects it; returns whether the session had changed."""
        current = self.session_id(connection)
        if current == int(connection.connection_id):
            return False
        connection.connection_id = current
        return True

    def reconnect(self, connection: Any) -> None:
        """Open a new session for ``connection`` (after the server dropped it)."""
        connection.connect()
        connection.connection_id = self.session_id(connection)

    def is_connection_error(self, error: BaseException) -> bool:
        """Whether ``error`` means the database connection was lost."""
        if isinstance(error, dj.errors.LostConnectionError):
            return True
        name = type(error).__name__
        module = type(error).__module__.split(".")[0]
        return module in ("psycopg2", "pymysql") and name in ("InterfaceError", "OperationalError")

    def open_connection_like(self, connection: Any) -> Any:
        """A new DataJoint connection to the server of ``connection``, as the same user."""
        raise NotImplementedError

    def holds_worker_lock(self, connection: Any) -> bool:
        """Whether ``connection``'s session holds this process's worker lock."""
        name = worker_lock_name(*worker_identity())
        if self.is_postgresql(connection):
            return bool(
                connection.query(
                    "SELECT count(*) FROM pg_locks WHERE locktype='advisory' AND classid=%s "
                    "AND objid=%s AND objsubid=2 AND pid=pg_backend_pid() AND granted",
                    (_LOCK_NAMESPACE, _pg_lock_id(name)),
                ).fetchone()[0]
            )
        holder = connection.query("SELECT IS_USED_LOCK(%s)", (name,)).fetchone()[0]
        return holder is not None and int(holder) == self.session_id(connection)

    def take_worker_lock(self, connection: Any) -> bool:
        """Take this process's worker lock in ``connection``'s session (waits up to 10 s
        for a dying session of this process to let go of it); return whether it is held."""
        name = worker_lock_name(*worker_identity())
        if self.is_postgresql(connection):
            sql = "SELECT pg_try_advisory_lock(%s, %s)"
            for _ in range(100):
                if connection.query(sql, (_LOCK_NAMESPACE, _pg_lock_id(name))).fetchone()[0]:
                    return True
                time.sleep(0.1)
            return False
        return bool(connection.query("SELECT GET_LOCK(%s, 10)", (name,)).fetchone()[0])

    def worker_alive(self, connection: Any, host: str, pid: int) -> bool:
        """Whether some session holds the worker lock of ``(host, pid)``."""
        name = worker_lock_name(host, pid)
        if self.is_postgresql(connection):
            return bool(
                connection.query(
                    "SELECT count(*) FROM pg_locks WHERE locktype='advisory' AND classid=%s "
                    "AND objid=%s AND objsubid=2 AND granted",
                    (_LOCK_NAMESPACE, _pg_lock_id(name)),
                ).fetchone()[0]
            )
        return connection.query("SELECT IS_USED_LOCK(%s)", (name,)).fetchone()[0] is not None

    # -- DataJoint internals --------------------------------------------------------------
    def missing_internals(self) -> list[str]:
        """The private DataJoint names this backend uses that the installed DataJoint lacks
        (empty when all is well)."""
        missing = []
        for where, attribute in self.internals:
            module_name, _, qualname = where.rpartition(":")
            try:
                obj: Any = __import__(module_name, fromlist=["_"])
                for part in qualname.split(".") if qualname else ():
                    obj = getattr(obj, part)
            except (ImportError, AttributeError):
                missing.append(f"{where}.{attribute}")
                continue
            if not _has_attribute(obj, attribute):
                missing.append(f"{where}.{attribute}")
        return missing


def _modified(info: Mapping[str, Any], default: float) -> float:
    """When a file that fsspec's ``find(detail=True)`` found was last written (seconds)."""
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value) if value is not None else default


def _has_attribute(obj: Any, attribute: str) -> bool:
    """``hasattr`` that also finds attributes set in ``__init__`` (from its source)."""
    if hasattr(obj, attribute):
        return True
    init = getattr(obj, "__init__", None)
    if init is None:
        return False
    import inspect

    try:
        source = inspect.getsource(init)
    except (OSError, TypeError):
        return False
    return f"self.{attribute} " in source or f"self.{attribute}=" in source


class DataJoint2(Backend):
    """DataJoint 2.x: core types, ``<mei_file@store>`` files (:class:`TorchFileCodec`; tables
    declared with ``<object@store>`` keep working), per-table job tables."""

    generation = 2
    name = "DataJoint 2.x"
    supports_postgresql = True
    types = {
        "int": "int32",
        "uint16": "int32",  # no unsigned types on PostgreSQL: int32 holds 0..65535
        "float": "float32",
        "blob": "<blob>",
        "timestamp": "datetime",
        "file": "<" + FILE_CODEC + "@{store}>",
    }
    internals = (
        ("datajoint:SchemaCodec", "_extract_context"),
        ("datajoint:SchemaCodec", "_codec_config"),
        ("datajoint:SchemaCodec", "_build_path"),
        ("datajoint:SchemaCodec", "_get_backend"),
        ("datajoint.autopopulate:AutoPopulate", "_allow_insert"),
        ("datajoint.autopopulate:AutoPopulate", "_jobs_to_do"),
        ("datajoint.autopopulate:AutoPopulate", "_jobs"),
        ("datajoint.jobs:Job", "_get_pk"),
        ("datajoint.jobs:Job", "_heading"),
        ("datajoint.connection:Connection", "_config"),
        ("datajoint.connection:Connection", "connection_id"),
        ("datajoint.connection:Connection", "conn_info"),
        ("datajoint.storage:StorageBackend", "_full_path"),
    )

    def _default_schema_name(self) -> str:
        return "mei"

    def drop_schema(self, schema: Any) -> None:
        schema.drop(prompt=False)

    def config_files(self) -> list[Path]:
        if os.environ.get("DJ_IGNORE_CONFIG_FILE", "").lower() in ("1", "true", "yes"):
            return []
        from datajoint.settings import find_config_file

        found = find_config_file()
        return [Path(found)] if found is not None else []

    def to_dicts(self, query: Any) -> list[dict[str, Any]]:
        return list(query.to_dicts())

    def keys(self, query: Any) -> list[Key]:
        return list(query.keys())

    @staticmethod
    def _codecs(table: Any, names: Any) -> set[str]:
        """The codec names of the attributes ``names`` of ``table`` (``""``: none)."""
        attributes = table.heading.attributes
        return {getattr(attributes[n].codec, "name", "") or "" for n in names}

    def insert_with_files(
        self, table: Any, row: Mapping[str, Any], files: Mapping[str, Any], store: str
    ) -> None:
        if self._codecs(table, files) == {"object"}:
            # A table declared before mei's codec: a staged insert writes straight into the
            # store and removes what it wrote on failure.
            with table.staged_insert1 as staged:
                staged.rec.update(row)
                for name, obj in files.items():
                    with staged.open(name, ".pth.tar") as f:
                        torch.save(obj, f)
            for name in files:
                meta = staged.rec[name]
                _note(meta["store"], meta["path"])
            return
        self._insert_encoded(table, [row], [files])

    def _insert_many(
        self,
        table: Any,
        rows: Sequence[Mapping[str, Any]],
        files: Sequence[Mapping[str, Any]],
        store: str,
    ) -> None:
        if self._codecs(table, files[0]) == {"object"}:  # staged inserts: one row at a time
            super()._insert_many(table, rows, files, store)
            return
        self._insert_encoded(table, rows, files)

    def _insert_encoded(
        self, table: Any, rows: Sequence[Mapping[str, Any]], files: Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert ``rows`` in one statement with their ``files`` through ``<mei_file@store>``:
        the codec stores each file while its row is inserted and notes it; if the insert
        fails, what it stored is removed again."""
        records = []
        for row, row_files in zip(rows, files, strict=True):
            contents = {}
            for name, obj in row_files.items():
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                contents[name] = buffer.getvalue()
            records.append({**row, **contents})
        with file_journal() as written:
            try:
                table.insert(records)
            except BaseException as e:
                discard_files(table, written, e)
                written.clear()
                raise
        for entry in written:
            _note(*entry)

    def remove_files(self, table: Any, written: list[tuple[Any, ...]]) -> int:
        from datajoint.hash_registry import get_store_backend

        removed = 0
        for store_name, path in written:
            store = get_store_backend(store_name, config=table.connection._config)
            if store.exists(path):
                store.remove(path)
                removed += 1
        return removed

    def load_file(self, query: Any, attribute: str, *, weights_only: bool = False) -> Any:
        token = _raw_files.set(True)
        try:
            value = query.fetch1(attribute)
        finally:
            _raw_files.reset(token)
        if isinstance(value, (bytes, bytearray)):  # <mei_file@store>
            return torch.load(io.BytesIO(value), weights_only=weights_only)
        if hasattr(value, "read"):  # an ObjectRef: <object@store>, tables declared before
            return torch.load(io.BytesIO(value.read()), weights_only=weights_only)
        return torch.load(value, weights_only=weights_only)  # a path

    def _key_folder(self, table: Any, key: Key) -> tuple[Any, str]:
        """The store backend and the folder that holds ``key``'s files."""
        from datajoint.hash_registry import get_store_backend
        from datajoint.storage import build_object_path

        # Staged inserts (<object@>) name the folder after the class, codecs after the table.
        staged = self._codecs(table, self._file_attributes(table)) == {"object"}
        config = table.connection._config
        spec = config.get_store_spec(table.storage)
        path, _ = build_object_path(
            schema=table.database,
            table=table.class_name if staged else table.table_name,
            field="x",
            primary_key={k: key[k] for k in table.primary_key},
            ext=None,
            partition_pattern=spec.get("partition_pattern"),
            token_length=spec.get("token_length", 8),
            schema_prefix=spec["schema_prefix"],
        )
        return get_store_backend(table.storage, config=config), path.rsplit("/", 1)[0]

    def key_folder(self, table: Any, key: Key) -> str:
        """The store folder (relative to the store's root) of ``key``'s files."""
        return self._key_folder(table, key)[1]

    def remove_key_files(self, table: Any, key: Key) -> int:
        store, folder = self._key_folder(table, key)
        if store.exists(folder):
            store.remove_folder(folder)
            return 1
        return 0

    def remove_stray_files(self, table: Any, busy: Sequence[Key], older_than: float) -> int:
        from datajoint.hash_registry import get_store_backend

        config = table.connection._config
        spec = config.get_store_spec(table.storage)
        if spec.get("partition_pattern"):
            logger.info("stray files are not looked for in stores with a partition_pattern")
            return 0
        store = get_store_backend(table.storage, config=config)
        first = table.primary_key[0]
        folder = self.key_folder(table, dict.fromkeys(table.primary_key, 0))
        full = store._full_path  # the path fsspec knows a file by
        root = full(folder.split(f"/{first}=", 1)[0])
        try:
            found = store.fs.find(root, detail=True)
        except FileNotFoundError:
            return 0
        files = {p: i for p, i in found.items() if i.get("type") != "directory"}
        if not files:
            return 0
        kept = {full(path) for path in self._referenced_paths(table)}
        busy_folders = {full(self.key_folder(table, k)) for k in busy}
        now = time.time()
        removed = 0
        for path, info in files.items():
            if path in kept or path.rsplit("/", 1)[0] in busy_folders:
                continue
            if now - _modified(info, now) < older_than:
                continue
            store.fs.rm(path)
            removed += 1
        return removed

    @staticmethod
    def _file_attributes(table: Any) -> list[str]:
        """The attributes of ``table`` that hold files (``mei``, ``output``; ``mds``...)."""
        attributes = table.heading.attributes
        codecs = (FILE_CODEC, "object")
        return [n for n in attributes if getattr(attributes[n].codec, "name", "") in codecs]

    def _referenced_paths(self, table: Any) -> set[str]:
        """The store paths (relative to the store's root) that ``table``'s rows refer to."""
        names = self._file_attributes(table)
        if not names:
            return set()
        rows = table.connection.query(table.proj(*names).make_sql()).fetchall()
        paths = set()
        for row in rows:
            for value in row[len(table.primary_key) :]:
                meta = json.loads(value) if isinstance(value, (str, bytes)) else value
                if isinstance(meta, dict) and meta.get("path"):
                    paths.add(str(meta["path"]))
        return paths

    def jobs(self, table: Any, *, declare: bool = True) -> JobQueue:
        return _JobQueue2(table, declare=declare)

    def open_connection_like(self, connection: Any) -> Any:
        info = connection.conn_info
        return dj.Connection(
            info["host"],
            info["user"],
            info["passwd"],
            info["port"],
            use_tls=info.get("ssl_input"),
            backend=connection.adapter.backend,
            config_override=connection._config,
        )

    def is_postgresql(self, connection: Any) -> bool:
        return "postgres" in type(connection.adapter).__name__.lower()


class DataJoint014(Backend):
    """DataJoint 0.14: the original library's types, ``attach@store`` files, ``~jobs``."""

    generation = 0
    name = "DataJoint 0.14"
    supports_postgresql = False
    types = {
        "int": "int",
        "uint16": "smallint unsigned",
        "float": "float",
        "blob": "longblob",
        "timestamp": "timestamp",
        "file": "attach@{store}",
    }
    internals = (
        ("datajoint.autopopulate:AutoPopulate", "_allow_insert"),
        ("datajoint.autopopulate:AutoPopulate", "_jobs_to_do"),
        ("datajoint.external:ExternalTable", "_remove_external_file"),
        ("datajoint.external:ExternalTable", "_make_uuid_path"),
        ("datajoint.connection:Connection", "connection_id"),
        ("datajoint.connection:Connection", "conn_info"),
    )

    def _default_schema_name(self) -> str:
        # NNFabrik's core schema, where the original library kept MEIMethod and MEISeed.
        return str(dj.config.get("nnfabrik.schema_name", "nnfabrik_core"))

    def drop_schema(self, schema: Any) -> None:
        schema.drop(force=True)

    def config_files(self) -> list[Path]:
        candidates = (Path("dj_local_conf.json"), Path.home() / ".datajoint_config.json")
        return [c.absolute() for c in candidates if c.is_file()]

    def to_dicts(self, query: Any) -> list[dict[str, Any]]:
        return list(query.fetch(as_dict=True))

    def keys(self, query: Any) -> list[Key]:
        return list(query.fetch("KEY"))

    def insert_with_files(
        self, table: Any, row: Mapping[str, Any], files: Mapping[str, Any], store: str
    ) -> None:
        self.insert_many_with_files(table, [row], [files], store)

    def _insert_many(
        self,
        table: Any,
        rows: Sequence[Mapping[str, Any]],
        files: Sequence[Mapping[str, Any]],
        store: str,
    ) -> None:
        with tempfile.TemporaryDirectory() as temp_dir:
            records, stored = [], []
            for row, row_files in zip(rows, files, strict=True):
                key_hash = make_hash({k: row[k] for k in table.primary_key})
                paths = {}
                for name, obj in row_files.items():
                    # The key's hash makes a file traceable to its row (attachment_names);
                    # the random token makes it unique, so no other row shares it and
                    # removing it is safe.
                    path = Path(temp_dir) / f"{name}_{key_hash}_{secrets.token_hex(8)}.pth.tar"
                    torch.save(obj, path)
                    paths[name] = str(path)
                stored += [(store, *self._attachment_id(path)) for path in paths.values()]
                records.append({**row, **paths})
            try:
                table.insert(records)
            except BaseException as e:
                discard_files(table, stored, e)
                raise
            for entry in stored:
                _note(*entry)

    @staticmethod
    def attachment_names(key: Mapping[str, Any], names: Any = ("mei", "output")) -> list[str]:
        """Glob patterns of the file names :meth:`insert_with_files` gives ``key``'s files
        (each name ends in a random token). The store keeps a file as ``<uuid>.<name>``."""
        key_hash = make_hash(dict(key))
        return [f"{name}_{key_hash}_*.pth.tar" for name in names]

    @staticmethod
    def _attachment_id(path: str) -> tuple[Any, str]:
        """``(uuid, name)`` under which DataJoint 0.14 stores the attachment ``path``."""
        from datajoint.hash import uuid_from_file

        name = Path(path).name
        return uuid_from_file(path, init_string=name + "\0"), name

    def remove_files(self, table: Any, written: list[tuple[Any, ...]]) -> int:
        removed = 0
        for store, uuid, name in written:
            external = table.external[store]
            path = external._make_uuid_path(uuid, "." + name)
            if external.exists(path):
                external._remove_external_file(path)
                removed += 1
            try:
                (external & {"hash": uuid}).delete_quick()
            except dj.errors.IntegrityError:
                # still referenced by a row of the open transaction (a master row whose parts
                # failed): the transaction's rollback removes the row and this entry together
                pass
        return removed

    def load_file(self, query: Any, attribute: str, *, weights_only: bool = False) -> Any:
        with tempfile.TemporaryDirectory() as temp_dir:
            path = query.fetch1(attribute, download_path=temp_dir)
            return torch.load(path, weights_only=weights_only)

    def remove_key_files(self, table: Any, key: Key) -> int:
        external = table.connection.schemas[table.database].external[table.storage]
        spec = external.spec
        removed = 0
        if spec["protocol"] == "s3":
            key_hash = make_hash(dict(key))
            attributes = table.heading.attributes
            marks = [f".{n}_{key_hash}_" for n in attributes if attributes[n].is_attachment]
            client = external.s3.client
            prefix = "/".join(
                p for p in (str(spec.get("location", "")).strip("/"), table.database) if p
            )
            for item in client.list_objects(spec["bucket"], prefix=prefix + "/", recursive=True):
                if any(mark in item.object_name for mark in marks):
                    client.remove_object(spec["bucket"], item.object_name)
                    removed += 1
            return removed
        if spec["protocol"] != "file":
            return 0
        root = Path(spec["location"]) / table.database
        for name in self.attachment_names(key):
            for path in root.rglob(f"*.{name}"):
                path.unlink()
                removed += 1
        return removed

    def remove_stray_files(self, table: Any, busy: Sequence[Key], older_than: float) -> int:
        external = table.connection.schemas[table.database].external[table.storage]
        spec = external.spec
        attributes = table.heading.attributes
        names = {n for n in attributes if attributes[n].is_attachment}
        # 0.14 keeps every attachment of the schema in one folder and tracks each committed one
        # in the schema's external table: a file of this table's kind that was never tracked
        # belongs to an insert that rolled back. (Files of rows deleted later are tracked until
        # DataJoint's own `schema.external[store].delete()` removes them.)
        tracked = {getattr(h, "hex", str(h)) for h in external.fetch("hash")}
        busy_hashes = {make_hash(dict(k)) for k in busy}
        now = time.time()

        def stray(name: str, modified: float) -> bool:
            uuid, _, attachment = name.rpartition("/")[2].partition(".")
            parts = attachment.split("_")
            if len(parts) < 3 or not attachment.endswith(".pth.tar"):
                return False  # not a file mei wrote
            if "_".join(parts[:-2]) not in names:
                return False  # another table's
            if uuid in tracked or parts[-2] in busy_hashes:
                return False
            return now - modified >= older_than

        removed = 0
        if spec["protocol"] == "file":
            root = Path(spec["location"]) / table.database
            for path in root.rglob("*.pth.tar") if root.is_dir() else ():
                if path.is_file() and stray(str(path), path.stat().st_mtime):
                    path.unlink()
                    removed += 1
            return removed
        client = external.s3.client
        prefix = "/".join(
            p for p in (str(spec.get("location", "")).strip("/"), table.database) if p
        )
        for item in client.list_objects(spec["bucket"], prefix=prefix + "/", recursive=True):
            modified = item.last_modified.timestamp() if item.last_modified else now
            if stray(item.object_name, modified):
                client.remove_object(spec["bucket"], item.object_name)
                removed += 1
        return removed

    def jobs(self, table: Any, *, declare: bool = True) -> JobQueue:
        return _JobQueue014(table, declare=declare)

    def open_connection_like(self, connection: Any) -> Any:
        info = connection.conn_info
        return dj.Connection(
            info.get("host_input", info["host"]),
            info["user"],
            info["passwd"],
            use_tls=info.get("ssl_input"),
        )


@functools.cache
def backend() -> Backend:
    """The :class:`Backend` of the installed DataJoint (made once)."""
    version = _version_tuple(dj.__version__)
    if version[0] >= 2:
        return DataJoint2()
    if version < (0, 14, 4):
        raise ImportError(
            f"mei needs DataJoint >= 0.14.4 (tripartite make) or 2.x, found {dj.__version__}"
        )
    return DataJoint014()


def to_dicts(query: Any) -> list[dict[str, Any]]:
    """All rows of ``query`` as a list of dicts (:meth:`Backend.to_dicts`)."""
    return backend().to_dicts(query)


def keys(query: Any) -> list[Key]:
    """The primary keys of ``query``'s rows (:meth:`Backend.keys`)."""
    return backend().keys(query)


def drop_schema(schema: Any) -> None:
    """Drop ``schema`` with all its tables, without asking (:meth:`Backend.drop_schema`)."""
    backend().drop_schema(schema)
