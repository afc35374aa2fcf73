"""The ``mei`` command: ``mei demo``, ``mei generate``, ``mei status`` and ``mei db``.

``mei demo`` runs mei's DataJoint workflow on a bundled model with known answers (see
:mod:`mei.demo`); ``mei generate`` finds MEIs of any model without a database; ``mei status``
shows how far an MEI table's populate has come; ``mei db`` manages the embedded database.
Run ``mei COMMAND --help`` for the options. Also available as ``python -m mei``.

Exit status: 0 on success, 1 when the command fails (the message says why, without a
traceback for anything the user can fix), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MEIError

__all__ = ["CLIError", "main", "parse_units"]


class CLIError(MEIError):
    """A problem the user can fix; ``mei`` prints the message and exits with status 1."""


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _version() -> str:
    from . import __version__

    return __version__


# -- shared helpers -------------------------------------------------------------------------


def _working_directory_importable() -> None:
    """Like ``python -m``: modules in the working directory can be imported by dotted path."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _set_quiet(quiet: bool) -> None:
    """``--quiet`` silences progress bars everywhere, the engine's included."""
    if quiet:
        os.environ["MEI_QUIET"] = "1"


def _import_datajoint() -> Any:
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


def _connect(dj: Any) -> None:
    try:
        dj.conn().ping()
    except Exception as e:  # report the server, never the credentials
        host = dj.config["database.host"]
        raise CLIError(
            f"cannot connect to the database at {host}: {type(e).__name__}: {e}. Check "
            "DataJoint's settings (DJ_HOST, DJ_PORT, DJ_USER, DJ_PASS, DJ_BACKEND or datajoint.json)"
        ) from None


def _use_database(
    mode: str, *, start: bool = True, connect: bool = True, log: Callable[[str], None] = _err
) -> Database:
    """Point DataJoint at the configured server or the embedded one (``mode``: ``auto``,
    ``configured`` or ``embedded``) and, with ``connect``, check the connection. ``start``:
    start the embedded server if it is not running (else that is an error)."""
    from .embedded import EmbeddedPostgres, configured_database

    dj = _import_datajoint()
    source = configured_database()
    if mode == "configured" or (mode == "auto" and source is not None):
        if source is None:
            raise CLIError(
                "no database is configured: set DataJoint's environment variables (DJ_HOST, "
                "DJ_USER, DJ_PASS, DJ_BACKEND, DJ_PORT) or write a datajoint.json, or use "
                "--database embedded"
            )
        if connect:
            _connect(dj)
        backend = dj.config.get("database.backend", "mysql")
        return Database(
            f"the configured database ({backend} at {dj.config['database.host']}, from {source})"
        )
    if int(dj.__version__.split(".")[0]) < 2:
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
            _connect(dj)
    except BaseException:
        if started:  # leave nothing running behind a failed command
            server.stop()
        raise
    state = "started" if started else "already running"
    return Database(
        f"the embedded PostgreSQL database ({state}; data in {server.directory})", server, started
    )


def _stores(dj: Any) -> dict[str, Any]:
    return dict(dj.config.get("stores") or {})


@contextlib.contextmanager
def _stop_embedded(database: Database, keep_running: bool) -> Iterator[None]:
    """Stop the embedded server on the way out if this command started it."""
    try:
        yield
    finally:
        if database.started and not keep_running:
            database.server.stop()


