"""The Backend (every DataJoint generation difference and private name) and the one run path,
on a real server, with tables declared through mei's own type map: the same tests run on
DataJoint 2.x (PostgreSQL, MariaDB) and 0.14 (MariaDB)."""

from __future__ import annotations

import pytest
import run_path_lab
import torch

from mei.dj import run
from mei.dj.backend import DataJoint014, DataJoint2, backend


@pytest.fixture
def lab(schema, mei_main):
    run_path_lab.CALLS.clear()
    return run_path_lab.declare(schema)


def _method(mei_main, config=None):
    return mei_main.MEIMethod().add_method(
        "run_path_lab.recording_method", config or run_path_lab.CONFIG
    )


# --------------------------------------------------------------------------- internals
def test_every_private_datajoint_name_mei_uses_exists():
    assert backend().missing_internals() == []


def test_a_renamed_private_name_is_reported(monkeypatch):
    from datajoint.autopopulate import AutoPopulate

    monkeypatch.delattr(AutoPopulate, "_jobs_to_do")
    assert "datajoint.autopopulate:AutoPopulate._jobs_to_do" in backend().missing_internals()


def test_one_backend_for_the_installed_datajoint():
    import datajoint as dj

    expected = DataJoint2 if int(dj.__version__.split(".")[0]) >= 2 else DataJoint014
    assert type(backend()) is expected and backend() is backend()


def test_allow_insert_opens_a_computed_table_only_inside(lab, mei_main):
    import datajoint as dj

    method = _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    key = {**backend().keys(lab.MEI.key_source)[0]}
    assert set(method) <= set(key)
    row = {"mei": torch.zeros(1), "score": 1.0, "output": {}}
    with pytest.raises(dj.DataJointError):
        lab.MEI().make_insert(key, **row)
    with backend().allow_insert(lab.MEI()):
        lab.MEI().make_insert(key, **row)
    assert key in lab.MEI()
    assert torch.equal(lab.MEI().load_mei(key), torch.zeros(1))
    other = backend().keys(lab.MEI.key_source - lab.MEI())[0]
    with pytest.raises(dj.DataJointError):  # closed again afterwards
        lab.MEI().make_insert(other, **row)


def test_a_batch_of_rows_and_files_goes_in_together_or_not_at_all(lab, mei_main, store):
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()
    keys = backend().keys(table.key_source)[:3]
    rows = [(k, torch.full((2,), float(i)), float(i), {"i": i}) for i, k in enumerate(keys)]

    def stored_files():  # the store is the session's: other tests' files are there too
        return {p for p in store.rglob("*") if p.is_file()} - before

    before: set = set()
    before = stored_files()
    # a duplicate key fails the statement after every file of the batch was written
    with backend().allow_insert(table), pytest.raises(Exception, match="(?i)duplicate"):
        table.make_insert_many([*rows, rows[0]])
    assert len(table) == 0 and stored_files() == set()

    statements = []
    query = table.connection.query

    def counting(sql, *args, **kwargs):
        if sql.lstrip().upper().startswith("INSERT") and table.full_table_name in sql:
            statements.append(sql)
        return query(sql, *args, **kwargs)

    table.connection.query = counting
    try:
        with backend().allow_insert(table):
            table.make_insert_many(rows)
    finally:
        del table.connection.query
    assert len(statements) == 1  # one statement for the batch
    assert len(table) == 3 and len(stored_files()) == 6
    for key, mei, score, _ in rows:
        assert torch.equal(table.load_mei(key), mei)
        assert float((table & key).fetch1("score")) == score


