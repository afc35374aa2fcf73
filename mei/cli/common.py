"""What the ``mei`` commands share: errors, quiet output, outputs, and choosing the database."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MEIError, StoreUnavailableError, error_chain


def version() -> str:
    from .. import __version__

    return __version__


class CLIError(MEIError):
    """A problem the user can fix; ``mei`` prints the message and exits with status 1."""


def err(message: str) -> None:
    """Print ``message`` to stderr (stdout is for results)."""
    print(message, file=sys.stderr, flush=True)


DATABASE_ERROR_MODULES = ("datajoint", "pymysql", "psycopg2")
"""Exceptions from these packages are printed as one line, without a traceback."""


def describe_error(error: BaseException) -> str | None:
    """One line for an error the user can act on, or ``None`` for a bug (show the traceback).

    mei's own errors print their message; a full disk and other operating system errors say
    which file; DataJoint's and the database clients' errors give their type and message.
    """
    if isinstance(error, StoreUnavailableError):  # names the store, and what is wrong with it
        return str(error)
    for cause in error_chain(error):
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            if cause.filename:
                return (
                    f"no space left on the device of {cause.filename}: free some space there "
                    "(or write elsewhere) and run the command again"
                )
            return (
                "no space left on a device (where the store or the output folder is): free some "
                "space there, or point them elsewhere, and run the command again"
            )
    if isinstance(error, MEIError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or error}: {error.filename}"
    if isinstance(error, OSError):
        return str(error)
    if type(error).__module__.split(".")[0] in DATABASE_ERROR_MODULES:
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0] if lines else ''}"
    return None


# -- shared helpers -------------------------------------------------------------------------


def working_directory_importable() -> None:
    """Like ``python -m``: modules in the working directory can be imported by dotted path."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def set_quiet(quiet: bool) -> None:
    """``--quiet`` silences progress bars everywhere, the engine's included."""
    if quiet:
        os.environ["MEI_QUIET"] = "1"


def import_datajoint() -> Any:
    """Import DataJoint without its import-time chatter; explain how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import datajoint as dj
    except ImportError as e:
        raise CLIError(
            f"this command needs DataJoint ({e}): install it with "
            '`pip install "mei[datajoint]"` (or "mei[embedded]" for the embedded database)'
        ) from None
    warnings.filterwarnings("ignore", message=r"No datajoint\.json found", category=UserWarning)
    logger = logging.getLogger("datajoint")
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:  # DataJoint logs to stdout; keep stdout for results
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    return dj


def check_device(device: str) -> None:
    """``--device``: a torch device that exists on this machine, else a :class:`CLIError`."""
    from ..config import parse_device
    from ..errors import ConfigError

    try:
        parse_device(device)
    except ConfigError as e:
        reason = re.sub(r"^config\['device'\]: (?:'[^']*': )?", "", str(e))
        raise CLIError(f"--device {device}: {reason}") from None


SCHEMA_NAME = re.compile(r"[a-z][a-z0-9_]*")
SCHEMA_NAME_MAX = 63  # PostgreSQL's limit (MySQL's is 64)
SCHEMA_NAME_RULE = (
    "lowercase letters, digits and underscores, starting with a letter, at most "
    f"{SCHEMA_NAME_MAX} characters (a name that works on PostgreSQL and MySQL)"
)


def check_schema_name(name: str, *, suffix: str = "") -> str:
    """``name`` if it (with ``suffix`` appended) is a schema name every backend accepts; else
    a :class:`CLIError` with the rule."""
    limit = SCHEMA_NAME_MAX - len(suffix)
    if not SCHEMA_NAME.fullmatch(name) or len(name) > limit:
        rule = SCHEMA_NAME_RULE.replace(f"at most {SCHEMA_NAME_MAX}", f"at most {limit}")
        suggestion = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:limit]
        if suggestion and not suggestion[0].isalpha():
            suggestion = f"s_{suggestion}"[:limit]
        hint = f", e.g. {suggestion!r}" if SCHEMA_NAME.fullmatch(suggestion) else ""
        raise CLIError(f"the schema name {name!r} is not allowed: use {rule}{hint}")
    return name


def prepare_output_dir(path: str | Path, files: Sequence[str]) -> Path:
    """Make sure results can be written to the folder ``path`` before any work is done.

    Creates the folder (and its parents) and writes a probe file in it; an existing file in
    the way (the folder itself, or one of ``files`` being a folder) is an error. Raises a
    :class:`CLIError` that says what to change.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"--out {folder}: is a file, not a folder; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mei-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = describe_error(e) if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CLIError(
            f"--out {folder}: cannot write there ({reason}); choose another --out"
        ) from None
    for name in files:
        target = folder / name
        if target.exists() and not target.is_file():
            raise CLIError(f"--out {folder}: {target} is in the way (not a file); move it")
    return folder


