"""The store named ``minio`` on a real S3 server (moto's, on 127.0.0.1: ``s3_testkit``), as labs
run it with MinIO: populate, batched populate, workers, loading, dead workers' files, MDS tables;
then the store failing mid-batch (before, during and after the file writes), refusing the
credentials, or set up wrongly. After each: no row without its files, no reported success
without a row, every key done, an error or back in the queue, and no file without a row once
``recover()`` ran with the store back.

Runs on DataJoint 2.x (PostgreSQL, MariaDB; S3 through s3fs) and 0.14 (MariaDB, the
``attach@minio`` tables; S3 through the minio client).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import datajoint as dj
import pytest
import run_path_lab
import torch
from mei_testkit import unavailable, unique_name
from worker_lab import worker_env

import mei.dj.populate
from mei.dj.backend import backend
from mei.dj.worker import run_worker
from mei.errors import StoreUnavailableError
from mei.populate import recover

N = 8  # keys, two batches of 4
HERE = Path(__file__).parent
TESTS = HERE.parent


@pytest.fixture(scope="session")
def s3():
    # botocore (under s3fs) tries each request 5 times with backoff before it gives up: once
    # is enough to see what mei does when the store fails, and keeps these tests fast
    previous = os.environ.get("AWS_MAX_ATTEMPTS")
    os.environ["AWS_MAX_ATTEMPTS"] = "1"
    try:
        from s3_testkit import S3Server

        server = S3Server()
    except ImportError as e:  # the `test` extra brings moto[server]
        unavailable(f"no S3 server for the tests: {e}")
    yield server
    server.close()
    if previous is None:
        os.environ.pop("AWS_MAX_ATTEMPTS", None)
    else:
        os.environ["AWS_MAX_ATTEMPTS"] = previous


@pytest.fixture
def s3_store(s3, connection):
    """The store ``minio`` in a folder of its own in the S3 server's bucket, for one test."""
    previous = dict(dj.config["stores"])
    location = unique_name("lab")
    dj.config["stores"] = {**previous, "minio": s3.store_spec(location)}
    yield location
    s3.start()
    s3.refuse_key(False)
    dj.config["stores"] = previous


