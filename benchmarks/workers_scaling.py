"""Many workers, one table: keys per minute with 1, 2 and 4 worker processes on one MEI table,
and the database queries a worker makes per key. DataJoint 2.x against a real server.

Each worker is a separate process running mei's worker loop (``run_worker``, what ``mei worker``
runs: batched populate, keys reserved through DataJoint's job table) with one CPU thread, on
the same table of ``--neurons`` keys (the conv model of ``populate_throughput.py``, 100-step
MEIs). The workers start, connect and bind the tables first; the clock runs from the moment
they are all told to go until the last one has found nothing pending, so the figure is the
table's throughput, not Python's start-up. Every SQL statement a worker sends is counted (and
timed, as the client sees it) by wrapping its DataJoint connection's query execution: queries
per key are all of a worker's statements (reserving, fetching, inserting, completing jobs,
recovery, locks) divided by the keys it stored; statements that changed no row or failed (a
job another worker had already reserved or added) are counted apart. The workers' CPU time per
key gives the ceiling this machine's cores put on keys per minute (the database server's own
CPU aside).

    DJ_HOST=127.0.0.1 DJ_USER=postgres python benchmarks/workers_scaling.py --workers 1 2 4

The server comes from DataJoint's configuration (``DJ_HOST``, ``DJ_PORT``, ``DJ_USER``,
``DJ_PASS``, ``DJ_BACKEND``; defaults: local PostgreSQL). Everything lives in a temporary schema
and store, removed at the end. ``--quick``: 8 keys in batches of 2, 5-step MEIs, 1 and 2
workers, one round (a smoke test of the command). ``--rounds R`` (default 2) repeats the counts
of workers interleaved and keeps each count's fastest round: on a machine shared with other
work, the least disturbed one.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from typing import Any

warnings.filterwarnings("ignore", message="No datajoint.json found")  # also in the workers
import datajoint as dj  # noqa: E402
import torch  # noqa: E402
from populate_throughput import CONFIG, configure_from_environment, declare  # noqa: E402


def _worker(settings: dict[str, Any], queue: Any, go: Any) -> None:
    """One worker process: bind the tables, count its queries, wait for ``go``, run the loop."""
    try:
        os.environ["MEI_QUIET"] = "1"
        logging.getLogger("datajoint").setLevel(logging.ERROR)  # its advice on column types
        torch.set_num_threads(1)
        configure_from_environment()
        dj.config["stores"] = {"minio": {"protocol": "file", "location": settings["store"]}}
        import mei.main
        from mei.dj.worker import run_worker

        mei.main.activate(settings["core_schema"])
        schema = dj.Schema(settings["schema"])
        table = declare(schema, settings["neurons"], settings["channels"], fill=False)()
        mine = table.connection
        kinds: Counter[str] = Counter()
        idle: Counter[str] = Counter()  # statements that changed no row, or failed
        seconds = [0.0]
        other = [0]  # statements on other connections (the worker's liveness lock)
        execute = dj.connection.Connection._execute_query

        def counted(self, cursor, query, args, suppress_warnings):
            if self is not mine:
                other[0] += 1
                return execute(self, cursor, query, args, suppress_warnings)
            start = time.perf_counter()
            kind = query.lstrip().split(None, 1)[0].upper()
            try:
                result = execute(self, cursor, query, args, suppress_warnings)
            except Exception:
                idle[kind] += 1  # e.g. a job row another worker added first (duplicate)
                raise
            else:
                if kind in ("INSERT", "UPDATE") and cursor.rowcount == 0:
                    idle[kind] += 1  # e.g. a job another worker reserved first
                return result
            finally:
                seconds[0] += time.perf_counter() - start
                kinds[kind] += 1

        dj.connection.Connection._execute_query = counted
        queue.put(("ready", os.getpid()))
        go.wait()
        began, cpu = time.time(), time.process_time()
        result = run_worker(table, batch_size=settings["batch_size"], display_progress=False)
        ended, cpu = time.time(), time.process_time() - cpu
        queue.put(
            (
                "done",
                {
                    "pid": os.getpid(),
                    "keys": result["success_count"],
                    "errors": len(result["error_list"]),
                    "cpu_seconds": cpu,
                    "began": began,
                    "ended": ended,
                    "queries": dict(kinds),
                    "no_row": dict(idle),
                    "query_seconds": seconds[0],
                    "other_connection_queries": other[0],
                },
            )
        )
    except BaseException as e:  # the parent says which worker failed and why
        queue.put(("failed", f"{type(e).__name__}: {e}"))
        raise


def run_workers(settings: dict[str, Any], n_workers: int, timeout: float) -> dict[str, Any]:
    """``n_workers`` processes on the table of ``settings`` until nothing is pending."""
    context = multiprocessing.get_context("spawn")  # no fork: each worker its own process
    queue, go = context.Queue(), context.Event()
    processes = [
        context.Process(target=_worker, args=(settings, queue, go)) for _ in range(n_workers)
    ]
    for process in processes:
        process.start()
    reports = []
    try:
        deadline = time.monotonic() + timeout
        ready = 0
        while ready < n_workers or len(reports) < n_workers:
            kind, value = queue.get(timeout=max(1.0, deadline - time.monotonic()))
            if kind == "failed":
                raise RuntimeError(f"a worker failed: {value}")
            if kind == "ready":
                ready += 1
                if ready == n_workers:
                    go.set()
            else:
                reports.append(value)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    began = min(r["began"] for r in reports)
    seconds = max(r["ended"] for r in reports) - began
    keys = sum(r["keys"] for r in reports)
    queries: Counter[str] = Counter()
    no_row: Counter[str] = Counter()
    for report in reports:
        queries.update(report["queries"])
        no_row.update(report["no_row"])
    total = sum(queries.values())
    return {
        "workers": n_workers,
        "keys": keys,
        "errors": sum(r["errors"] for r in reports),
        "seconds": seconds,
        "keys_per_min": 60 * keys / seconds,
        "keys_per_worker": sorted(r["keys"] for r in reports),
        "queries_per_key": total / keys,
        "queries_per_key_by_kind": {k: v / keys for k, v in sorted(queries.items())},
        "no_row_per_key": {k: v / keys for k, v in sorted(no_row.items())},
        "cpu_s_per_key": sum(r["cpu_seconds"] for r in reports) / keys,
        "query_ms_per_key": 1e3 * sum(r["query_seconds"] for r in reports) / keys,
        "liveness_queries": sum(r["other_connection_queries"] for r in reports),
    }


def measure(
    *,
    workers: tuple[int, ...] = (1, 2, 4),
    neurons: int = 96,
    channels: int = 16,
    batch_size: int = 8,
    steps: int = 100,
    rounds: int = 1,
    timeout: float = 1800,
) -> list[dict[str, Any]]:
    """Each count of workers in turn on one table of ``neurons`` keys, emptied in between;
    ``rounds`` times, interleaved. Per count of workers: its fastest round (the least disturbed
    by anything else on the machine), with every round's keys per minute."""
    os.environ.setdefault("MEI_QUIET", "1")
    store = tempfile.mkdtemp(prefix="mei-bench-store-")
    dj.config["stores"] = {"minio": {"protocol": "file", "location": store}}
    stopper = {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": steps}}
    config = {**CONFIG, "stopper": stopper}

    import mei.main

    suffix = uuid.uuid4().hex[:8]
    core, name = f"mei_bench_core_{suffix}", f"mei_bench_workers_{suffix}"
    mei.main.activate(core)
    schema = dj.Schema(name)
    settings = {
        "core_schema": core,
        "schema": name,
        "store": store,
        "neurons": neurons,
        "channels": channels,
        "batch_size": batch_size,
    }
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in workers}
    try:
        MEI = declare(schema, neurons, channels)
        len(MEI().jobs)  # its job table declared now, not by the first worker while measured
        mei.main.MEIMethod().add_method("mei.methods.gradient_ascent", config)
        mei.main.MEISeed().insert1({"mei_seed": 1})
        for _ in range(rounds):
            for n_workers in workers:
                load = os.getloadavg()[0]
                result = run_workers(settings, n_workers, timeout)
                result["load_before"], result["load_after"] = load, os.getloadavg()[0]
                if result["keys"] != neurons or len(MEI()) != neurons:
                    raise RuntimeError(f"{n_workers} workers stored {len(MEI())} of {neurons} keys")
                runs[n_workers].append(result)
                MEI().delete_quick()
                MEI().jobs.delete_quick()
    finally:
        schema.drop(prompt=False)
        mei.main.schema.drop(prompt=False)
        shutil.rmtree(store, ignore_errors=True)
    results = []
    for n_workers in workers:
        best = max(runs[n_workers], key=lambda r: r["keys_per_min"])
        best["rounds_keys_per_min"] = [r["keys_per_min"] for r in runs[n_workers]]
        results.append(best)
    one = results[0]["keys_per_min"] / results[0]["workers"]
    cores = os.cpu_count() or 1
    for result in results:
        # what this machine's cores allow at that CPU cost per key, the database aside
        result["cpu_bound_keys_per_min"] = 60 * cores / result["cpu_s_per_key"]
        result["speedup"] = result["keys_per_min"] / results[0]["keys_per_min"]
        result["efficiency"] = result["keys_per_min"] / (one * result["workers"])
    return results


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, DataJoint {dj.__version__}, {dj.config['database.backend']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--neurons", type=int, default=96)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved; the fastest is kept")
    parser.add_argument("--quick", action="store_true", help="8 keys, 5 steps, 1 and 2 workers")
    parser.add_argument("--json", action="store_true", help="one JSON line per worker count")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.neurons, args.batch_size, args.steps, args.rounds = [1, 2], 8, 2, 5, 1
    configure_from_environment()
    logging.getLogger("datajoint").setLevel(logging.ERROR)
    print(
        f"machine: {machine()}; {args.neurons} keys, conv core {args.channels} ch, "
        f"{args.steps}-step MEIs, batches of {args.batch_size}, 1 thread per worker",
        flush=True,
    )
    results = measure(
        workers=tuple(args.workers),
        neurons=args.neurons,
        channels=args.channels,
        batch_size=args.batch_size,
        steps=args.steps,
        rounds=args.rounds,
    )
    for r in results:
        if args.json:
            print(json.dumps({"figure": "workers", "machine": machine(), **r}))
            continue
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in r["queries_per_key_by_kind"].items())
        no_row = ", ".join(f"{k} {v:.2f}" for k, v in r["no_row_per_key"].items()) or "none"
        rounds = ", ".join(f"{k:.1f}" for k in r["rounds_keys_per_min"])
        print(
            f"{r['workers']} worker(s): {r['keys_per_min']:7.1f} keys/min "
            f"({r['speedup']:.2f}x one worker, efficiency {r['efficiency']:.0%}; "
            f"keys per worker {r['keys_per_worker']}); "
            f"{r['queries_per_key']:.2f} queries per key ({kinds}; of these, changed no row or failed: {no_row}), "
            f"{r['query_ms_per_key']:.1f} ms in queries per key; workers' CPU "
            f"{r['cpu_s_per_key']:.3f} s per key (the cores allow "
            f"{r['cpu_bound_keys_per_min']:.0f} keys/min); every round: {rounds} keys/min; "
            f"load average {r['load_before']:.1f} before, {r['load_after']:.1f} after"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