# -- the database -----------------------------------------------------------------------------


@dataclass
class Database:
    """The database a command uses: a description for the user, and the embedded server."""

    description: str
    server: Any = None  # an EmbeddedPostgres when the embedded database is used
    started: bool = False
    connected: bool = False


def check_connection(dj: Any, database: Database | None = None) -> None:
    try:
        dj.conn().ping()
    except Exception as e:  # report the server, never the credentials
        host = dj.config["database.host"]
        raise CLIError(
            f"cannot connect to the database at {host}: {type(e).__name__}: {e}. Check "
            "DataJoint's settings (DJ_HOST, DJ_PORT, DJ_USER, DJ_PASS, DJ_BACKEND or datajoint.json)"
        ) from None
    if database is not None:
        database.connected = True


NOT_CONFIGURED = (
    "no database is configured: set DataJoint's environment variables (DJ_HOST, DJ_USER, DJ_PASS, "
    "DJ_BACKEND, DJ_PORT) or write a datajoint.json, or use --database embedded"
)


@contextlib.contextmanager
def open_database(
    mode: str,
    *,
    start: bool = True,
    keep_running: bool = False,
    log: Callable[[str], None] = err,
) -> Iterator[Database]:
    """Point DataJoint at the configured server or the embedded one (``mode``: ``auto``,
    ``configured`` or ``embedded``) for the duration of the ``with`` block; nothing connects.

    The embedded server is started with ``start`` (else it must be running); the local store
    ``minio`` in the data directory is configured unless a store of that name is. On the way
    out, a server that a command started is stopped by the last command using it (see
    :meth:`~mei.cli.embedded.EmbeddedPostgres.session`), unless ``keep_running``.
    """
    from .embedded import EmbeddedPostgres, configured_database

    dj = import_datajoint()
    source = configured_database()
    if mode == "configured" or (mode == "auto" and source is not None):
        if source is None:
            raise CLIError(NOT_CONFIGURED)
        backend = dj.config.get("database.backend", "mysql")
        yield Database(
            f"the configured database ({backend} at {dj.config['database.host']}, from {source})"
        )
        return
    from ..dj.backend import backend

    if not backend().supports_postgresql:
        raise CLIError(
            f"no database is configured, and the embedded database (PostgreSQL) needs "
            f"DataJoint 2.x, not {dj.__version__}: configure a MySQL server in "
            "dj_local_conf.json or with DJ_HOST, DJ_USER and DJ_PASS"
        )
    server = EmbeddedPostgres()
    logged = 0

    def log_notices() -> None:
        nonlocal logged
        for line in server.notices[logged:]:
            log(f"mei: {line}")
        logged = len(server.notices)

    try:
        with server.session(start=start, keep_running=keep_running) as started:
            log_notices()
            state = "started" if started else "already running"
            database = Database(
                f"the embedded PostgreSQL database ({state}; data in {server.directory})",
                server,
                started,
            )
            server.configure_datajoint()
            log_notices()
            try:
                yield database
            finally:
                _close_connection(dj, database)
    finally:
        log_notices()


def _close_connection(dj: Any, database: Database) -> None:
    """Close this process's connection, so that the server counts only other clients."""
    if database.connected:
        with contextlib.suppress(Exception):
            dj.conn().close()


def configured_stores(dj: Any) -> dict[str, Any]:
    return dict(dj.config.get("stores") or {})


