"""What the ``mei`` commands share: errors, quiet output, and choosing the database."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import MEIError


def version() -> str:
    from .. import __version__

    return __version__


class CLIError(MEIError):
    """A problem the user can fix; ``mei`` prints the message and exits with status 1."""


def err(message: str) -> None:
    """Print ``message`` to stderr (stdout is for results)."""
    print(message, file=sys.stderr, flush=True)


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


@dataclass(frozen=True)
class Database:
    """The database a command uses: a description for the user, and the embedded server."""

    description: str
    server: Any = None  # an EmbeddedPostgres when the embedded database is used
    started: bool = False


def check_connection(dj: Any) -> None:
    try:
        dj.conn().ping()
    except Exception as e:  # report the server, never the credentials
        host = dj.config["database.host"]
        raise CLIError(
            f"cannot connect to the database at {host}: {type(e).__name__}: {e}. Check "
            "DataJoint's settings (DJ_HOST, DJ_PORT, DJ_USER, DJ_PASS, DJ_BACKEND or datajoint.json)"
        ) from None


def use_database(
    mode: str, *, start: bool = True, connect: bool = True, log: Callable[[str], None] = err
) -> Database:
    """Point DataJoint at the configured server or the embedded one (``mode``: ``auto``,
    ``configured`` or ``embedded``) and, with ``connect``, check the connection. ``start``:
    start the embedded server if it is not running (else that is an error)."""
    from .embedded import EmbeddedPostgres, configured_database

    dj = import_datajoint()
    source = configured_database()
    if mode == "configured" or (mode == "auto" and source is not None):
        if source is None:
            raise CLIError(
                "no database is configured: set DataJoint's environment variables (DJ_HOST, "
                "DJ_USER, DJ_PASS, DJ_BACKEND, DJ_PORT) or write a datajoint.json, or use "
                "--database embedded"
            )
        if connect:
            check_connection(dj)
        backend = dj.config.get("database.backend", "mysql")
        return Database(
            f"the configured database ({backend} at {dj.config['database.host']}, from {source})"
        )
    from ..dj.backend import backend

    if not backend().supports_postgresql:
        raise CLIError(
            f"no database is configured, and the embedded database (PostgreSQL) needs "
            f"DataJoint 2.x, not {dj.__version__}: configure a MySQL server in "
            "dj_local_conf.json or with DJ_HOST, DJ_USER and DJ_PASS"
        )
    server = EmbeddedPostgres()
    notice = server.root_notice()
    if notice:
        log(f"mei: {notice}")
    if start:
        started = server.start()
        for line in server.notices:
            log(f"mei: {line}")
    elif not server.is_running():
        raise CLIError(
            f"the embedded database in {server.directory} is not running: `mei db start`"
        )
    else:
        started = False
    try:
        server.configure_datajoint()
        if connect:
            check_connection(dj)
    except BaseException:
        if started:  # leave nothing running behind a failed command
            server.stop()
        raise
    state = "started" if started else "already running"
    return Database(
        f"the embedded PostgreSQL database ({state}; data in {server.directory})", server, started
    )


def configured_stores(dj: Any) -> dict[str, Any]:
    return dict(dj.config.get("stores") or {})


@contextlib.contextmanager
def stop_embedded(database: Database, keep_running: bool) -> Iterator[None]:
    """Stop the embedded server on the way out if this command started it."""
    try:
        yield
    finally:
        if database.started and not keep_running:
            database.server.stop()


DATABASE_HELP = (
    "which database to use: 'configured' (DataJoint's settings: DJ_HOST and friends or "
    "datajoint.json), 'embedded' (mei's own PostgreSQL in the data directory), or 'auto': the "
    "configured one if there is one, else the embedded one (default: %(default)s)"
)
