"""The ``mei`` command: ``mei demo``, ``mei generate``, ``mei status``, ``mei worker``, ``mei db``.

One module per command (:mod:`~mei.cli.demo`, :mod:`~mei.cli.generate`,
:mod:`~mei.cli.status`, :mod:`~mei.cli.worker`, :mod:`~mei.cli.db`), each with its handler and
an ``add_parser``; :mod:`~mei.cli.common` holds what they share (errors, choosing the
database), :mod:`~mei.cli.embedded` the embedded PostgreSQL server and
:mod:`~mei.cli.demo_pipeline` the demo's tables. Run ``mei COMMAND --help`` for the options.
Also available as ``python -m mei``.

Exit status: 0 on success, 1 when the command fails (the message says why, without a
traceback for anything the user can fix), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import db, demo, generate, status, worker
from .common import CLIError, describe_error, err, version
from .generate import parse_units

__all__ = ["CLIError", "build_parser", "main", "parse_units"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mei`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mei",
        description="Most exciting inputs (MEIs) of neurons in PyTorch models.",
        epilog="Run `mei demo` for a first picture. `mei COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"mei {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (demo, generate, status, worker, db):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mei`` with ``argv`` (default: the command line); return the exit status.

    Any of mei's own errors (:class:`mei.errors.MEIError` and its subclasses), operating system
    errors (a full disk, a missing file) and DataJoint's or the database clients' errors are
    printed as one line, ``mei COMMAND: error: ...``, with exit status 1; anything else is a
    bug and shows its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command if args.command != "db" else f"db {args.action}"
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        err(f"mei {command}: interrupted")
        return 130
    except Exception as e:
        message = describe_error(e)
        if message is None:
            raise
        err(f"mei {command}: error: {message}")
        return 1
