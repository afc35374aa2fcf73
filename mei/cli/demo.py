"""``mei demo``: mei's DataJoint workflow on a bundled model with known answers."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from .common import (
    DATABASE_HELP,
    CLIError,
    check_connection,
    check_device,
    check_schema_name,
    configured_stores,
    data_dir_help,
    err,
    import_datajoint,
    open_database,
    prepare_output_dir,
    set_quiet,
)

FIGURES = ("meis.png", "traces.png")


def _choose_store(dj: Any, requested: str | None) -> tuple[str, Path | None]:
    """The store for the demo's MEI files, and its folder if it is mei's local store (in the
    data directory; configured here when the store is not)."""
    from .embedded import data_dir

    stores = configured_stores(dj)
    store = requested or ("minio" if "minio" in stores else "mei_demo")
    local = data_dir() / "store"
    if store not in stores:
        try:
            local.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"cannot create the local store {local}: {e.strerror or e}") from None
        dj.config["stores"] = {**stores, store: {"protocol": "file", "location": str(local)}}
        return store, local
    spec = stores[store]
    if isinstance(spec, dict) and spec.get("protocol") == "file":
        if Path(str(spec.get("location", ""))).absolute() == local.absolute():
            return store, local
    return store, None


def _cmd_demo(args: argparse.Namespace) -> int:
    set_quiet(args.quiet)
    from ..progress import progress_enabled

    steps = args.steps if args.steps is not None else (20 if args.quick else 100)
    if steps < 1:
        raise CLIError(f"--steps must be positive, got {steps}")
    check_device(args.device)  # a clear error before touching any database
    check_schema_name(args.schema, suffix="_methods")
    try:
        from .. import plot  # noqa: F401  the figures need matplotlib
    except ImportError as e:
        raise CLIError(str(e)) from None
    out_dir = prepare_output_dir(args.out, FIGURES)  # before any work that could be lost
    dj = import_datajoint()
    with open_database(args.database, keep_running=args.keep_running) as database:
        check_connection(dj, database)
        err(f"mei demo: using {database.description}")
        store, local_store = _choose_store(dj, args.store)
        if local_store is not None:
            err(f"mei demo: MEI files go to the local file store {store!r} in {local_store}")
        else:
            err(f"mei demo: MEI files go to the configured store {store!r}")
        from . import demo_pipeline as demo

        if args.reset:
            dropped = demo.drop(args.schema)
            if dropped:
                err(f"mei demo: dropped the schemas {', '.join(dropped)}")
            if local_store is not None:  # DataJoint leaves the files of dropped rows behind
                for folder in (local_store / "_schema" / args.schema, local_store / args.schema):
                    if folder.is_dir():
                        shutil.rmtree(folder)
                        err(f"mei demo: removed the stored files in {folder}")
        demo.activate(args.schema, store=store)
        err(
            f"mei demo: tables in the schema {args.schema!r}, methods and seeds in "
            f"{demo.MEI.method_table.database!r}"
        )
        result = demo.run_demo(
            out_dir=out_dir,
            steps=steps,
            device=args.device,
            seed=args.seed,
            progress=progress_enabled(None),
            log=lambda message: err(f"mei demo: {message}"),
        )
        if database.server is not None and args.keep_running:
            from .embedded import shell_exports

            err(
                "mei demo: the embedded database keeps running; connect with\n"
                + shell_exports(database.server.environment())
            )
    print(result.summary())
    if result.computed:
        print(f"computed {result.computed} MEIs in {result.seconds_populate:.1f} s")
    for path in result.figures:
        print(f"wrote {path}")
    if not result.neurons:
        raise CLIError("the MEI table has no rows for the demo's method and seed")
    failures = result.failures(args.min_correlation)
    if failures:
        ids = ", ".join(str(n.neuron_id) for n in failures)
        raise CLIError(
            f"{len(failures)} MEI(s) correlate less than {args.min_correlation} with their "
            f"neuron's filter: neurons {ids}"
        )
    return 0


def add_parser(commands: Any) -> Any:
    """Add this command to the ``mei`` subcommands."""
    demo = commands.add_parser(
        "demo",
        help="run the DataJoint workflow on a bundled V1 model with known answers",
        description=(
            "Run mei's DataJoint workflow (ensemble, selector, method, seed, populate) on a "
            "bundled V1-like model whose neurons are Gabor and center-surround filters, print "
            "each neuron's score and the correlation of its MEI with its filter, and write "
            "meis.png (MEIs above the true filters) and traces.png. Exits with status 1 if a "
            "correlation is below --min-correlation. Uses the configured database, else an "
            "embedded PostgreSQL (pip install 'mei[embedded]') in the data directory "
            f"({data_dir_help()}), which is kept for the next run; a server the demo started "
            "is stopped when the last command using it ends."
        ),
    )
    demo.add_argument(
        "-o", "--out", default="mei-demo", help="output directory (default: %(default)s)"
    )
    demo.add_argument(
        "--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)"
    )
    demo.add_argument("--quick", action="store_true", help="20 optimization steps instead of 100")
    demo.add_argument("--steps", type=int, default=None, help="optimization steps per MEI")
    demo.add_argument("--seed", type=int, default=42, help="the MEI seed (default: %(default)s)")
    demo.add_argument(
        "--database", choices=("auto", "configured", "embedded"), default="auto", help=DATABASE_HELP
    )
    demo.add_argument(
        "--schema",
        default="mei_demo",
        help="schema of the demo's tables (lowercase letters, digits, underscores); "
        "MEIMethod and MEISeed go to SCHEMA_methods (default: %(default)s)",
    )
    demo.add_argument(
        "--store",
        default=None,
        help="DataJoint store for the MEI files (default: 'minio' if configured, as it is "
        "for the embedded database, else a local file store 'mei_demo' in the data directory)",
    )
    demo.add_argument("--reset", action="store_true", help="drop the demo's schemas first")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the embedded database running afterwards and print how to connect",
    )
    demo.add_argument(
        "--min-correlation",
        type=float,
        default=0.9,
        help="fail if an MEI correlates less with its filter (default: %(default)s)",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_cmd_demo)
    return demo