def test_populate_runs_without_postgresql_jit_and_restores_it(lab, mei_main, connection):
    if not backend().is_postgresql(connection):
        pytest.skip("JIT compilation is PostgreSQL's")
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()

    def jit():
        return connection.query("SHOW jit").fetchone()[0]

    seen = []
    connection.query("SET jit = on")
    run_path_lab.BEFORE_RUN[:] = [lambda: seen.append(jit())] * (run_path_lab.N_UNITS + 1)
    try:
        table.populate({"neuron_id": 0}, batch_size=2)  # batched
        table.populate()  # DataJoint's own, key by key
    finally:
        run_path_lab.BEFORE_RUN.clear()
    assert len(seen) == run_path_lab.N_UNITS
    assert set(seen) == {"off"}  # while populating: small queries, never compiled
    assert jit() == "on"  # the session's own setting afterwards
    with backend().without_jit(connection):
        assert jit() == "off"
    assert jit() == "on"


def test_todo_is_the_key_source_minus_what_is_done(lab, mei_main):
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()
    assert len(backend().todo(table, ())) == run_path_lab.N_UNITS
    assert len(backend().todo(table, ({"neuron_id": 2},))) == 1
    table.populate({"neuron_id": 2})
    assert len(backend().todo(table, ())) == run_path_lab.N_UNITS - 1


def test_job_queue_reserves_completes_fails_and_releases(lab, mei_main):
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()
    queue = backend().jobs(table)
    keys = queue.pending(backend().todo(table, ()))
    assert len(keys) == run_path_lab.N_UNITS
    assert all(queue.reserve(k) for k in keys)
    assert not queue.reserve(keys[0])  # taken
    own = table.connection.connection_id
    assert {r["connection_id"] for r in queue.reserved()} == {own}
    assert own in backend().live_connection_ids(table.connection)
    queue.error(keys[0], "ValueError: broken", "stack")
    queue.complete_many(keys[1:3])
    queue.release(keys[3])
    assert queue.counts() == {"reserved": 0, "error": 1, "ignore": 0}
    [error] = queue.errors()
    assert error["key"] == keys[0] and error["error_message"] == "ValueError: broken"
    pending = queue.pending(backend().todo(table, ()))
    assert keys[0] not in pending and keys[3] in pending


def _statements(connection, monkeypatch) -> list[str]:
    """The SQL statements ``connection`` sends from now on (its ``query`` wrapped, still run)."""
    sent: list[str] = []
    query = connection.query

    def recording(sql, *args, **kwargs):
        sent.append(str(sql).lstrip().split(None, 1)[0].upper())
        return query(sql, *args, **kwargs)

    monkeypatch.setattr(connection, "query", recording)
    return sent


@pytest.mark.generation(2)
def test_pending_adds_the_job_rows_in_one_statement(schema, mei_main, monkeypatch):
    """DataJoint 2.x's refresh inserts a job row per key: every worker starting meanwhile
    tried (and failed) to insert the same rows; one multi-row insert leaves no such window."""
    lab = run_path_lab.declare(schema, n_units=24)
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()
    queue = backend().jobs(table)
    sent = _statements(table.connection, monkeypatch)
    keys = queue.pending(backend().todo(table, ()))
    assert len(keys) == 24 and sent.count("INSERT") == 1
    sent.clear()
    assert queue.pending(backend().todo(table, ())) == keys and sent.count("INSERT") == 0


def test_reserve_many_takes_only_keys_nobody_holds_or_finished(lab, mei_main):
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()
    queue = backend().jobs(table)
    keys = queue.pending(backend().todo(table, ()))
    assert queue.reserve(keys[0])
    table.populate(keys[1])  # finished without a reservation: no job row on either generation
    assert queue.available(keys[:4]) == keys[2:4]
    assert queue.reserve_many(keys[:4]) == keys[2:4]
    assert sorted(r["key"]["neuron_id"] for r in queue.reserved()) == sorted(
        k["neuron_id"] for k in (keys[0], *keys[2:4])
    )