@pytest.fixture
def lab(s3_store, schema, mei_main):
    run_path_lab.CALLS.clear()
    run_path_lab.BEFORE_RUN.clear()
    lab = run_path_lab.declare(schema, n_units=N)
    mei_main.MEIMethod().add_method("run_path_lab.recording_method", run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    yield lab
    run_path_lab.BEFORE_RUN.clear()


def objects(s3, location):
    return s3.objects(location + "/")


def mei_objects(s3, location, schema):
    """The MEI files of ``schema`` (0.14 names them ``<uuid>.mei_<key hash>_<token>.pth.tar``)."""
    return [o for o in objects(s3, location) if schema.database in o]


def check_complete(lab, s3, location, schema) -> None:
    """Every key once, each row's files readable, no other files, nothing reserved."""
    table = lab.MEI()
    keys = backend().keys(table)
    assert len(keys) == N == len({k["neuron_id"] for k in keys})
    for key in keys:
        assert table.load_mei(key).shape == run_path_lab.SHAPE
        assert isinstance(table.load_output(key), dict)
    assert len(mei_objects(s3, location, schema)) == 2 * N
    assert backend().jobs(table).reserved() == []


def queue_counts(table):
    return backend().jobs(table).counts()


def fetch_path(query, attribute, folder):
    """``fetch1(attribute)`` as a lab does it: a local path to ``torch.load``."""
    if backend().generation == 2:
        with dj.config.override(download_path=str(folder)):
            return query.fetch1(attribute)
    return query.fetch1(attribute, download_path=str(folder))


# --------------------------------------------------------------------------- the store works
def test_populate_batched_and_key_by_key_store_files_in_the_bucket(lab, s3, s3_store, schema):
    table = lab.MEI()
    result = table.populate(batch_size=4, reserve_jobs=True)
    assert result["success_count"] == N
    check_complete(lab, s3, s3_store, schema)
    key = backend().keys(table)[0]
    with tempfile.TemporaryDirectory() as folder:
        path = fetch_path(table & key, "mei", folder)
        assert Path(path).is_file()
        assert torch.equal(torch.load(path, weights_only=False), table.load_mei(key))
    batched = {k["neuron_id"]: table.load_mei(k) for k in backend().keys(table)}

    table.delete_quick()  # deleted rows leave their files in the store, which...
    if backend().generation == 0:  # ...DataJoint 0.14 removes itself
        schema.external["minio"].delete(delete_external_files=True, display_progress=False)
    else:  # ...recover() removes on 2.x (as `dj.gc` would)
        recover(table, stray_files_older_than=0)
    assert mei_objects(s3, s3_store, schema) == []
    table.populate()  # DataJoint's own, key by key
    check_complete(lab, s3, s3_store, schema)
    for key in backend().keys(table):
        assert torch.allclose(table.load_mei(key), batched[key["neuron_id"]], atol=1e-6)


def test_a_worker_and_a_dead_workers_files(lab, mei_main, s3, s3_store, schema):
    settings = {
        name: dj.config[name]
        for name in ("database.host", "database.user", "database.password", "database.use_tls")
    }
    if backend().generation == 2:
        settings.update({n: dj.config[n] for n in ("database.port", "database.backend")})
    settings["stores"] = dict(dj.config["stores"])
    env = dict(os.environ, MEI_TEST_DJ=json.dumps(settings, default=str), MEI_QUIET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(TESTS), env.get("PYTHONPATH", "")])
    process = subprocess.run(
        [sys.executable, str(HERE / "fault_worker.py"), schema.database, mei_main.schema.database],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -9, process.stderr  # killed inside its insert transaction
    table = lab.MEI()
    assert len(table) == 0
    assert mei_objects(s3, s3_store, schema)  # it had stored files in the bucket
    assert len(backend().jobs(table).reserved()) == 4
    result = run_worker(table, batch_size=4, display_progress=False)  # recovers them first
    assert result["success_count"] == N and result["error_list"] == []
    check_complete(lab, s3, s3_store, schema)


def test_mds_rows_on_s3(s3, s3_store, schema, mei_main, make_lab):
    from test_newer_methods import CELL_SIDE, MDS_CONFIG, N_CELLS, SEED, _declare_mds

    lab = make_lab(n_units=N_CELLS, dataset={"cell_types": True, "side": CELL_SIDE})
    ensemble = lab.TrainedEnsembleModel().create_ensemble(lab.ensemble_restriction)
    lab.Selector().populate()
    NeuronSet, MDS = _declare_mds(schema, lab)
    NeuronSet().create_set(lab.dataset_key)
    config = dict(MDS_CONFIG, stopper={**MDS_CONFIG["stopper"], "kwargs": {"num_iterations": 5}})
    mei_main.MEIMethod().add_method("mei.clustering.mds", config)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    MDS().populate(reserve_jobs=True)
    [key] = backend().keys(MDS())
    assert MDS().load_mds(key).shape[1:] == (1, CELL_SIDE, CELL_SIDE)
    assert sum(len(c) for c in MDS().load_clusters(key)) == N_CELLS
    assert "labels" in MDS().load_output(key)
    assert key.items() >= ensemble.items()

    def mds_files():
        names = [o.rsplit("/", 1)[-1] for o in objects(s3, s3_store) if schema.database in o]
        return [n for n in names if "mds_" in n or "output_" in n]

    assert len(mds_files()) == 2
    if backend().generation == 0:
        return  # 0.14: files of deleted rows are DataJoint's `schema.external[...].delete()`
    MDS.Neuron().delete_quick()
    MDS().delete_quick()  # rows deleted by hand leave their files (as DataJoint does)...
    assert len(mds_files()) == 2
    recover(MDS(), stray_files_older_than=0)  # ...which recover() removes
    assert mds_files() == []


def test_the_s3_settings_mei_db_env_shows_make_a_working_store(lab, s3, s3_store):
    from mei.cli.db import S3_EXAMPLE

    spec = dict(S3_EXAMPLE["minio"])
    real = s3.store_spec(s3_store)
    assert set(spec) == set(real)  # the same keys, with the lab's values
    spec.update(
        {k: real[k] for k in ("endpoint", "bucket", "location", "access_key", "secret_key")}
    )
    dj.config["stores"] = {**dj.config["stores"], "minio": spec}
    assert lab.MEI().populate({"neuron_id": 0}, batch_size=4)["success_count"] == 1


# --------------------------------------------------------------------------- set up wrongly
@pytest.mark.parametrize("wrong", ["endpoint", "bucket", "secret_key"])
def test_a_wrong_store_is_refused_before_any_key_is_reserved(lab, s3, s3_store, wrong):
    from s3_testkit import _free_port

    changes = {
        "endpoint": {"endpoint": f"127.0.0.1:{_free_port()}"},
        "bucket": {"bucket": "no-such-bucket"},
        "secret_key": {"secret_key": "not-the-secret"},
    }[wrong]
    dj.config["stores"] = {**dj.config["stores"], "minio": s3.store_spec(s3_store, **changes)}
    table = lab.MEI()
    for attempt in (
        lambda: table.populate(batch_size=4, reserve_jobs=True, suppress_errors=True),
        lambda: table.populate(batch_size=4),
        lambda: table.populate(),  # DataJoint's own, key by key
        lambda: run_worker(table, batch_size=4, display_progress=False),
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="no key was reserved") as refused:
            attempt()
        assert time.monotonic() - started < 10
        message = str(refused.value)
        assert "\n" not in message and "'minio'" in message
        expected = {
            "endpoint": "cannot be reached",
            "bucket": "has no such bucket",
            "secret_key": "refused",
        }
        assert expected[wrong] in message, message
        assert "not-the-secret" not in message and s3.secret_key not in message
    assert run_path_lab.CALLS == []  # nothing was computed
    assert len(table) == 0 and queue_counts(table) == {"reserved": 0, "error": 0, "ignore": 0}


def test_the_worker_command_refuses_a_wrong_endpoint_in_one_line(make_lab, mei_main, schema, s3):
    from s3_testkit import _free_port

    lab = make_lab(seeds=(1,), diverging=False)
    lab.TrainedEnsembleModel().create_ensemble(lab.dataset_key)
    lab.Selector().populate()
    mei_main.MEIMethod().add_method("run_path_lab.recording_method", run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    previous = dict(dj.config["stores"])
    dj.config["stores"] = {
        **previous,
        "minio": s3.store_spec("x", endpoint=f"127.0.0.1:{_free_port()}"),
    }
    try:
        env = {
            **os.environ,
            **worker_env(schema, mei_main),
            "PYTHONPATH": os.pathsep.join([str(HERE), str(TESTS), str(TESTS.parent)]),
            "MEI_QUIET": "1",
            "PYTHONWARNINGS": "ignore",
        }
    finally:
        dj.config["stores"] = previous
    command = [sys.executable, "-m", "mei", "worker", "worker_lab.MEI", "--quiet"]
    started = time.monotonic()
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("mei worker: error: the store 'minio'"), last
    assert "cannot be reached" in last and "no key was reserved" in last
    assert time.monotonic() - started < 60
    assert len(lab.MEI()) == 0 and queue_counts(lab.MEI())["reserved"] == 0


# --------------------------------------------------------------------------- faults
@pytest.fixture
def outage_wait(monkeypatch):
    """How long populate waits for the store to come back, set per test."""

    def set_wait(seconds):
        monkeypatch.setattr(mei.dj.populate, "STORE_OUTAGE_WAIT", seconds)

    return set_wait


@pytest.fixture
def back_when_waited_for():
    """``back_when_waited_for(action)``: run ``action`` (bring the store back) half a second
    after populate says it waits for the store, so the outage lasts until mei noticed it."""
    seen = []

    class Handler(logging.Handler):
        def __init__(self, action):
            super().__init__()
            self.action = action

        def emit(self, record):
            if "waiting up to" in record.getMessage() and not seen:
                seen.append(record.getMessage())
                threading.Timer(0.5, self.action).start()

    handlers = []

    def arm(action):
        handler = Handler(action)
        logging.getLogger("mei.dj.populate").addHandler(handler)
        handlers.append(handler)
        return seen

    yield arm
    for handler in handlers:
        logging.getLogger("mei.dj.populate").removeHandler(handler)


def breaking(lab, when, action):
    """``lab.MEI`` that calls ``action()`` once, ``when`` its first batch stores its files:
    ``"during"`` (after half of the batch's rows and files are written, inside the
    transaction) or ``"after"`` (after all of them, before the commit)."""

    class MEI(lab.MEI):
        broken = False

        def make_insert_many(self, rows):
            if MEI.broken:
                return super().make_insert_many(rows)
            MEI.broken = True
            if when == "during":
                super().make_insert_many(rows[: len(rows) // 2])
                action()
                return super().make_insert_many(rows[len(rows) // 2 :])
            super().make_insert_many(rows)
            action()

    return MEI


def finish(lab, s3, location, schema):
    """After a fault: clear the errors, sweep the strays, compute the rest, check it all."""
    table = lab.MEI()
    if backend().generation == 2:
        table.jobs.errors.delete_quick()
    else:
        (lab_jobs(table) & {"status": "error"}).delete_quick()
    recover(table, stray_files_older_than=0)
    assert len(mei_objects(s3, location, schema)) == 2 * len(table)  # no stray file left
    table.populate(batch_size=4, reserve_jobs=True)
    check_complete(lab, s3, location, schema)


def lab_jobs(table):
    return table.connection.schemas[table.database].jobs & {"table_name": table.table_name}


def test_a_short_outage_before_the_file_writes_needs_no_hand_work(
    lab, s3, s3_store, schema, outage_wait, back_when_waited_for
):
    outage_wait(60)
    waited = back_when_waited_for(s3.start)
    run_path_lab.BEFORE_RUN.append(s3.stop)
    result = lab.MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    assert waited and "cannot be reached" in waited[0]
    assert result["success_count"] == N and result["error_list"] == []
    assert queue_counts(lab.MEI()) == {"reserved": 0, "error": 0, "ignore": 0}
    check_complete(lab, s3, s3_store, schema)  # no file left of the failed attempt


def test_a_short_outage_during_the_file_writes_leaves_nothing(
    lab, s3, s3_store, schema, outage_wait, back_when_waited_for
):
    outage_wait(60)
    waited = back_when_waited_for(s3.start)
    MEI = breaking(lab, "during", s3.stop)
    result = MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    assert MEI.broken and waited
    assert result["success_count"] == N and result["error_list"] == []
    check_complete(lab, s3, s3_store, schema)


@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_a_lasting_outage_is_recorded_once_and_recover_removes_its_files(
    lab, s3, s3_store, schema, outage_wait, when
):
    outage_wait(1)
    table = lab.MEI()
    if when == "before":
        run_path_lab.BEFORE_RUN.append(s3.stop)
        MEI = lab.MEI
    else:
        MEI = breaking(lab, when, s3.stop)
    with pytest.raises(StoreUnavailableError, match="cannot be reached") as stopped:
        MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    assert "\n" not in str(stopped.value)
    done = 4 if when == "after" else 0  # the first batch committed before the store went
    assert len(table) == done
    errors = backend().jobs(table).errors()
    assert len(errors) == 4  # the batch in hand, once; the rest is still pending
    assert {e["error_message"] for e in errors} == {f"StoreUnavailableError: {stopped.value}"}
    assert queue_counts(table)["reserved"] == 0
    s3.start()
    for key in backend().keys(table):  # no row without its files
        assert table.load_mei(key).shape == run_path_lab.SHAPE
    if when == "during":
        assert len(mei_objects(s3, s3_store, schema)) > 2 * done  # written before the outage
    finish(lab, s3, s3_store, schema)


def test_refused_credentials_mid_batch_are_recorded_at_once(lab, s3, s3_store, schema, outage_wait):
    outage_wait(60)  # not waited for: refused credentials are no outage
    MEI = breaking(lab, "during", s3.refuse_key)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="AccessDenied"):
        MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    assert time.monotonic() - started < 30
    table = lab.MEI()
    assert len(table) == 0 and len(backend().jobs(table).errors()) == 4
    s3.refuse_key(False)
    finish(lab, s3, s3_store, schema)


def test_server_errors_for_a_while_are_ridden_out(
    lab, s3, s3_store, schema, outage_wait, back_when_waited_for
):
    outage_wait(60)
    waited = back_when_waited_for(lambda: s3.fail(0))
    run_path_lab.BEFORE_RUN.append(lambda: s3.fail(float("inf")))
    try:
        result = lab.MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    finally:
        s3.fail(0)
    assert waited and "503" in waited[0]
    assert result["success_count"] == N and result["error_list"] == []
    check_complete(lab, s3, s3_store, schema)


def test_server_errors_that_last_are_recorded_once(lab, s3, s3_store, schema, outage_wait):
    outage_wait(1)
    MEI = breaking(lab, "during", lambda: s3.fail(float("inf")))
    try:
        with pytest.raises(StoreUnavailableError, match="503") as failed:
            MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    finally:
        s3.fail(0)
    table = lab.MEI()
    errors = backend().jobs(table).errors()
    assert len(table) == 0 and len(errors) == 4
    assert {e["error_message"] for e in errors} == {f"StoreUnavailableError: {failed.value}"}
    finish(lab, s3, s3_store, schema)
