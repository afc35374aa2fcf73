"""Populate at scale on DataJoint 0.14 with NNFabrik tables: four workers, errors, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datajoint as dj
import pytest
import torch
from mei_testkit import METHOD_CONFIG, finish_worker, stored_files, wait_for

from mei.dj.backend import backend
from mei.populate import recover

N_NEURONS = 40  # plus one broken neuron
SHARED_CONFIG = {  # long enough that all four workers are up before the work runs out
    **METHOD_CONFIG,
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 2000}},
}
SLOW_CONFIG = {
    **METHOD_CONFIG,
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 15000}},
}
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def make_lab(nnf, mei_main):
    def make(config=METHOD_CONFIG, broken=True):
        import lab014

        lab = lab014.declare(nnf)
        nnf.Fabrikant().add_entry("tester", "tester@example.org", "mei tests")
        dataset = nnf.Dataset().add_entry(
            "mei_testkit.linear_dataset", {"n_units": N_NEURONS}, dataset_fabrikant="tester"
        )
        nnf.Model().add_entry("mei_testkit.linear_model", {}, model_fabrikant="tester")
        nnf.Trainer().add_entry("mei_testkit.lstsq_trainer", {}, trainer_fabrikant="tester")
        nnf.Seed().insert1({"seed": 1})
        lab.TrainedModel().populate()
        lab.TrainedEnsembleModel().create_ensemble(dataset)
        lab.Selector().populate()
        if broken:
            lab.Selector().insert1(
                dict(dataset, neuron_id=999, output_unit=999), allow_direct_insert=True
            )
        mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", config)
        mei_main.MEISeed().insert1({"mei_seed": 7})
        return lab

    return make


def worker_env(nnf):
    settings = {
        name: dj.config[name]
        for name in (
            "database.host",
            "database.user",
            "database.password",
            "database.use_tls",
            "nnfabrik.schema_name",
        )
    }
    settings["stores"] = dj.config["stores"]
    config = {"dj": settings, "schema": nnf.schema.database}
    return {
        **os.environ,
        "MEI_TEST_CONFIG": json.dumps(config, default=str),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "MEI_QUIET": "1",
        "PYTHONWARNINGS": "ignore",
    }


def start_worker(env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "mei.worker", "worker_lab014.MEI", "--json", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def mei_files(store, schema):
    """Stored MEI and output files (the store also holds NNFabrik's model states)."""
    return [p for p in stored_files(store / schema) if ".mei_" in p.name or ".output_" in p.name]


def jobs_of(table, status):
    jobs = table.connection.schemas[table.database].jobs
    return jobs & {"table_name": table.table_name} & {"status": status}


def test_batched_populate_equals_unbatched(make_lab):
    lab = make_lab(broken=False)
    table = lab.MEI()
    result = table.populate(batch_size=16)
    assert result["success_count"] == N_NEURONS
    for key in backend().keys(lab.MEI())[:5]:
        mei, score, _ = table.make_compute(key, *table.make_fetch(key))
        assert (lab.MEI().load_mei(key) - mei).abs().max().item() <= 1e-5


def test_four_workers_compute_every_key_once_and_record_errors(make_lab, nnf, store):
    lab = make_lab(config=SHARED_CONFIG)
    env = worker_env(nnf)
    summaries = [
        finish_worker(w) for w in [start_worker(env, "--batch-size", "6") for _ in range(4)]
    ]

    computed = [json.dumps(k, sort_keys=True, default=str) for s in summaries for k in s["keys"]]
    assert len(computed) == N_NEURONS == len(set(computed))
    assert sum(1 for s in summaries if s["done"]) >= 2
    assert len(lab.MEI()) == N_NEURONS
    [error] = jobs_of(lab.MEI(), "error").fetch(as_dict=True)
    assert error["key"]["neuron_id"] == 999 and "IndexError" in error["error_message"]
    assert "Traceback" in error["error_stack"]
    assert len(jobs_of(lab.MEI(), "reserved")) == 0
    assert len(mei_files(store, nnf.schema.database)) == 2 * N_NEURONS


def test_killed_worker_leaves_nothing_and_its_keys_are_recovered(make_lab, nnf, store):
    lab = make_lab(config=SLOW_CONFIG, broken=False)
    env = worker_env(nnf)
    victim = start_worker(env, "--batch-size", "4", "--max-keys", "4")
    wait_for(lambda: len(jobs_of(lab.MEI(), "reserved")) == 4, what="reservations")
    reserved = [dict(k) for k in jobs_of(lab.MEI(), "reserved").fetch("key")]
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(lab.MEI()) == 0

    # plant a file the way a killed upload leaves it, to check that recovery removes it
    folder = store / nnf.schema.database / "ab" / "cd"
    folder.mkdir(parents=True)
    pattern = backend().attachment_names(reserved[0])[0]
    orphan = folder / ("0" * 32 + "." + pattern.replace("*", "deadbeef"))
    torch.save(torch.zeros(1), orphan)

    recovered = []
    wait_for(lambda: recovered.extend(recover(lab.MEI())) or recovered, what="recovery")
    assert len(recovered) == 4 and not orphan.exists()
    assert len(jobs_of(lab.MEI(), "reserved")) == 0

    summary = finish_worker(start_worker(env, "--batch-size", "4", "--max-keys", "4"))
    assert summary["done"] == 4 and len(lab.MEI()) == 4
    assert len(mei_files(store, nnf.schema.database)) == 2 * 4
