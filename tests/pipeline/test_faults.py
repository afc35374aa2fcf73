"""Faults during populate: connections dropped by the server, workers killed inside the insert
transaction, two threads on one connection, a read-only store. After each: every key ends
exactly once, no row lacks its files, no file lacks a row, nothing stays reserved.

Tables are declared through mei's type map (run_path_lab), so this runs on DataJoint 2.x
(PostgreSQL, MariaDB) and 0.14 (MariaDB) alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import datajoint as dj
import pytest
import run_path_lab
from mei_testkit import wait_for

from mei.dj.backend import ConcurrentPopulateError, backend
from mei.errors import StoreUnavailableError
from mei.populate import recover

N = 8  # keys
HERE = Path(__file__).parent


@pytest.fixture
def lab(schema, mei_main):
    run_path_lab.CALLS.clear()
    run_path_lab.BEFORE_RUN.clear()
    lab = run_path_lab.declare(schema, n_units=N)
    mei_main.MEIMethod().add_method("run_path_lab.recording_method", run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    yield lab
    run_path_lab.BEFORE_RUN.clear()


@pytest.fixture
def other(lab, schema, connection):
    """The same tables through a second connection: another worker, or an operator."""
    conn = backend().open_connection_like(connection)
    tables = run_path_lab.declare(
        dj.Schema(schema.database, connection=conn, create_schema=False), fill=False
    )
    yield SimpleNamespace(conn=conn, **vars(tables))
    conn.close()


def kill_session(conn, session: int) -> None:
    """Drop a session from the server side, as a DBA or a server restart would."""
    if backend().is_postgresql(conn):
        conn.query("SELECT pg_terminate_backend(%s)", (int(session),))
    else:
        conn.query(f"KILL {int(session)}")
    wait_for(lambda: session not in backend().live_connection_ids(conn), 10, "the kill")


def files_of(store: Path, schema) -> list[Path]:
    return [p for p in Path(store).rglob("*") if p.is_file() and schema.database in str(p)]


def check_complete(lab, schema, store) -> None:
    """Every key once, each row's files readable, no other files, no reservation left."""
    table = lab.MEI()
    keys = backend().keys(table)
    assert len(keys) == N == len({k["neuron_id"] for k in keys})
    for key in keys:
        assert table.load_mei(key).shape == run_path_lab.SHAPE
        assert isinstance(table.load_output(key), dict)
    assert len(files_of(store, schema)) == 2 * N
    assert backend().jobs(table).reserved() == []


def test_a_worker_whose_connection_is_dropped_is_alive_to_recover(lab, other, schema, store):
    table = lab.MEI()
    seen = {}

    def drop_the_connection():
        kill_session(other.conn, backend().session_id(table.connection))
        seen["reserved"] = backend().jobs(other.MEI()).reserved()
        seen["recovered"] = recover(other.MEI())

    run_path_lab.BEFORE_RUN.append(drop_the_connection)
    first = table.populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    assert len(seen["reserved"]) == 4
    assert seen["recovered"] == []  # its liveness lock is held by a session of its own
    assert first["error_list"] == []
    table.populate(batch_size=4, reserve_jobs=True)  # what the lost connection gave back
    check_complete(lab, schema, store)


def test_a_worker_that_lost_its_keys_commits_none_of_them(lab, other, schema, store):
    table = lab.MEI()
    taken = []
    # An operator's recover(dead_only=False) takes the keys while the worker computes them:
    run_path_lab.BEFORE_RUN.append(lambda: taken.extend(recover(other.MEI(), dead_only=False)))
    result = table.populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    assert len(taken) == 4
    assert result["success_count"] == N - 4 and result["error_list"] == []
    assert not (table & taken)  # it did not commit keys it no longer held
    assert len(files_of(store, schema)) == 2 * (N - 4)
    table.populate(batch_size=4, reserve_jobs=True)
    check_complete(lab, schema, store)


def test_a_connection_dropped_inside_the_insert_transaction(lab, other, schema, store):
    class MEI(lab.MEI):  # the same table; its connection dies after the first row is staged
        dropped = False

        def make_insert(self, key, *result):
            super().make_insert(key, *result)
            if not MEI.dropped:
                MEI.dropped = True
                kill_session(other.conn, backend().session_id(self.connection))

    result = MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    assert MEI.dropped
    assert result["error_list"] == []
    assert len(lab.MEI()) == N - 4  # the first batch rolled back, its files removed
    assert len(files_of(store, schema)) == 2 * (N - 4)
    assert backend().jobs(lab.MEI()).reserved() == []  # and its keys given back
    lab.MEI().populate(batch_size=4, reserve_jobs=True)
    check_complete(lab, schema, store)


