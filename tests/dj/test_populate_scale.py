"""Populate at scale on DataJoint 2.x: batched populate, four workers, killed workers, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datajoint as dj
import lab2
import pytest
import torch
from mei_testkit import METHOD_CONFIG, finish_worker, stored_files, wait_for

from mei.dj.backend import backend
from mei.populate import recover

N_NEURONS = 44  # plus one broken neuron
SHARED_CONFIG = {  # long enough that all four workers are up before the work runs out
    **METHOD_CONFIG,
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 2000}},
}
SLOW_CONFIG = {
    **METHOD_CONFIG,
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 15000}},
}
TESTS = Path(__file__).resolve().parent


def make_lab(schema, mei_main, config=METHOD_CONFIG, broken=True):
    lab = lab2.declare(schema)
    lab.Dataset.insert1({"dataset_id": 1, "dataset_config": {"n_units": N_NEURONS}})
    lab.Trainer.insert1({"trainer_id": 1, "trainer_config": {}})
    lab.ModelSeed.insert1({"model_seed": 1})
    lab.TrainedModel.populate()
    lab.TrainedEnsembleModel().create_ensemble({"dataset_id": 1})
    lab.Selector().populate()
    if broken:  # a neuron whose unit the model does not have: its MEI must fail alone
        lab.Selector.insert1(
            {"dataset_id": 1, "neuron_id": 999, "output_unit": 999}, allow_direct_insert=True
        )
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", config)
    mei_main.MEISeed().insert1({"mei_seed": 7})
    return lab


def worker_env(schema, mei_main):
    settings = {
        name: dj.config[name]
        for name in (
            "database.backend",
            "database.host",
            "database.port",
            "database.user",
            "database.password",
            "database.use_tls",
        )
    }
    settings["stores"] = dj.config["stores"]
    config = {"dj": settings, "schema": schema.database, "core_schema": mei_main.schema.database}
    return {
        **os.environ,
        "MEI_TEST_CONFIG": json.dumps(config, default=str),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "MEI_QUIET": "1",
    }


def start_worker(env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "mei", "worker", "worker_lab2.MEI", "--json", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_batched_populate_equals_unbatched_and_reports_progress(schema, mei_main, capsys):
    lab = make_lab(schema, mei_main, broken=False)
    table = lab.MEI()
    result = table.populate(batch_size=16, display_progress=True)
    assert result["success_count"] == N_NEURONS and result["error_list"] == []
    assert len(lab.MEI()) == N_NEURONS
    progress = capsys.readouterr().err
    assert f"{N_NEURONS}/{N_NEURONS}" in progress and "MEIs/min" in progress
    for key in lab.MEI().keys()[:6]:  # the unbatched path, computed for the same key
        mei, score, output = table.make_compute(key, *table.make_fetch(key))
        stored = lab.MEI().load_mei(key)
        assert (stored - mei).abs().max().item() <= 1e-5
        assert abs((lab.MEI & key).fetch1("score") - score) <= 1e-4 * abs(score)
        assert lab.MEI().load_output(key).keys() == output.keys()


def test_batched_populate_isolates_a_failing_key(schema, mei_main):
    lab = make_lab(schema, mei_main)
    result = lab.MEI().populate(batch_size=64, suppress_errors=True)
    assert result["success_count"] == N_NEURONS
    [(key, message)] = result["error_list"]
    assert key["neuron_id"] == 999 and "IndexError" in message
    with pytest.raises(TypeError, match=r"does not take \['processes'\]"):
        lab.MEI().populate(batch_size=4, processes=2)


def test_four_workers_compute_every_key_once_and_record_errors(schema, mei_main, store):
    lab = make_lab(schema, mei_main, config=SHARED_CONFIG)
    env = worker_env(schema, mei_main)
    workers = [start_worker(env, "--batch-size", "6") for _ in range(4)]
    summaries = [finish_worker(w) for w in workers]

    computed = [json.dumps(k, sort_keys=True) for s in summaries for k in s["keys"]]
    assert len(computed) == N_NEURONS == len(set(computed))  # none twice, none lost
    assert sum(s["done"] for s in summaries) == N_NEURONS
    assert sum(1 for s in summaries if s["done"]) >= 2  # the work was shared
    assert len(lab.MEI()) == N_NEURONS
    [error] = lab.MEI().jobs.errors.to_dicts()
    assert error["neuron_id"] == 999 and "IndexError" in error["error_message"]
    assert "Traceback" in error["error_stack"]
    assert len(lab.MEI().jobs.reserved) == 0
    assert len(stored_files(store / "_schema" / schema.database)) == 2 * N_NEURONS


def test_killed_worker_leaves_nothing_and_its_keys_are_recovered(schema, mei_main, store):
    lab = make_lab(schema, mei_main, config=SLOW_CONFIG, broken=False)
    env = worker_env(schema, mei_main)
    victim = start_worker(env, "--batch-size", "4", "--max-keys", "4")
    jobs = lab.MEI().jobs
    wait_for(lambda: len(jobs.reserved) == 4, what="the worker to reserve its keys")
    reserved = jobs.reserved.keys()
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    assert len(lab.MEI()) == 0  # no partial row
    # a SIGKILL between writing files and the insert leaves files: plant one the way a
    # staged insert names them, to check that recovery removes it
    folder = backend().key_folder(lab.MEI(), reserved[0])
    orphan = store / folder / "mei_deadbeef.pth.tar"
    orphan.parent.mkdir(parents=True)
    torch.save(torch.zeros(1), orphan)

    recovered = []
    wait_for(lambda: recovered.extend(recover(lab.MEI())) or recovered, what="recovery")

    def as_set(keys):
        return {json.dumps(k, sort_keys=True, default=str) for k in keys}

    assert len(recovered) == 4 and as_set(recovered) == as_set(reserved)
    assert not orphan.exists()
    assert len(jobs.reserved) == 0

    rescuer = start_worker(env, "--batch-size", "4", "--max-keys", "4")
    summary = finish_worker(rescuer)
    assert summary["done"] == 4
    assert len(lab.MEI()) == 4
    assert len(stored_files(store / "_schema" / schema.database)) == 2 * 4


def test_sigterm_finishes_the_current_batch_then_stops(schema, mei_main):
    lab = make_lab(schema, mei_main, config=SLOW_CONFIG, broken=False)
    worker = start_worker(worker_env(schema, mei_main), "--batch-size", "2")
    jobs = lab.MEI().jobs
    wait_for(lambda: len(jobs.reserved) == 2, what="the worker to reserve its keys")
    worker.send_signal(signal.SIGTERM)
    summary = finish_worker(worker)
    assert summary["stopped_by"] == "SIGTERM" and summary["done"] == 2
    assert len(lab.MEI()) == 2 and len(jobs.reserved) == 0
