"""``mei worker``: one worker loop for an MEI table, one process per GPU.

    mei worker my_lab.pipeline.MEI --batch-size 64 --device cuda:0 --max-time 3600
    python -m mei.worker my_lab.pipeline.MEI ...

The table is given as the dotted path of your MEI class (modules in the working directory can be
named); importing its module must bind the schema (as lab pipeline modules do). The database is
chosen as for ``mei status``: the configured one, else the embedded one if it is running. The
worker reserves keys through DataJoint's job table, so any number of workers on any number of
machines can share one table; see :func:`mei.populate.run_worker` for the stopping rules (no
pending keys, ``--max-keys``, ``--max-time``, SIGTERM).

Exit status: 0 when every key it took was stored (whatever stopped it), :data:`KEYS_FAILED` (3)
when keys failed (their errors are in the job table: ``mei status TABLE --errors``), 1 when it
could not start or run (one line: the database, the store, the table, a device), 2 for bad
arguments, and 143 when a second SIGTERM interrupted the batch in hand (its keys went back to the
queue).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..dj.explain import why_nothing_to_compute
from .common import DATABASE_HELP, check_device, check_store, err, table_database

KEYS_FAILED = 3
"""``mei worker``'s exit status when it ran but some keys failed."""

EXIT_STATUS_HELP = (
    "Exit status: 0 when every key the worker took was stored (whatever stopped it); "
    f"{KEYS_FAILED} when keys failed (their errors are in the job table: `mei status TABLE "
    "--errors`; clear them with --clear-errors to compute them again); 1 when it could not "
    "start or run (the database, the store, the table or the device: one line says which); 2 "
    "for bad arguments; 143 when a second SIGTERM interrupted the batch in hand (its keys went "
    "back to the queue)."
)


def _restriction(text: str) -> Any:
    """A JSON object (a key such as ``{"method_hash": "..."}``) or an SQL condition string."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"--restrict is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("--restrict JSON must be an object")
        return value
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="mei worker", description="Run one worker loop for an MEI table."
    )
    parser.add_argument("table", help="dotted path of the MEI table class, e.g. lab.pipeline.MEI")
    parser.add_argument(
        "--restrict",
        type=_restriction,
        action="append",
        default=[],
        help="restrict the keys: a JSON object or an SQL condition (repeatable: AND)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, help="neurons per engine run"
    )
    parser.add_argument("--device", help="override the methods' device, e.g. cuda:1")
    parser.add_argument(
        "--capture",
        action="store_true",
        help="capture each run's steps as a CUDA graph where it can (the same numbers, less "
        "host time per step on a GPU; the log says what cannot be captured)",
    )
    parser.add_argument("--max-keys", type=_positive_int, help="stop after this many keys")
    parser.add_argument("--max-time", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--no-recover",
        action="store_true",
        help="do not return dead workers' reservations to the queue first",
    )
    parser.add_argument(
        "--database",
        choices=("auto", "configured", "embedded"),
        default="auto",
        help=DATABASE_HELP.replace("default: %(default)s", "default: auto; never starts a server"),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _print_errors(errors: list[tuple[Any, str]], path: str) -> None:
    """Each failed key with its message; keys that failed with the same message in one line."""
    groups: dict[str, list[Any]] = {}
    for key, message in errors:
        groups.setdefault(message, []).append(key)
    for message, keys in groups.items():
        if len(keys) == 1:
            print(f"  error {keys[0]}: {message}")
        else:
            print(f"  {len(keys)} keys failed with: {message} (`mei status {path} --errors`)")
    if any("No space left on device" in message for message in groups):
        err(
            "mei worker: a disk is full (the store's, usually): free some space there, then "
            f"`mei status {path} --clear-errors` and start the worker again"
        )


def _nothing_done(table: Any, path: str) -> str:
    """Why a worker found nothing to compute."""
    from .status import table_status

    status = table_status(table)
    if status["total"] == 0:
        return f"nothing to compute: {why_nothing_to_compute(table)}"
    parts = [f"{status['done']} of {status['total']} keys are done"]
    if status["reserved"]:
        parts.append(f"{status['reserved']} are being computed by other workers")
    if status["errors"]:
        parts.append(
            f"{status['errors']} failed (`mei status {path} --errors`; `--clear-errors` to "
            "compute them again)"
        )
    if status["ignored"]:
        parts.append(f"{status['ignored']} are marked to skip")
    return "nothing left for this worker: " + ", ".join(parts)


class _NoTypeAdvice(logging.Filter):
    """Drops DataJoint 2.x's advice on native column types, which it gives when it declares
    the jobs table of an MEI table (it copies the key's columns): nothing a worker can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Consider using a core DataJoint type" not in record.getMessage()


def _log_to_stderr() -> None:
    """mei's log lines (recovered keys, the worker's stop) on stderr, with their time. Only
    mei's logger: DataJoint's has its own handler, so its lines are not printed twice."""
    logger = logging.getLogger("mei")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    datajoint = logging.getLogger("datajoint")
    if not any(isinstance(f, _NoTypeAdvice) for f in datajoint.filters):
        datajoint.addFilter(_NoTypeAdvice())


def run(args: argparse.Namespace) -> int:
    from .common import import_datajoint

    import_datajoint()  # quietly, before anything else imports it
    if args.device is not None:
        check_device(args.device)  # refuse a missing device before reserving anything
    with table_database(args.database, args.table, kind="mei") as (table, _):
        check_store(table, args.table)  # before a key is reserved, not after it is computed
        from ..dj.worker import run_worker

        _log_to_stderr()
        if args.capture:
            table.capture = True
        result = run_worker(
            table,
            *args.restrict,
            batch_size=args.batch_size,
            device=args.device,
            max_keys=args.max_keys,
            max_time=args.max_time,
            recover_dead=not args.no_recover,
            display_progress=False if args.quiet else None,
        )
        done, errors = result["success_count"], result["error_list"]
        idle = not done and not errors and result["stopped_by"] == "no pending keys"
        note = _nothing_done(table, args.table) if idle else None
    summary = {
        "done": done,
        "errors": len(errors),
        "stopped_by": result["stopped_by"],
        "keys": result["keys"],
    }
    if args.json:
        if note:
            summary["note"] = note
        print(json.dumps(summary, default=str))
    else:
        print(f"mei worker: {done} done, {len(errors)} errors (stopped: {summary['stopped_by']})")
        _print_errors(errors, args.table)
        if note:
            err(f"mei worker: {note}")
    return KEYS_FAILED if errors else 0


def add_parser(commands: Any) -> Any:
    """Add ``mei worker`` to the ``mei`` subcommands."""
    worker = commands.add_parser(
        "worker",
        help="run one populate worker for an MEI table (one process per GPU)",
        description=(
            "Reserve, compute and insert MEIs of TABLE (a dotted path module.Class whose module "
            "binds its schema when imported; the current directory is importable) through "
            "DataJoint's job table, batch by batch, until no key is pending, --max-keys or "
            "--max-time is reached, or SIGTERM (which finishes the current batch; a second "
            "SIGTERM gives its keys back). Start one per GPU on as many machines as you like; "
            "keys of dead workers are recovered first, and again when nothing is pending. The "
            "database is the configured one, else the embedded one if it is running (`mei db "
            "start`). Recipes for SLURM and Kubernetes: deploy/ in mei's repository."
        ),
        epilog=EXIT_STATUS_HELP,
    )
    build_parser(worker)
    worker.set_defaults(handler=run)
    return worker


def main(argv: list[str] | None = None) -> int:
    from . import main as mei_main

    return mei_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