def test_a_worker_killed_inside_the_insert_transaction(lab, mei_main, schema, store):
    settings = {}
    for name in (
        "database.host",
        "database.port",
        "database.user",
        "database.password",
        "database.backend",
        "database.use_tls",
    ):
        try:
            value = dj.config[name]
        except (KeyError, AttributeError):
            continue
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if value is not None:
            settings[name] = value
    settings["stores"] = dict(dj.config["stores"])
    env = dict(os.environ, MEI_TEST_DJ=json.dumps(settings, default=str), MEI_QUIET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    process = subprocess.run(
        [sys.executable, str(HERE / "fault_worker.py"), schema.database, mei_main.schema.database],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -9, process.stderr
    table = lab.MEI()
    assert len(table) == 0  # the transaction died with the process
    assert files_of(store, schema)  # but it had stored files
    assert len(backend().jobs(table).reserved()) == 4
    assert len(recover(table)) == 4  # its session is gone: recovered, files removed
    assert files_of(store, schema) == []
    table.populate(batch_size=4, reserve_jobs=True)
    check_complete(lab, schema, store)


def test_two_threads_on_one_connection_are_refused_not_miscounted(lab, schema, store):
    table = lab.MEI()
    refused = []
    inside = threading.Event()
    go_on = threading.Event()

    def hold():
        inside.set()
        go_on.wait(30)

    run_path_lab.BEFORE_RUN.append(hold)
    results = {}
    first = threading.Thread(
        target=lambda: results.update(first=table.populate(batch_size=N, reserve_jobs=True))
    )
    first.start()
    assert inside.wait(30)
    try:
        lab.MEI().populate(batch_size=N, reserve_jobs=True)
    except ConcurrentPopulateError as e:
        refused.append(str(e))
    go_on.set()
    first.join(60)
    assert refused and "another populate is running on this database connection" in refused[0]
    assert results["first"]["success_count"] == len(lab.MEI()) == N
    check_complete(lab, schema, store)


@pytest.mark.parametrize("batch_size", [None, N], ids=["per-key", "batched"])
def test_two_threads_starting_together_one_computes_the_other_is_refused(
    lab, schema, store, batch_size
):
    # both threads call populate() at the same moment on the process's one connection: the
    # second is refused before it sends a query (MariaDB's driver, unlike PostgreSQL's,
    # breaks when two threads query one connection at once)
    table = lab.MEI()
    start = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def populate(name):
        start.wait(30)
        try:
            # DataJoint's own populate sets a signal handler with reserve_jobs, which only
            # the main thread may do: the per-key path runs without the job queue here
            reserve = batch_size is not None
            outcome[name] = table.populate(batch_size=batch_size, reserve_jobs=reserve)
        except Exception as e:  # what the thread ended with, checked below
            outcome[name] = e

    threads = [threading.Thread(target=populate, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    errors = [v for v in outcome.values() if isinstance(v, BaseException)]
    assert all(isinstance(e, ConcurrentPopulateError) for e in errors), errors
    assert len(errors) == 1  # they overlapped: one of them was refused
    done = [v for v in outcome.values() if not isinstance(v, BaseException)]
    assert sum(r["success_count"] for r in done) == N  # every key computed once
    assert len(run_path_lab.CALLS) == (N if batch_size is None else 1)
    check_complete(lab, schema, store)


def test_a_read_only_store_is_refused_before_any_key_is_reserved(lab, schema, store):
    if os.geteuid() != 0 or subprocess.run(["chattr", "-R", "+i", str(store)]).returncode != 0:
        pytest.skip("needs root and chattr to make the store read-only")
    try:
        with pytest.raises(StoreUnavailableError, match="cannot be written") as refused:
            lab.MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(store)], check=True)
    assert "no key was reserved" in str(refused.value)
    assert run_path_lab.CALLS == []
    queue = backend().jobs(lab.MEI())
    assert queue.counts() == {"reserved": 0, "error": 0, "ignore": 0}
    assert len(lab.MEI()) == 0 and files_of(store, schema) == []


def test_a_store_that_turns_read_only_mid_batch_keeps_nothing_after_recover(lab, schema, store):
    if os.geteuid() != 0 or subprocess.run(["chattr", "-i", str(store)]).returncode != 0:
        pytest.skip("needs root and chattr to make the store read-only")

    class MEI(lab.MEI):  # the same table; the store turns read-only half-way through a batch
        turned = False

        def make_insert_many(self, rows):
            if not MEI.turned:
                MEI.turned = True
                super().make_insert_many(rows[:2])
                subprocess.run(["chattr", "-R", "+i", str(store)], check=True)
            super().make_insert_many(rows[2:] if len(rows) == 4 and MEI.turned else rows)

    try:
        with pytest.raises(StoreUnavailableError, match="cannot be written") as refused:
            MEI().populate(batch_size=4, reserve_jobs=True, suppress_errors=True)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(store)], check=True)
    table = lab.MEI()
    assert len(table) == 0
    errors = backend().jobs(table).errors()
    assert len(errors) == 4  # the batch in hand, once, with one line; the rest is pending
    assert {e["error_message"] for e in errors} == {f"StoreUnavailableError: {refused.value}"}
    assert files_of(store, schema)  # the first two rows' files, written before
    recover(table, stray_files_older_than=0)
    assert files_of(store, schema) == []
