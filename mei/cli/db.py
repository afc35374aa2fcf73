"""``mei db``: start, stop and describe the embedded database."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from .common import data_dir_help, err


def _server() -> Any:
    from .embedded import EmbeddedPostgres

    return EmbeddedPostgres()


def _start(args: argparse.Namespace) -> int:
    from .embedded import shell_exports

    server = _server()
    try:
        started = server.start()
    finally:
        for line in server.notices:
            err(f"mei: {line}")
    server.keep_running()  # asked for by name: runs until `mei db stop`
    server.make_store()
    print(("started" if started else "already running") + "\n" + server.describe())
    print(shell_exports(server.environment()))
    return 0


def _stop(args: argparse.Namespace) -> int:
    print("stopped" if _server().stop() else "not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    server = _server()
    running = server.is_running()
    print(("running" if running else "not running") + "\n" + server.describe())
    return 0 if running else 3


def _env(args: argparse.Namespace) -> int:
    from .embedded import shell_exports

    server = _server()
    server.make_store()
    for line in server.notices:
        err(f"mei: {line}")
    print(shell_exports(server.environment()))
    print(S3_HINT)
    return 0


S3_EXAMPLE = {
    "minio": {
        "protocol": "s3",
        "endpoint": "minio.example.org:9000",
        "bucket": "mei",
        "location": "lab",
        "access_key": "...",
        "secret_key": "...",
        "secure": False,
    }
}
S3_HINT = (
    "# a lab's MinIO/S3 for the MEI files instead of the local folder (after the line above):\n"
    f"# export DJ_STORES={shlex.quote(json.dumps(S3_EXAMPLE))}"
)
"""What `mei db env` adds as a comment: how to point the store ``minio`` at a lab's MinIO."""


ACTIONS = {
    "start": (
        _start,
        "start the embedded database (creating it the first time); print its settings",
        "Start the embedded PostgreSQL server in the data directory, creating the database "
        "cluster the first time, and print where it is and the DataJoint settings that reach "
        "it. A server started this way keeps running until `mei db stop`.",
    ),
    "stop": (
        _stop,
        "stop the embedded database",
        "Stop the embedded PostgreSQL server (connected clients are disconnected).",
    ),
    "status": (
        _status,
        "say whether the embedded database runs (exit status 0) or not (3)",
        "Say whether the embedded PostgreSQL server is running (exit status 0) or not (3), "
        "and where its data, socket and local store are.",
    ),
    "env": (
        _env,
        "print the DataJoint environment variables that reach it",
        "Print `export` lines for DataJoint's environment variables that point at the "
        "embedded database and at the local store 'minio' in the data directory (created if "
        'needed), e.g. `eval "$(mei db env)"`. DataJoint reads no datajoint.json while they '
        "are set. Starts nothing. A comment line shows how to point the store at a lab's "
        "MinIO/S3 instead (DJ_STORES with protocol s3).",
    ),
}


def add_parser(commands: Any) -> Any:
    """Add this command to the ``mei`` subcommands."""
    db = commands.add_parser(
        "db",
        help="the embedded database: start, stop, status, env",
        description=(
            "Manage the embedded PostgreSQL database (pip install 'mei[embedded]') in the data "
            f"directory ({data_dir_help()}). It listens only on a Unix socket there and keeps "
            "its data between runs; the directory also holds the local file store 'minio'."
        ),
    )
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (handler, summary, description) in ACTIONS.items():
        action = actions.add_parser(name, help=summary, description=description)
        action.set_defaults(handler=handler)
    return db
