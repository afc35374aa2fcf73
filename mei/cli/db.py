"""``mei db``: start, stop and describe the embedded database."""

from __future__ import annotations

import argparse
from typing import Any

from .common import err


def _cmd_db(args: argparse.Namespace) -> int:
    from .embedded import EmbeddedPostgres, shell_exports

    server = EmbeddedPostgres()
    if args.action == "start":
        notice = server.root_notice()
        if notice:
            err(f"mei: {notice}")
        started = server.start()
        for line in server.notices:
            err(f"mei: {line}")
        print(("started" if started else "already running") + "\n" + server.describe())
        print(shell_exports(server.environment()))
    elif args.action == "stop":
        print("stopped" if server.stop() else "not running")
    elif args.action == "status":
        running = server.is_running()
        print(("running" if running else "not running") + "\n" + server.describe())
        return 0 if running else 3
    else:
        print(shell_exports(server.environment()))
    return 0


def add_parser(commands: Any) -> Any:
    """Add this command to the ``mei`` subcommands."""
    db = commands.add_parser(
        "db",
        help="the embedded database: start, stop, status, env",
        description=(
            "Manage the embedded PostgreSQL database in the data directory ($MEI_DATA_DIR, "
            "else ~/.local/share/mei). 'env' prints the DataJoint environment variables that "
            'point at it (e.g. `eval "$(mei db env)"`).'
        ),
    )
    db.add_argument("action", choices=("start", "stop", "status", "env"))
    db.set_defaults(handler=_cmd_db)
    return db
