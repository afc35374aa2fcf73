"""``mei worker``: one worker loop for an MEI table, one process per GPU.

    mei worker my_lab.pipeline.MEI --batch-size 64 --device cuda:0 --max-time 3600
    python -m mei.worker my_lab.pipeline.MEI ...

The table is given as the dotted path of your MEI class; importing its module must bind the
schema (as lab pipeline modules do). The worker reserves keys through DataJoint's job table,
so any number of workers on any number of machines can share one table; see
:func:`mei.populate.run_worker` for the stopping rules (no pending keys, ``--max-keys``,
``--max-time``, SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..import_helpers import resolve_path


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
    parser.add_argument("--batch-size", type=int, default=64, help="neurons per engine run")
    parser.add_argument("--device", help="override the methods' device, e.g. cuda:1")
    parser.add_argument("--max-keys", type=int, help="stop after this many keys")
    parser.add_argument("--max-time", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--no-recover",
        action="store_true",
        help="do not return dead workers' reservations to the queue first",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..dj.worker import run_worker

    if args.batch_size < 1:
        print(f"mei worker: --batch-size must be positive, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        table_class = resolve_path(args.table)
    except (ImportError, ValueError) as e:
        print(f"mei worker: cannot import the table {args.table!r}: {e}", file=sys.stderr)
        return 2
    if not isinstance(table_class, type) or not hasattr(table_class, "make_compute"):
        print(f"mei worker: {args.table!r} is not an MEI table class", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run_worker(
        table_class(),
        *args.restrict,
        batch_size=args.batch_size,
        device=args.device,
        max_keys=args.max_keys,
        max_time=args.max_time,
        recover_dead=not args.no_recover,
        display_progress=False if args.quiet else None,
    )
    summary = {
        "done": result["success_count"],
        "errors": len(result["error_list"]),
        "stopped_by": result["stopped_by"],
        "keys": result["keys"],
    }
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(
            f"mei worker: {summary['done']} done, {summary['errors']} errors "
            f"(stopped: {summary['stopped_by']})"
        )
        for key, message in result["error_list"]:
            print(f"  error {key}: {message}")
    return 0


def add_parser(commands: Any) -> Any:
    """Add ``mei worker`` to the ``mei`` subcommands."""
    worker = commands.add_parser(
        "worker",
        help="run one populate worker for an MEI table (one process per GPU)",
        description=(
            "Reserve, compute and insert MEIs of TABLE (a dotted path module.Class whose module "
            "binds its schema when imported) through DataJoint's job table, batch by batch, "
            "until no key is pending, --max-keys or --max-time is reached, or SIGTERM (which "
            "finishes the current batch; a second SIGTERM gives its keys back). Start one per "
            "GPU on as many machines as you like; keys of dead workers are recovered first."
        ),
    )
    build_parser(worker)
    worker.set_defaults(handler=run)

    return worker


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
