"""``mei status``: how far an MEI table's populate has come; clear its error jobs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..dj.explain import why_nothing_to_compute
from .common import DATABASE_HELP, table_database


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


def clear_errors(table: Any) -> int:
    """Delete the error jobs of ``table``, so that workers compute those keys again; return
    how many there were."""
    from ..dj.backend import backend

    queue = backend().jobs(table, declare=False)
    failed = [job["key"] for job in queue.errors()]
    if failed:
        queue.release_many(failed)
    return len(failed)


def _cmd_status(args: argparse.Namespace) -> int:
    with table_database(args.database, args.table) as (table, _):
        cleared = clear_errors(table) if args.clear_errors else None
        status = table_status(table)
        note = why_nothing_to_compute(table) if status["total"] == 0 else None
        if args.json:
            extra: dict[str, Any] = {} if cleared is None else {"cleared_errors": cleared}
            if note:
                extra["note"] = f"nothing to compute: {note}"
            print(json.dumps({"table": args.table, **status, **extra}))
            return 0
        if cleared is not None:
            print(f"cleared {cleared} error job(s): workers compute those keys again")
        print(f"{args.table} ({table.full_table_name})")
        notes = {
            "total": "keys to compute",
            "done": "rows in the table",
            "pending": "waiting for a worker",
            "reserved": "being computed now",
            "errors": "failed; see --errors, retry with --clear-errors",
            "ignored": "marked to skip",
        }
        for name, value in status.items():
            print(f"  {name:<9} {value:>7}   {notes[name]}")
        if note:
            print(f"nothing to compute: {note}")
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
            "when imported. The current directory is importable. The database is chosen as for "
            "`mei worker`: the configured one, else the embedded one if it is running."
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
    status.add_argument(
        "--clear-errors",
        action="store_true",
        help="delete the error jobs first, so that workers compute those keys again",
    )
    status.add_argument("--json", action="store_true", help="print the counts as JSON")
    status.set_defaults(handler=_cmd_status)
    return status