def test_files_of_a_key_without_a_row_are_removed(lab, mei_main, store):
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()
    key = backend().keys(table.key_source)[0]
    table.populate(key)
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files
    assert backend().remove_key_files(table, key) >= 1 or backend().generation == 0
    # on 0.14 the files belong to a row and are left alone; on 2.x remove_orphan_files
    # guards the row (see recovery), remove_key_files itself does what it is told
    from mei.dj.recovery import remove_orphan_files

    assert remove_orphan_files(table, key) == 0  # the row holds it


# --------------------------------------------------------------------------- run path
def test_make_goes_through_generate_mei_with_the_device_override(lab, mei_main):
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = lab.MEI()
    table.device = "cpu:0"  # the override reaches the method's config
    table.populate()
    assert run_path_lab.CALLS == [("single", "cpu:0", 1)] * run_path_lab.N_UNITS
    run_path_lab.CALLS.clear()
    lab.MEI().delete_quick()
    table.populate(batch_size=8)
    assert run_path_lab.CALLS == [("batched", "cpu:0", run_path_lab.N_UNITS)]


def test_a_table_with_capture_captures_its_runs_and_stores_the_same_rows(
    lab, mei_main, monkeypatch
):
    """``MEI.capture = True`` (``mei worker --capture``) runs the captured step for every key,
    one by one and batched, and stores bitwise the rows of the eager step."""
    from mei import capture

    steps = []
    graph_call = capture.StepGraph.__call__

    def counted(self):
        steps.append(self)
        return graph_call(self)

    monkeypatch.setattr(capture.StepGraph, "__call__", counted)
    config = {
        **run_path_lab.CONFIG,
        "precondition": {"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.0}},
        "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 2.0}},
    }
    _method(mei_main, config)
    mei_main.MEISeed().insert1({"mei_seed": 1})

    def rows():
        return {k["neuron_id"]: lab.MEI().load_mei(k) for k in backend().keys(lab.MEI())}

    lab.MEI().populate()
    eager = rows()
    assert steps == []
    for batch_size in (None, 3):
        lab.MEI().delete_quick()
        table = lab.MEI()
        table.capture = True
        table.populate(**({} if batch_size is None else {"batch_size": batch_size}))
        assert len(steps) == run_path_lab.N_UNITS * 4 if batch_size is None else len(steps) > 0
        captured = rows()
        assert captured.keys() == eager.keys()
        for neuron, mei in eager.items():
            if batch_size is None:
                assert torch.equal(captured[neuron], mei)
            else:  # batched: as the eager batched rows, which equal single ones to 1e-6
                assert torch.allclose(captured[neuron], mei, atol=1e-6)
        steps.clear()


def test_a_labs_generate_mei_is_called_batched_or_not(lab, mei_main, schema):
    calls = []

    class MEIMethod(mei_main.MEIMethod):  # the same table, with a lab's generate_mei
        def generate_mei(self, dataloaders, model, key, seed):
            calls.append(dict(key))
            return super().generate_mei(dataloaders, model, key, seed)

    assert run.overrides_generate_mei(MEIMethod)
    assert not run.overrides_generate_mei(mei_main.MEIMethod)
    lab.MEI.method_table = MEIMethod
    try:
        _method(mei_main)
        mei_main.MEISeed().insert1({"mei_seed": 1})
        lab.MEI().populate(batch_size=8)
        assert len(calls) == run_path_lab.N_UNITS
        assert [c[0] for c in run_path_lab.CALLS] == ["single"] * run_path_lab.N_UNITS
    finally:
        del lab.MEI.method_table


def test_batched_rows_equal_single_rows(lab, mei_main):
    _method(mei_main)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    lab.MEI().populate()
    single = {k["neuron_id"]: lab.MEI().load_mei(k) for k in backend().keys(lab.MEI())}
    lab.MEI().delete_quick()
    lab.MEI().populate(batch_size=3)
    for key in backend().keys(lab.MEI()):
        assert torch.allclose(lab.MEI().load_mei(key), single[key["neuron_id"]], atol=1e-6)