def load_table(path: str, *, kind: str = "computed") -> Any:
    """Import the table class ``path`` (``module.Class``; the working directory is importable)
    and return an instance. ``kind``: ``computed`` (it has ``populate``) or ``mei`` (an MEI
    table: ``make_compute`` too)."""
    from ..import_helpers import resolve_path

    working_directory_importable()
    try:
        obj = resolve_path(path)
    except (ImportError, ValueError) as e:
        raise CLIError(f"cannot import the table {path!r}: {e}") from None
    table = obj() if isinstance(obj, type) else obj
    if not (hasattr(table, "populate") and hasattr(table, "progress")):
        raise CLIError(f"{path} is not a computed DataJoint table (it has no populate())")
    if kind == "mei" and not hasattr(table, "make_compute"):
        raise CLIError(f"{path} is not an MEI table (a subclass of mei.main.MEITemplate)")
    if getattr(table, "database", None) is None:
        raise CLIError(
            f"the schema of {path} is not activated: activate it when its module is imported "
            "(e.g. `schema = dj.Schema('name')` or `schema.activate('name')`)"
        )
    return table


@contextlib.contextmanager
def table_database(mode: str, path: str, *, kind: str = "computed") -> Iterator[tuple[Any, Any]]:
    """For ``mei status`` and ``mei worker``: choose the database as :func:`open_database`
    does (never starting the embedded server), import the table ``path``, connect; yields
    ``(table, database)``.

    The table's module is imported after DataJoint points at the chosen database, so that a
    module connecting at import reaches it. A module may also configure DataJoint itself: with
    nothing configured and the embedded server stopped, DataJoint still points at the stopped
    server while the module is imported (never at whatever answers on localhost), and only if
    the module did not point it elsewhere is that an error.
    """
    from .embedded import EmbeddedPostgres, configured_database

    dj = import_datajoint()
    if mode == "auto" and configured_database() is None:
        server = EmbeddedPostgres()
        if not server.is_running():
            stopped = (
                "no database is configured (DJ_HOST, datajoint.json) and the embedded database "
                f"in {server.directory} is not running: `mei db start` (or configure DataJoint)"
            )
            server.configure_datajoint(make_store=False)
            try:
                table = load_table(path, kind=kind)
            except Exception as e:
                if type(e).__module__.split(".")[0] not in DATABASE_ERROR_MODULES:
                    raise
                raise CLIError(f"{stopped}; importing {path} failed: {type(e).__name__}") from None
            try:
                dj.conn().ping()
            except Exception as e:
                raise CLIError(f"{stopped} ({type(e).__name__})") from None
            yield table, Database("the database the table's module configured", connected=True)
            return
    with open_database(mode, start=False) as database:
        table = load_table(path, kind=kind)
        check_connection(dj, database)
        yield table, database


def check_store(table: Any, path: str) -> None:
    """An MEI table's store (``table.storage``) must be configured, a ``file`` store's folder
    must exist, and the store must take a file (:func:`mei.dj.store.check_store`: an S3
    store's endpoint, bucket and credentials), before any key is reserved: DataJoint finds
    out only when it inserts."""
    dj = import_datajoint()
    store = getattr(table, "storage", None)
    if store is None:
        return
    stores = configured_stores(dj)
    if store not in stores:
        raise CLIError(
            f"the store {store!r} of {path} (its MEI files) is not configured: "
            '`eval "$(mei db env)"` for the embedded database\'s local store, or configure it '
            "(DJ_STORES, datajoint.json; dj_local_conf.json on DataJoint 0.14)"
        )
    spec = stores[store]
    if isinstance(spec, dict) and spec.get("protocol") == "file":
        location = Path(str(spec.get("location", "")))
        if not location.is_dir():
            raise CLIError(
                f"the folder {location} of the store {store!r} does not exist: create it "
                f"(`mkdir -p {location}`)"
            )
    from ..dj.store import check_store as check_store_works

    check_store_works(table)  # reachable, bucket there, credentials accepted, writable


def data_dir_help() -> str:
    from .embedded import data_dir_help

    return data_dir_help()


DATABASE_HELP = (
    "which database to use: 'configured' (DataJoint's settings: DJ_HOST and friends or "
    "datajoint.json), 'embedded' (mei's own PostgreSQL in the data directory), or 'auto': the "
    "configured one if there is one, else the embedded one (default: %(default)s)"
)