# -- mei demo -------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    _set_quiet(args.quiet)
    from .progress import progress_enabled

    steps = args.steps if args.steps is not None else (20 if args.quick else 100)
    if steps < 1:
        raise CLIError(f"--steps must be positive, got {steps}")
    from .config import parse_device

    parse_device(args.device)  # a clear error before touching any database
    try:
        from . import plot  # noqa: F401  the figures need matplotlib
    except ImportError as e:
        raise CLIError(str(e)) from None
    dj = _import_datajoint()
    database = _use_database(args.database)
    with _stop_embedded(database, args.keep_running):
        _err(f"mei demo: using {database.description}")
        store = args.store
        stores = _stores(dj)
        if store is None:
            store = "minio" if "minio" in stores else "mei_demo"
        local_store = None
        if store not in stores:
            from .embedded import data_dir

            local_store = data_dir() / "store"
            local_store.mkdir(parents=True, exist_ok=True)
            dj.config["stores"] = {
                **stores,
                store: {"protocol": "file", "location": str(local_store)},
            }
            _err(f"mei demo: MEI files go to the local file store {store!r} in {local_store}")
        else:
            _err(f"mei demo: MEI files go to the configured store {store!r}")
        from . import demo

        if args.reset:
            dropped = demo.drop(args.schema)
            if dropped:
                _err(f"mei demo: dropped the schemas {', '.join(dropped)}")
            if local_store is not None:  # DataJoint leaves the files of dropped rows behind
                for folder in (local_store / "_schema" / args.schema, local_store / args.schema):
                    if folder.is_dir():
                        shutil.rmtree(folder)
                        _err(f"mei demo: removed the stored files in {folder}")
        demo.activate(args.schema, store=store)
        _err(
            f"mei demo: tables in the schema {args.schema!r}, methods and seeds in "
            f"{demo.MEIMethod.database!r}"
        )
        result = demo.run_demo(
            out_dir=Path(args.out),
            steps=steps,
            device=args.device,
            seed=args.seed,
            progress=progress_enabled(None),
            log=lambda message: _err(f"mei demo: {message}"),
        )
        if database.server is not None and args.keep_running:
            from .embedded import shell_exports

            _err(
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


# -- mei generate ---------------------------------------------------------------------------


def parse_units(spec: str, n_units: int | None = None) -> list[int]:
    """Units from ``"all"``, ``"3"``, ``"0,2,5"`` or ranges ``"0-7,12"`` (inclusive).

    ``n_units`` (the model's number of outputs) is needed for ``"all"`` and checks the range.
    """
    spec = spec.strip()
    if spec == "all":
        if n_units is None:
            raise CLIError("--units all needs the model's number of outputs")
        return list(range(n_units))
    units: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                first, last = part.split("-", 1) if not part.startswith("-") else (part, "")
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError
                units += range(low, high + 1)
            else:
                units.append(int(part))
        except ValueError:
            raise CLIError(
                f"--units: cannot read {part!r} in {spec!r}; use e.g. 'all', '3', '0,2,5' or "
                "'0-7,12'"
            ) from None
    bad = [u for u in units if u < 0 or (n_units is not None and u >= n_units)]
    if bad:
        limit = f"0..{n_units - 1}" if n_units is not None else "non-negative"
        raise CLIError(f"--units: unit(s) {bad} out of range; the model's units are {limit}")
    if len(set(units)) != len(units):
        raise CLIError(f"--units: {spec!r} names a unit twice")
    return units


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read the shape {text!r}; use e.g. 1,36,64 (C,H,W)"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"the shape must have positive sizes, got {text!r}")
    return shape


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _read_config(path: Path) -> dict[str, Any]:
    """A method config from a JSON or YAML file."""
    if not path.is_file():
        raise CLIError(f"config file not found: {path}")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"{path} is not valid JSON: {e}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CLIError(
                f"reading {path} needs PyYAML: `pip install pyyaml`, or write the config as JSON"
            ) from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CLIError(f"{path} is not valid YAML: {e}") from None
    else:
        raise CLIError(f"the config file must end in .json, .yaml or .yml, got {path.name}")
    if not isinstance(config, dict):
        raise CLIError(f"{path} must hold a mapping (a method config), got {type(config).__name__}")
    return config


