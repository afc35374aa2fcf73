"""``mei status``: how far an MEI table's populate has come."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import (
    DATABASE_HELP,
    CLIError,
    check_connection,
    import_datajoint,
    use_database,
    working_directory_importable,
)


def _load_table(path: str) -> Any:
    from ..import_helpers import resolve_path

    working_directory_importable()
    try:
        obj = resolve_path(path)
    except (ImportError, ValueError) as e:
        raise CLIError(f"cannot import the table {path!r}: {e}") from None
    table = obj() if isinstance(obj, type) else obj
    if not (hasattr(table, "populate") and hasattr(table, "progress")):
        raise CLIError(f"{path} is not a computed DataJoint table (it has no populate())")
    if getattr(table, "database", None) is None:
        raise CLIError(
            f"the schema of {path} is not activated: activate it when its module is imported "
            "(e.g. `schema = dj.Schema('name')` or `schema.activate('name')`)"
        )
    return table


def table_status(table: Any) -> dict[str, int]:
    """How far ``table``'s populate has come, from its key source and its jobs.

    ``total`` keys to compute; ``done`` rows made; ``reserved`` keys being computed now;
    ``errors`` keys whose make failed (until their error jobs are deleted); ``ignored`` keys
    marked to skip; ``pending`` the rest, waiting for a worker.
    """
    from ..dj.backend import backend

    remaining, total = table.progress(display=False)
    counts = backend().jobs(table, declare=False).counts()
    return {
        "total": int(total),
        "done": int(total - remaining),
        "pending": max(0, int(remaining) - counts["reserved"] - counts["error"] - counts["ignore"]),
        "reserved": counts["reserved"],
        "errors": counts["error"],
        "ignored": counts["ignore"],
    }


def _cmd_status(args: argparse.Namespace) -> int:
    dj = import_datajoint()
    # The table's module may configure DataJoint and connect when imported: import it after
    # choosing the database, and check the connection after importing it.
    use_database(args.database, start=False, connect=False)
    table = _load_table(args.table)
    check_connection(dj)
    status = table_status(table)
    if args.json:
        print(json.dumps({"table": args.table, **status}))
        return 0
    print(f"{args.table} ({table.full_table_name})")
    notes = {
        "total": "keys to compute",
        "done": "rows in the table",
        "pending": "waiting for a worker",
        "reserved": "being computed now",
        "errors": "failed; see --errors",
        "ignored": "marked to skip",
    }
    for name, value in status.items():
        print(f"  {name:<9} {value:>7}   {notes[name]}")
    if args.errors:
        from ..dj.backend import backend

        for job in backend().jobs(table, declare=False).errors():
            key = job["key"]
            message = str(job.get("error_message", "")).strip().splitlines()
            print(f"  error {key}: {message[0] if message else ''}")
    return 0


def add_parser(commands: Any) -> Any:
    """Add this command to the ``mei`` subcommands."""
    status = commands.add_parser(
        "status",
        help="progress of an MEI table: done, pending, reserved, errors",
        description=(
            "Show how far the populate of a computed table has come: keys in total, done, "
            "pending, reserved (being computed), errors, from the table and its jobs. TABLE is "
            "a dotted path module.Class to the table class; its module must activate its schema "
            "when imported. The current directory is importable."
        ),
    )
    status.add_argument("table", metavar="TABLE", help="dotted path to the table, e.g. lab.MEI")
    status.add_argument(
        "--database",
        choices=("auto", "configured", "embedded"),
        default="auto",
        help=DATABASE_HELP.replace("default: %(default)s", "default: auto; never starts a server"),
    )
    status.add_argument("--errors", action="store_true", help="list the failed keys and messages")
    status.add_argument("--json", action="store_true", help="print the counts as JSON")
    status.set_defaults(handler=_cmd_status)
    return status
