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
import os
import platform
import shutil
import tempfile
import time
import uuid

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


def declare(schema, n_neurons, channels):
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

    Dataset.insert1({"dataset_id": 1})
    TrainedModel.insert1({"dataset_id": 1, "model_seed": 0})
    TrainedEnsembleModel().create_ensemble({"dataset_id": 1})
    Selector.insert({"dataset_id": 1, "neuron_id": n, "output_unit": n} for n in range(n_neurons))
    return MEI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("MEI_QUIET", "1")
    dj.config["database.backend"] = os.environ.get("DJ_BACKEND", "postgresql")
    dj.config["database.host"] = os.environ.get("DJ_HOST", "127.0.0.1")
    mysql = dj.config["database.backend"] == "mysql"
    dj.config["database.port"] = int(os.environ.get("DJ_PORT", 3306 if mysql else 5432))
    dj.config["database.user"] = os.environ.get("DJ_USER", "root" if mysql else "postgres")
    dj.config["database.use_tls"] = False
    dj.config["database.password"] = os.environ.get("DJ_PASS", "")
    store = tempfile.mkdtemp(prefix="mei-bench-store-")
    dj.config["stores"] = {"minio": {"protocol": "file", "location": store}}

    import mei.main
    from mei.methods import gradient_ascent, gradient_ascent_units

    suffix = uuid.uuid4().hex[:8]
    mei.main.activate(f"mei_bench_core_{suffix}")
    schema = dj.Schema(f"mei_bench_{suffix}")
    try:
        MEI = declare(schema, args.neurons, args.channels)
        mei.main.MEIMethod().add_method("mei.methods.gradient_ascent", CONFIG)
        mei.main.MEISeed().insert1({"mei_seed": 1})
        table = MEI()
        n = args.neurons
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {dj.config['database.backend']}, "
            f"{n} neurons, conv core {args.channels} ch, 100 steps per MEI"
        )

        # the same computation without any database: the engine alone, key by key
        keys = table.key_source.keys()
        models = []
        for key in keys:
            dataloaders, model = table.model_loader.load(key)
            models.append(table.selector_table().get_output_selected_model(model, key))
        for _ in range(3):  # warm up the kernels
            gradient_ascent(dataloaders, models[0], CONFIG, 1)

        def engine_alone():
            for model in models:
                gradient_ascent(dataloaders, model, CONFIG, 1)

        units = [int(m.constraint) for m in models]

        def engine_batched():
            gradient_ascent_units(
                dataloaders, models[0].model, CONFIG, 1, units, batch_size=args.batch_size
            )

        inside = [0.0]  # seconds spent in the engine's runs since the last reset
        run_batch = mei.methods.run_batch

        def timed_run_batch(*a, **k):
            start = time.perf_counter()
            try:
                return run_batch(*a, **k)
            finally:
                inside[0] += time.perf_counter() - start

        mei.methods.run_batch = timed_run_batch

        def timed(fn):
            inside[0] = 0.0
            start = time.perf_counter()
            fn()
            total = time.perf_counter() - start
            return total, total - inside[0]  # total, and what was not the engine

        results = {"engine": [], "engine_batched": [], "unbatched": [], "batched": []}
        for _ in range(args.rounds):  # interleaved; the minimum of the rounds is reported
            results["engine"].append(timed(engine_alone))
            results["engine_batched"].append(timed(engine_batched))
            results["unbatched"].append(timed(table.populate))
            assert len(MEI()) == n
            MEI().delete_quick()
            results["batched"].append(timed(lambda: table.populate(batch_size=args.batch_size)))
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

        print(f"engine alone:          {engine / n * 1e3:7.1f} ms per MEI")
        print(
            f"unbatched populate:    {unbatched / n * 1e3:7.1f} ms per key, {60 * n / unbatched:7.1f} MEIs/min"
        )
        print(
            f"batched populate ({args.batch_size}): {batched / n * 1e3:7.1f} ms per key, "
            f"{60 * n / batched:7.1f} MEIs/min, {unbatched / batched:.2f}x unbatched"
        )
        print(
            f"database + store overhead per key, unbatched: {over_unbatched * 1e3:.1f} ms = "
            f"{over_unbatched / (engine / n):.1%} of a 100-step MEI"
        )
        print(
            f"engine alone, batched ({args.batch_size}): {engine_batched_s / n * 1e3:7.1f} ms per MEI"
        )
        print(
            f"database + store overhead per key, batched: {over_batched * 1e3:.1f} ms = "
            f"{over_batched / (engine_batched_s / n):.1%} of a 100-step MEI in a batch, "
            f"{over_batched / (engine / n):.1%} of a single 100-step MEI"
        )
    finally:
        schema.drop(prompt=False)
        mei.main.schema.drop(prompt=False)
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