def _load_model(path: str, kwargs_json: str | None) -> Any:
    """The model from a dotted path to a callable returning an ``nn.Module`` (or a module)."""
    from torch import nn

    from .import_helpers import import_object

    _working_directory_importable()
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        raise CLIError(f"--model-kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise CLIError(f"--model-kwargs must be a JSON object, got {kwargs_json!r}")
    try:
        obj = import_object(path)
    except (ImportError, ValueError) as e:
        raise CLIError(f"cannot import the model {path!r}: {e}") from None
    if isinstance(obj, nn.Module):
        if kwargs:
            raise CLIError(f"{path} is a module, not a callable: --model-kwargs cannot apply")
        return obj
    if not callable(obj):
        raise CLIError(
            f"{path} must be a callable returning an nn.Module, got {type(obj).__name__}"
        )
    try:
        model = obj(**kwargs)
    except TypeError as e:
        raise CLIError(f"calling {path}(**{kwargs!r}) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise CLIError(f"{path}() must return an nn.Module, got {type(model).__name__}")
    return model


def _output_count(model: Any, shape: tuple[int, ...]) -> int:
    """Run the model once on zeros ``shape`` (CPU) and return its number of outputs."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            output = model(torch.zeros(shape, device=device))
    except Exception as e:
        raise CLIError(
            f"the model fails on an input of shape {shape}: {type(e).__name__}: {e} "
            "(is --shape right?)"
        ) from None
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CLIError(f"the model must map (B, ...) to (B, units), got output {got}")
    return output.shape[1]


def _cmd_generate(args: argparse.Namespace) -> int:
    _set_quiet(args.quiet)
    import torch

    from .config import resolve_config
    from .methods import gradient_ascent_units

    config = _read_config(Path(args.config))
    if args.device is not None:
        config["device"] = args.device
    config.setdefault("device", "cpu")
    resolve_config(config)  # ConfigError (a user error) before the model is built
    if not args.no_plot:
        try:
            from . import plot
        except ImportError as e:
            raise CLIError(f"{e}; or pass --no-plot to write only the tensors") from None
    model = _load_model(args.model, args.model_kwargs)
    if args.shape is not None:
        shape = (1, *args.shape)
    elif getattr(model, "input_shape", None) is not None:
        shape = (1, *tuple(model.input_shape)[1:])
    else:
        raise CLIError(
            f"{args.model} has no input_shape attribute: give the input shape, e.g. --shape 1,36,64"
        )
    n_units = _output_count(model, shape)
    units = parse_units(args.units, n_units)
    out = Path(args.out)
    _err(f"mei generate: {len(units)} unit(s) of {args.model}, input {shape}, seed {args.seed}")
    start = time.perf_counter()
    results = gradient_ascent_units(
        None, model, config, args.seed, units, shape=shape, batch_size=args.batch_size
    )
    seconds = time.perf_counter() - start
    meis = torch.cat([mei for mei, _, _ in results])
    scores = [score for _, score, _ in results]
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "meis.pt", out / "results.pt"]
    torch.save(meis, written[0])
    torch.save(
        {
            "model": args.model,
            "model_kwargs": json.loads(args.model_kwargs) if args.model_kwargs else {},
            "units": units,
            "seed": args.seed,
            "config": config,
            "scores": scores,
            "outputs": [output for _, _, output in results],
        },
        written[1],
    )
    if not args.no_plot:
        titles = [f"unit {u}" for u in units]
        if meis.dim() == 5:  # spatio-temporal (B, C, T, H, W): frames and a GIF
            plot.plot_frames(meis, scores=scores, max_frames=8, path=out / "meis.png")
            written += [out / "meis.png", plot.save_gif(meis, out / "meis.gif")]
        else:
            plot.plot_meis(meis, scores=scores, titles=titles, path=out / "meis.png")
            written.append(out / "meis.png")
    print(f"{'unit':>6}  {'score':>9}")
    for unit, score in zip(units, scores, strict=True):
        print(f"{unit:>6}  {score:>9.4f}")
    print(f"{len(units)} MEI(s) in {seconds:.1f} s")
    for path in written:
        print(f"wrote {path}")
    return 0


# -- mei status -----------------------------------------------------------------------------


def _load_table(path: str) -> Any:
    from .import_helpers import import_object

    _working_directory_importable()
    try:
        obj = import_object(path)
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
    import datajoint as dj

    remaining, total = table.progress(display=False)
    counts = {"reserved": 0, "error": 0, "ignore": 0}
    if int(dj.__version__.split(".")[0]) >= 2:
        from datajoint.jobs import Job

        jobs = Job(table)  # not table.jobs: that would create the jobs table
        if jobs.is_declared:
            progress = jobs.progress()
            counts = {k: int(progress.get(k, 0)) for k in counts}
    else:
        schema_jobs = table.connection.schemas[table.database].jobs
        for status in counts:
            counts[status] = len(schema_jobs & {"table_name": table.table_name, "status": status})
    return {
        "total": int(total),
        "done": int(total - remaining),
        "pending": max(0, int(remaining) - counts["reserved"] - counts["error"] - counts["ignore"]),
        "reserved": counts["reserved"],
        "errors": counts["error"],
        "ignored": counts["ignore"],
    }


def _error_jobs(table: Any) -> list[dict[str, Any]]:
    import datajoint as dj

    if int(dj.__version__.split(".")[0]) >= 2:
        from datajoint.jobs import Job

        jobs = Job(table)
        if not jobs.is_declared:
            return []
        return jobs.errors.to_dicts()
    schema_jobs = table.connection.schemas[table.database].jobs
    return list(
        (schema_jobs & {"table_name": table.table_name, "status": "error"}).fetch(as_dict=True)
    )


def _cmd_status(args: argparse.Namespace) -> int:
    dj = _import_datajoint()
    # The table's module may configure DataJoint and connect when imported: import it after
    # choosing the database, and check the connection after importing it.
    _use_database(args.database, start=False, connect=False)
    table = _load_table(args.table)
    _connect(dj)
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
        for job in _error_jobs(table):
            key = job.get("key")  # DataJoint 0.14 keeps the key in a blob
            if not isinstance(key, dict):
                key = {k: v for k, v in job.items() if k in table.primary_key}
            message = str(job.get("error_message", "")).strip().splitlines()
            print(f"  error {key}: {message[0] if message else ''}")
    return 0


# -- mei db ---------------------------------------------------------------------------------


def _cmd_db(args: argparse.Namespace) -> int:
    from .embedded import EmbeddedPostgres, shell_exports

    server = EmbeddedPostgres()
    if args.action == "start":
        notice = server.root_notice()
        if notice:
            _err(f"mei: {notice}")
        started = server.start()
        for line in server.notices:
            _err(f"mei: {line}")
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


# -- the parser -----------------------------------------------------------------------------

DATABASE_HELP = (
    "which database to use: 'configured' (DataJoint's settings: DJ_HOST and friends or "
    "datajoint.json), 'embedded' (mei's own PostgreSQL in the data directory), or 'auto': the "
    "configured one if there is one, else the embedded one (default: %(default)s)"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``mei`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mei",
        description="Most exciting inputs (MEIs) of neurons in PyTorch models.",
        epilog="Run `mei demo` for a first picture. `mei COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"mei {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
            "($MEI_DATA_DIR, else ~/.local/share/mei), which is kept for the next run."
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
        help="schema of the demo's tables; MEIMethod and MEISeed go to SCHEMA_methods "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--store",
        default=None,
        help="DataJoint store for the MEI files (default: 'minio' if configured, else a local "
        "file store 'mei_demo' in the data directory)",
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

    generate = commands.add_parser(
        "generate",
        help="MEIs of a model given by dotted path; no database",
        description=(
            "Find MEIs of a model without a database. MODEL is a dotted path to a callable "
            "that returns an nn.Module mapping inputs (B, C, H, W) to responses (B, units), "
            "e.g. mei.zoo.v1_model or mypackage.models.build. Writes meis.pt (the MEIs, one "
            "per unit, stacked), results.pt (units, scores, traces, config) and meis.png."
        ),
    )
    generate.add_argument("model", metavar="MODEL", help="dotted path to a model factory")
    generate.add_argument(
        "-c", "--config", required=True, help="method config file (.json, .yaml or .yml)"
    )
    generate.add_argument(
        "-u", "--units", default="all", help="units: all, 3, 0,2,5 or 0-7,12 (default: all)"
    )
    generate.add_argument("--seed", type=int, default=42, help="seed (default: %(default)s)")
    generate.add_argument(
        "--device",
        default=None,
        help="torch device; overrides the config's (default: config, else cpu)",
    )
    generate.add_argument(
        "-o", "--out", default="meis", help="output directory (default: %(default)s)"
    )
    generate.add_argument(
        "--shape",
        type=_parse_shape,
        default=None,
        help="input shape C,H,W (default: the model's input_shape attribute)",
    )
    generate.add_argument(
        "--batch-size", type=_positive_int, default=None, help="units per batched run"
    )
    generate.add_argument(
        "--model-kwargs", default=None, help="keyword arguments for MODEL as a JSON object"
    )
    generate.add_argument("--no-plot", action="store_true", help="write only the tensors")
    generate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    generate.set_defaults(handler=_cmd_generate)

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
    from . import worker as worker_module

    worker_module.build_parser(worker)
    worker.set_defaults(handler=worker_module.run)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mei`` with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"mei {args.command}: error:"
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        _err(f"mei {args.command}: interrupted")
        return 130
    except (MEIError, FileNotFoundError, PermissionError) as e:
        _err(f"{prefix} {e}")
        return 1
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("datajoint", "pymysql", "psycopg2"):
            _err(f"{prefix} {type(e).__name__}: {e}")
            return 1
        raise
