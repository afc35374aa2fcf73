"""Everything that differs between DataJoint generations, behind one object chosen once.

mei's tables run on DataJoint 2.x (PostgreSQL, MySQL/MariaDB) and on DataJoint 0.14
(MySQL/MariaDB, the generation NNFabrik pipelines use). The two differ in type names, the
fetch API, stored files, job tables and dropping. :func:`backend` returns the one
:class:`Backend` for the installed DataJoint; the rest of mei calls its methods and never
asks which generation it runs on.

This is also the only module that touches private DataJoint names (``_jobs``, ``_get_pk``,
``_allow_insert``, ``_jobs_to_do``, ``Job._heading``, ``connection._config``,
``_remove_external_file``, ``_make_uuid_path``): each is used in exactly one method here, and
:meth:`Backend.missing_internals` lists the ones the installed DataJoint no longer has, so a
DataJoint release that changes them fails mei's tests loudly instead of its users' runs.

Importing this module imports DataJoint but connects to nothing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datajoint as dj
import torch

from .hashing import make_hash

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

    def complete(self, key: Key) -> None:
        raise NotImplementedError

    def error(self, key: Key, message: str, stack: str) -> None:
        raise NotImplementedError

    def release(self, key: Key) -> None:
        """Give a reserved key back to the queue without computing it."""
        raise NotImplementedError

    def reserved(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        """Reserved jobs older than ``older_than`` seconds (server time): ``key`` and
        ``connection_id`` of the connection that reserved it."""
        raise NotImplementedError

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

    def pending(self, todo: Any) -> list[Key]:
        self.jobs.refresh(delay=-1)
        pending = (self.jobs.pending & "scheduled_time <= CURRENT_TIMESTAMP(3)").restrict(
            todo, semantic_check=False
        )
        return [self._key(k) for k in pending.keys(order_by="priority, scheduled_time")]

    def reserve(self, key: Key) -> bool:
        return bool(self.jobs.reserve(key))

    def complete(self, key: Key) -> None:
        self.jobs.complete(key)

    def error(self, key: Key, message: str, stack: str) -> None:
        self.jobs.error(key, error_message=message, error_stack=stack)

    def release(self, key: Key) -> None:
        (self.jobs & self.jobs._get_pk(key)).delete_quick()
        self.jobs.refresh(delay=-1)

    def reserved(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        seconds = float(older_than)
        query = self.jobs.reserved
        if seconds > 0:
            interval = self.jobs.adapter.interval_expr(seconds, "second")
            query = query & f"reserved_time < CURRENT_TIMESTAMP(3) - {interval}"
        return [
            {"key": self._key(r), "connection_id": int(r["connection_id"] or 0)}
            for r in query.to_dicts()
        ]

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

    def _mine(self) -> Any:
        return self.jobs & {"table_name": self.table_name}

    def pending(self, todo: Any) -> list[Key]:
        from datajoint.hash import key_hash

        excluded = set(
            (self._mine() & 'status in ("error", "ignore", "reserved")').fetch("key_hash")
        )
        return [k for k in todo.fetch("KEY") if key_hash(k) not in excluded]

    def reserve(self, key: Key) -> bool:
        return bool(self.jobs.reserve(self.table_name, key))

    def complete(self, key: Key) -> None:
        self.jobs.complete(self.table_name, key)

    def error(self, key: Key, message: str, stack: str) -> None:
        self.jobs.error(self.table_name, key, error_message=message, error_stack=stack)

    def release(self, key: Key) -> None:
        self.jobs.complete(self.table_name, key)  # 0.14: no job row means available

    def reserved(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        seconds = float(older_than)
        query = self._mine() & 'status="reserved"'
        if seconds > 0:
            query = query & f"timestamp < CURRENT_TIMESTAMP - INTERVAL {seconds} SECOND"
        return [
            {"key": dict(r["key"]), "connection_id": int(r["connection_id"])}
            for r in query.fetch(as_dict=True)
        ]

    def counts(self) -> dict[str, int]:
        return {s: len(self._mine() & {"status": s}) for s in self.statuses}

    def errors(self) -> list[dict[str, Any]]:
        return [
            dict(r, key=dict(r["key"]))
            for r in (self._mine() & {"status": "error"}).fetch(as_dict=True)
        ]


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


# --------------------------------------------------------------------------- backends
class Backend:
    """What mei needs from DataJoint, in one small interface; see :func:`backend`."""

    generation: int
    """``2`` on DataJoint 2.x, ``0`` on DataJoint 0.x."""
    name: str
    supports_postgresql: bool
    """Whether this DataJoint can use PostgreSQL (mei's embedded database)."""
    types: Mapping[str, str]
    """The type names that differ: ``int``, ``float``, ``blob``, ``timestamp``, ``file``
    (with a ``{store}`` field)."""
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
    """DataJoint 2.x: core types, ``<object@store>`` files, per-table job tables."""

    generation = 2
    name = "DataJoint 2.x"
    supports_postgresql = True
    types = {
        "int": "int32",
        "float": "float32",
        "blob": "<blob>",
        "timestamp": "datetime",
        "file": "<object@{store}>",
    }
    internals = (
        ("datajoint.autopopulate:AutoPopulate", "_allow_insert"),
        ("datajoint.autopopulate:AutoPopulate", "_jobs_to_do"),
        ("datajoint.autopopulate:AutoPopulate", "_jobs"),
        ("datajoint.jobs:Job", "_get_pk"),
        ("datajoint.jobs:Job", "_heading"),
        ("datajoint.connection:Connection", "_config"),
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

    def insert_with_files(
        self, table: Any, row: Mapping[str, Any], files: Mapping[str, Any], store: str
    ) -> None:
        # A staged insert writes straight into the store and removes what it wrote on failure.
        with table.staged_insert1 as staged:
            staged.rec.update(row)
            for name, obj in files.items():
                with staged.open(name, ".pth.tar") as f:
                    torch.save(obj, f)

    def load_file(self, query: Any, attribute: str, *, weights_only: bool = False) -> Any:
        ref = query.fetch1(attribute)
        return torch.load(io.BytesIO(ref.read()), weights_only=weights_only)

    def _key_folder(self, table: Any, key: Key) -> tuple[Any, str]:
        """The store backend and the folder that holds ``key``'s files."""
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

    def key_folder(self, table: Any, key: Key) -> str:
        """The store folder (relative to the store's root) of ``key``'s files."""
        return self._key_folder(table, key)[1]

    def remove_key_files(self, table: Any, key: Key) -> int:
        store, folder = self._key_folder(table, key)
        if store.exists(folder):
            store.remove_folder(folder)
            return 1
        return 0

    def jobs(self, table: Any, *, declare: bool = True) -> JobQueue:
        return _JobQueue2(table, declare=declare)

    def is_postgresql(self, connection: Any) -> bool:
        return "postgres" in type(connection.adapter).__name__.lower()


class DataJoint014(Backend):
    """DataJoint 0.14: the original library's types, ``attach@store`` files, ``~jobs``."""

    generation = 0
    name = "DataJoint 0.14"
    supports_postgresql = False
    types = {
        "int": "int",
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
        key_hash = make_hash({k: row[k] for k in table.primary_key})
        with tempfile.TemporaryDirectory() as temp_dir:
            paths = {}
            for name, obj in files.items():
                # The key's hash makes a file traceable to its row (attachment_names); the
                # random token makes it unique, so no other row shares it and removing it is
                # safe.
                path = Path(temp_dir) / f"{name}_{key_hash}_{secrets.token_hex(8)}.pth.tar"
                torch.save(obj, path)
                paths[name] = str(path)
            try:
                table.insert1({**row, **paths})
            except BaseException:
                self._remove_attachments(table, store, paths.values())
                raise

    @staticmethod
    def attachment_names(key: Mapping[str, Any], names: Any = ("mei", "output")) -> list[str]:
        """Glob patterns of the file names :meth:`insert_with_files` gives ``key``'s files
        (each name ends in a random token). The store keeps a file as ``<uuid>.<name>``."""
        key_hash = make_hash(dict(key))
        return [f"{name}_{key_hash}_*.pth.tar" for name in names]

    def _remove_attachments(self, table: Any, store: str, paths: Any) -> None:
        """Remove the store copies of local attachment files."""
        from datajoint.hash import uuid_from_file

        external = table.external[store]
        for path in paths:
            name = Path(path).name
            uuid = uuid_from_file(path, init_string=name + "\0")
            external._remove_external_file(external._make_uuid_path(uuid, "." + name))
            (external & {"hash": uuid}).delete_quick()

    def load_file(self, query: Any, attribute: str, *, weights_only: bool = False) -> Any:
        with tempfile.TemporaryDirectory() as temp_dir:
            path = query.fetch1(attribute, download_path=temp_dir)
            return torch.load(path, weights_only=weights_only)

    def remove_key_files(self, table: Any, key: Key) -> int:
        spec = table.connection.schemas[table.database].external[table.storage].spec
        if spec["protocol"] != "file":
            return 0  # on S3, `schema.external[store].delete()` removes tracked orphans
        removed = 0
        root = Path(spec["location"]) / table.database
        for name in self.attachment_names(key):
            for path in root.rglob(f"*.{name}"):
                path.unlink()
                removed += 1
        return removed

    def jobs(self, table: Any, *, declare: bool = True) -> JobQueue:
        return _JobQueue014(table, declare=declare)


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
