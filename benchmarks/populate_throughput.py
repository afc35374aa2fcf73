"""Populate throughput: MEIs per minute, batched vs unbatched, and the per-key database and
store overhead as a fraction of a 100-step MEI. DataJoint 2.x against a real server.

The overhead is measured inside each populate call: the time spent in the engine's runs
(``mei.methods.run_batch``, timed around every call) is subtracted from the populate's time,
so what remains is everything else populate does (reserving, fetching method and seed,
loading the cached model, the lab's selector, writing the files, inserting the rows),
free of the noise between separate runs.

    DJ_HOST=127.0.0.1 DJ_USER=postgres python benchmarks/populate_throughput.py [--neurons 32]

The server comes from DataJoint's configuration (``DJ_HOST``, ``DJ_PORT``, ``DJ_USER``,
``DJ_PASS``, ``DJ_BACKEND``; defaults: local PostgreSQL). Everything lives in a temporary schema
and store, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator

import datajoint as dj
import torch
from models import ConvCoreReadout

CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
    "precondition": {"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.0}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
}
SHAPE = (1, 1, 36, 64)


def declare(schema, n_neurons, channels, fill=True):
    """The lab's tables: one model (a conv core of ``channels``), ``n_neurons`` neurons (with
    ``fill``: inserted; without: the tables bound as they are, as a worker process does)."""
    from mei.main import MEITemplate, TrainedEnsembleModelTemplate
    from mei.modules import ConstrainedOutputModel

    @schema
    class Dataset(dj.Manual):
        definition = """
        dataset_id : int32
        """

    @schema
    class TrainedModel(dj.Manual):
        definition = """
        -> Dataset
        model_seed : int32
        """

        def load_model(self, key=None, include_dataloader=True, include_state_dict=True):
            model = ConvCoreReadout(n_neurons, channels=channels, seed=key["model_seed"])
            loader = [(torch.zeros(2, *SHAPE[1:]), torch.zeros(2, n_neurons))]
            return ({"train": {"all": loader}}, model) if include_dataloader else model

    @schema
    class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
        dataset_table = Dataset
        trained_model_table = TrainedModel

    @schema
    class Selector(dj.Manual):
        definition = """
        -> Dataset
        neuron_id : int32
        ---
        output_unit : int32
        """

        def get_output_selected_model(self, model, key):
            return ConstrainedOutputModel(model, (self & key).fetch1("output_unit"))

    @schema
    class MEI(MEITemplate):
        trained_model_table = TrainedEnsembleModel
        selector_table = Selector

    if not fill:
        return MEI
    Dataset.insert1({"dataset_id": 1})
    TrainedModel.insert1({"dataset_id": 1, "model_seed": 0})
    TrainedEnsembleModel().create_ensemble({"dataset_id": 1})
    Selector.insert({"dataset_id": 1, "neuron_id": n, "output_unit": n} for n in range(n_neurons))
    return MEI


def configure_from_environment() -> None:
    """Point DataJoint at the server in ``DJ_BACKEND``, ``DJ_HOST``, ``DJ_PORT``, ``DJ_USER``,
    ``DJ_PASS`` (default: PostgreSQL on 127.0.0.1)."""
    dj.config["database.backend"] = os.environ.get("DJ_BACKEND", "postgresql")
    dj.config["database.host"] = os.environ.get("DJ_HOST", "127.0.0.1")
    mysql = dj.config["database.backend"] == "mysql"
    dj.config["database.port"] = int(os.environ.get("DJ_PORT", 3306 if mysql else 5432))
    dj.config["database.user"] = os.environ.get("DJ_USER", "root" if mysql else "postgres")
    dj.config["database.use_tls"] = False
    dj.config["database.password"] = os.environ.get("DJ_PASS", "")


@contextlib.contextmanager
def _bench_table(neurons: int, channels: int, steps: int, device: str) -> Iterator[tuple]:
    """The benchmark's lab in a temporary schema and store (removed afterwards), with the
    method (``NumIterations(steps)`` on ``device``) and a seed: yields ``(MEI, config,
    inside)``, where ``inside[0]`` accumulates the seconds spent in the engine's runs
    (``mei.methods.run_batch``, timed around each call; reset it as needed)."""
    os.environ.setdefault("MEI_QUIET", "1")
    store = tempfile.mkdtemp(prefix="mei-bench-store-")
    dj.config["stores"] = {"minio": {"protocol": "file", "location": store}}
    config = dict(CONFIG, device=device)
    config["stopper"] = {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": steps}}

    import mei.main
    import mei.methods

    suffix = uuid.uuid4().hex[:8]
    mei.main.activate(f"mei_bench_core_{suffix}")
    schema = dj.Schema(f"mei_bench_{suffix}")
    run_batch = mei.methods.run_batch
    inside = [0.0]

    def timed_run_batch(*a, **k):
        start = time.perf_counter()
        try:
            return run_batch(*a, **k)
        finally:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            inside[0] += time.perf_counter() - start

    try:
        MEI = declare(schema, neurons, channels)
        mei.main.MEIMethod().add_method("mei.methods.gradient_ascent", config)
        mei.main.MEISeed().insert1({"mei_seed": 1})
        mei.methods.run_batch = timed_run_batch
        yield MEI, config, inside
    finally:
        mei.methods.run_batch = run_batch
        schema.drop(prompt=False)
        mei.main.schema.drop(prompt=False)
        shutil.rmtree(store, ignore_errors=True)


def measure(
    *,
    neurons: int = 32,
    channels: int = 16,
    batch_size: int = 32,
    rounds: int = 3,
    steps: int = 100,
    device: str = "cpu",
    reserve_jobs: bool = False,
) -> dict[str, float]:
    """Interleaved rounds of the engine alone (key by key, and batched) and of unbatched and
    batched ``MEI().populate`` on the configured server, in a temporary schema and store
    (removed afterwards). ``reserve_jobs``: populate as a worker does (job reservation).
    Returns the figures: times per MEI or key, MEIs per minute, the overhead per key."""
    from mei.methods import gradient_ascent, gradient_ascent_units

    with _bench_table(neurons, channels, steps, device) as (MEI, config, inside):
        table = MEI()
        n = neurons

        # the same computation without any database: the engine alone, key by key
        keys = table.key_source.keys()
        models = []
        for key in keys:
            dataloaders, model = table.model_loader.load(key)
            models.append(table.selector_table().get_output_selected_model(model, key))
        for _ in range(3):  # warm up the kernels
            gradient_ascent(dataloaders, models[0], config, 1)

        def engine_alone():
            for model in models:
                gradient_ascent(dataloaders, model, config, 1)

        units = [int(m.constraint) for m in models]

        def engine_batched():
            gradient_ascent_units(
                dataloaders, models[0].model, config, 1, units, batch_size=batch_size
            )

        def timed(fn):
            inside[0] = 0.0
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            total = time.perf_counter() - start
            return total, total - inside[0]  # total, and what was not the engine

        results = {"engine": [], "engine_batched": [], "unbatched": [], "batched": []}
        for _ in range(rounds):  # interleaved; the minimum of the rounds is reported
            results["engine"].append(timed(engine_alone))
            results["engine_batched"].append(timed(engine_batched))
            results["unbatched"].append(timed(lambda: table.populate(reserve_jobs=reserve_jobs)))
            assert len(MEI()) == n
            MEI().delete_quick()
            results["batched"].append(
                timed(lambda: table.populate(batch_size=batch_size, reserve_jobs=reserve_jobs))
            )
            assert len(MEI()) == n
            MEI().delete_quick()
    engine, engine_batched_s, unbatched, batched = (
        min(total for total, _ in results[k])
        for k in ("engine", "engine_batched", "unbatched", "batched")
    )
    # the overhead per key: the median over the rounds of each populate's non-engine time
    over_unbatched, over_batched = (
        sorted(rest for _, rest in results[k])[len(results[k]) // 2] / n
        for k in ("unbatched", "batched")
    )
    return {
        "engine_ms_per_mei": engine / n * 1e3,
        "engine_batched_ms_per_mei": engine_batched_s / n * 1e3,
        "unbatched_ms_per_key": unbatched / n * 1e3,
        "unbatched_meis_per_min": 60 * n / unbatched,
        "batched_ms_per_key": batched / n * 1e3,
        "batched_meis_per_min": 60 * n / batched,
        "overhead_ms_per_key_unbatched": over_unbatched * 1e3,
        "overhead_ms_per_key_batched": over_batched * 1e3,
        "overhead_of_single_mei_unbatched": over_unbatched / (engine / n),
        "overhead_of_batched_mei": over_batched / (engine_batched_s / n),
    }


def meis_per_hour(
    *,
    batch_sizes: tuple[int, ...] = (64, 256, 1024),
    channels: int = 64,
    steps: int = 100,
    target_steps: int = 1000,
    device: str = "cpu",
    capture: bool = False,
) -> list[dict[str, float]]:
    """MEIs per hour through batched ``populate`` (a worker: ``reserve_jobs=True``), one
    figure per batch size, for MEIs of ``target_steps`` steps, extrapolated from a timed
    window of ``steps``: each batch size populates one batch of that many neurons
    (``NumIterations(steps)``: steps + 1 steps), timed whole; the time inside the engine's
    runs is scaled by ``(target_steps + 1) / (steps + 1)`` and the rest (database, store,
    model, selector; it does not grow with the steps) is kept as measured. ``capture``: the
    table's ``capture`` (:mod:`mei.capture`)."""
    figures = []
    with _bench_table(max(batch_sizes), channels, steps, device) as (MEI, config, inside):
        table = MEI()
        table.capture = capture
        table.populate("neuron_id < 2", batch_size=2)  # warm up: model, kernels, queries
        MEI().delete_quick()
        for size in batch_sizes:
            inside[0] = 0.0
            start = time.perf_counter()
            table.populate(f"neuron_id < {size}", batch_size=size, reserve_jobs=True)
            total = time.perf_counter() - start
            assert len(MEI()) == size
            MEI().delete_quick()
            engine, outside = inside[0], total - inside[0]
            at_target = outside + engine * (target_steps + 1) / (steps + 1)
            figures.append(
                {
                    "batch_size": size,
                    "window_steps": steps + 1,
                    "target_steps": target_steps + 1,
                    "window_s": total,
                    "engine_s": engine,
                    "outside_engine_s": outside,
                    "meis_per_hour": 3600 * size / at_target,
                    "share_outside_engine": outside / at_target,
                }
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reserve-jobs", action="store_true", help="populate as a worker does")
    args = parser.parse_args()
    configure_from_environment()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {dj.config['database.backend']}, "
        f"{args.neurons} neurons, conv core {args.channels} ch, 100 steps per MEI"
    )
    r = measure(
        neurons=args.neurons,
        channels=args.channels,
        batch_size=args.batch_size,
        rounds=args.rounds,
        reserve_jobs=args.reserve_jobs,
    )
    print(f"engine alone:          {r['engine_ms_per_mei']:7.1f} ms per MEI")
    print(
        f"unbatched populate:    {r['unbatched_ms_per_key']:7.1f} ms per key, "
        f"{r['unbatched_meis_per_min']:7.1f} MEIs/min"
    )
    print(
        f"batched populate ({args.batch_size}): {r['batched_ms_per_key']:7.1f} ms per key, "
        f"{r['batched_meis_per_min']:7.1f} MEIs/min, "
        f"{r['batched_meis_per_min'] / r['unbatched_meis_per_min']:.2f}x unbatched"
    )
    print(
        f"database + store overhead per key, unbatched: {r['overhead_ms_per_key_unbatched']:.1f} "
        f"ms = {r['overhead_of_single_mei_unbatched']:.1%} of a 100-step MEI"
    )
    print(
        f"engine alone, batched ({args.batch_size}): {r['engine_batched_ms_per_mei']:7.1f} ms per MEI"
    )
    print(
        f"database + store overhead per key, batched: {r['overhead_ms_per_key_batched']:.1f} ms = "
        f"{r['overhead_of_batched_mei']:.1%} of a 100-step MEI in a batch"
    )


if __name__ == "__main__":
    main()
