"""Populate at scale: batched populate, four workers, killed workers, SIGTERM, errors.

Worker processes bind the test's tables through ``worker_lab.py``. The tests wait on states
(job table rows, files a run leaves at a :class:`mei_testkit.Gate`, process exit), never on
sleeps: a worker is held at the gate while the test kills or signals it, so what it proves
does not depend on how loaded the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import labs
import pytest
import torch
from mei_testkit import METHOD_CONFIG, Gate, wait_for
from worker_lab import worker_env

from mei.dj.backend import backend
from mei.dj.worker import run_worker
from mei.populate import recover

N_NEURONS = 44  # batched populate: several batches and a partial one
TESTS = Path(__file__).resolve().parent
TIMEOUT = 120  # seconds for any one wait on a worker


def scale_lab(
    make_lab,
    mei_main,
    n_units=N_NEURONS,
    method="mei.methods.gradient_ascent",
    config=METHOD_CONFIG,
    broken=True,
):
    """One trained model of ``n_units`` neurons in a one-member ensemble, the selector filled,
    one method with ``config`` and one seed; with ``broken``, plus a neuron whose unit the model
    does not have: its MEI must fail alone."""
    lab = make_lab(n_units=n_units, seeds=(1,), diverging=False)
    lab.TrainedEnsembleModel().create_ensemble(lab.dataset_key)
    lab.Selector().populate()
    if broken:
        lab.Selector().insert1(
            dict(lab.dataset_key, neuron_id=999, output_unit=999), allow_direct_insert=True
        )
    mei_main.MEIMethod().add_method(method, config)
    mei_main.MEISeed().insert1({"mei_seed": 7})
    return lab


def gated_lab(make_lab, mei_main, gate, n_units):
    """A lab whose method waits at ``gate`` (closed) before each run."""
    gate.close()
    config = gate.config(METHOD_CONFIG)
    return scale_lab(make_lab, mei_main, n_units, "mei_testkit.gated_method", config, False)


class Worker:
    """A ``mei worker --json`` process; its log (stderr) goes to a file the test can watch."""

    def __init__(self, env, folder: Path, *args):
        self.log = folder / f"worker-{len(list(folder.glob('worker-*')))}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mei", "worker", "worker_lab.MEI", "--json", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()

    def finish(self) -> dict:
        """Wait for the worker; return its summary. It must exit with 0, or with 3 (and say
        so in its summary) when keys failed."""
        out, _ = self.process.communicate(timeout=TIMEOUT)
        assert self.process.returncode in (0, 3), self.log.read_text()
        summary = json.loads(out.strip().splitlines()[-1])
        assert self.process.returncode == (3 if summary["errors"] else 0), summary
        return summary


@pytest.fixture
def env(schema, mei_main):
    """The environment of a worker process that binds this test's tables."""
    return {
        **os.environ,
        **worker_env(schema, mei_main),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "MEI_QUIET": "1",
        "PYTHONWARNINGS": "ignore",
    }


@pytest.fixture
def start_worker(env, tmp_path):
    """``start_worker(*args)`` starts a :class:`Worker` for the test's tables; any still running
    at the end of the test are killed."""
    folder = tmp_path / "workers"
    folder.mkdir()
    started = []

    def start(*args):
        started.append(Worker(env, folder, *args))
        return started[-1]

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.communicate()


def as_set(keys):
    return {json.dumps(k, sort_keys=True, default=str) for k in keys}


def test_batched_populate_equals_unbatched_and_reports_progress(make_lab, mei_main, capsys):
    lab = scale_lab(make_lab, mei_main, broken=False)
    table = lab.MEI()
    result = table.populate(batch_size=16, display_progress=True)
    assert result["success_count"] == N_NEURONS and result["error_list"] == []
    assert len(lab.MEI()) == N_NEURONS
    progress = capsys.readouterr().err
    assert f"{N_NEURONS}/{N_NEURONS}" in progress and "MEIs/min" in progress
    for key in backend().keys(lab.MEI())[:6]:  # the unbatched path, computed for the same key
        mei, score, output = table.make_compute(key, *table.make_fetch(key))
        stored = lab.MEI().load_mei(key)
        assert (stored - mei).abs().max().item() <= 1e-5
        assert abs((lab.MEI & key).fetch1("score") - score) <= 1e-4 * abs(score)
        assert lab.MEI().load_output(key).keys() == output.keys()


def test_batched_populate_isolates_a_failing_key(make_lab, mei_main):
    lab = scale_lab(make_lab, mei_main)
    result = lab.MEI().populate(batch_size=64, suppress_errors=True)
    assert result["success_count"] == N_NEURONS
    [(key, message)] = result["error_list"]
    assert key["neuron_id"] == 999 and "IndexError" in message
    with pytest.raises(TypeError, match=r"does not take \['processes'\]"):
        lab.MEI().populate(batch_size=4, processes=2)


# Four workers share 12 good keys and a broken one. Each may take at most 4 keys, so three
# workers cannot take all 13: every worker must take a share, whatever the start order.
SHARED_NEURONS, SHARED_BATCH, SHARED_MAX = 12, 2, 4


def test_four_workers_compute_every_key_once_and_record_errors(
    make_lab, mei_main, store, start_worker
):
    lab = scale_lab(make_lab, mei_main, n_units=SHARED_NEURONS)
    options = ("--batch-size", str(SHARED_BATCH), "--max-keys", str(SHARED_MAX))
    workers = [start_worker(*options) for _ in range(4)]
    summaries = [w.finish() for w in workers]

    computed = [json.dumps(k, sort_keys=True, default=str) for s in summaries for k in s["keys"]]
    assert len(computed) == SHARED_NEURONS == len(set(computed))  # none twice, none lost
    assert sum(s["done"] for s in summaries) == SHARED_NEURONS
    assert sum(s["errors"] for s in summaries) == 1
    assert all(s["done"] + s["errors"] >= 1 for s in summaries), summaries  # the work was shared
    assert sum(1 for s in summaries if s["done"]) >= 2
    assert len(lab.MEI()) == SHARED_NEURONS
    [error] = labs.jobs(lab, "error")
    assert error["key"]["neuron_id"] == 999 and "IndexError" in error["error_message"]
    assert "Traceback" in (error["error_stack"] or ""), (
        error,
        *(w.log.read_text() for w in workers),
    )
    assert len(labs.jobs(lab, "reserved")) == 0
    assert len(labs.mei_files(store, lab)) == 2 * SHARED_NEURONS


def plant_orphan(lab, store, key) -> Path:
    """A file the way a worker killed between writing files and inserting leaves it."""
    if lab.generation == 2:  # a staged insert's name, in the key's folder
        orphan = store / backend().key_folder(lab.MEI(), key) / "mei_deadbeef.pth.tar"
    else:  # an attachment uploaded before its row: <uuid>.<name>
        pattern = backend().attachment_names(key)[0]
        orphan = store / lab.MEI.database / "ab" / "cd" / ("0" * 32 + "." + pattern)
        orphan = orphan.with_name(orphan.name.replace("*", "deadbeef"))
    orphan.parent.mkdir(parents=True)
    torch.save(torch.zeros(1), orphan)
    return orphan


def test_killed_worker_leaves_nothing_and_its_keys_are_recovered(
    make_lab, mei_main, store, start_worker, tmp_path
):
    gate = Gate(tmp_path / "gate")
    lab = gated_lab(make_lab, mei_main, gate, n_units=6)
    victim = start_worker("--batch-size", "4", "--max-keys", "4")
    # the victim reserved its keys and is computing them (held at the gate)
    wait_for(gate.arrivals, TIMEOUT, "the worker to start its batch", [victim.process])
    reserved = [job["key"] for job in labs.jobs(lab, "reserved")]
    assert len(reserved) == 4
    victim.process.send_signal(signal.SIGKILL)
    victim.process.communicate(timeout=TIMEOUT)
    assert victim.process.returncode == -signal.SIGKILL

    assert len(lab.MEI()) == 0  # no partial row
    assert len(labs.jobs(lab, "reserved")) == 4  # the dead worker's reservations stay
    orphan = plant_orphan(lab, store, reserved[0])

    # the server notices the closed connection in its own time: poll until it has
    recovered = wait_for(lambda: recover(lab.MEI()), TIMEOUT, "recovery of the dead worker")
    assert len(recovered) == 4 and as_set(recovered) == as_set(reserved)
    assert not orphan.exists()
    assert len(labs.jobs(lab, "reserved")) == 0

    gate.open()
    # the rescuer: the worker loop in this process (one Python start-up less)
    summary = run_worker(lab.MEI(), batch_size=4, display_progress=False)
    assert summary["success_count"] == 6 and summary["error_list"] == []
    assert as_set(reserved) <= as_set(summary["keys"])
    assert len(lab.MEI()) == 6
    assert len(labs.mei_files(store, lab)) == 2 * 6


def test_sigterm_finishes_the_current_batch_then_stops(make_lab, mei_main, start_worker, tmp_path):
    gate = Gate(tmp_path / "gate")
    lab = gated_lab(make_lab, mei_main, gate, n_units=6)
    worker = start_worker("--batch-size", "2")
    wait_for(gate.arrivals, TIMEOUT, "the worker to start its batch", [worker.process])
    assert len(labs.jobs(lab, "reserved")) == 2
    worker.process.send_signal(signal.SIGTERM)
    wait_for(
        lambda: worker.logged("SIGTERM"),
        TIMEOUT,
        "the worker to take the SIGTERM",
        [worker.process],
    )
    gate.open()
    summary = worker.finish()
    assert summary["stopped_by"] == "SIGTERM" and summary["done"] == 2
    assert len(lab.MEI()) == 2 and len(labs.jobs(lab, "reserved")) == 0


def dead_worker_is_gone(table, pid: int):
    """A condition for :func:`wait_for`: the worker ``pid``'s reservations (which it must hold)
    are those of a dead worker to :func:`recover` (its lock and its connection are gone)."""
    be = backend()
    connection = table.connection

    def gone():
        jobs = [job for job in be.jobs(table).reserved() if job["pid"] == pid]
        assert jobs, f"worker {pid} holds no reservation"
        live = be.live_connection_ids(connection)
        return all(
            job["connection_id"] not in live
            and not be.worker_alive(connection, job["host"], job["pid"])
            for job in jobs
        )

    return gone


def test_a_worker_finishes_the_keys_of_one_killed_meanwhile(
    make_lab, mei_main, start_worker, tmp_path
):
    """Workers recover dead workers' keys when they start and again when nothing is pending:
    the workers that are left finish the keys of one that was killed after they started (a
    cancelled scheduler task), with no recovery call and no new worker."""
    gate = Gate(tmp_path / "gate")
    lab = gated_lab(make_lab, mei_main, gate, n_units=6)
    survivor = start_worker("--batch-size", "2")
    victim = start_worker("--batch-size", "2")
    wait_for(
        lambda: gate.arrivals() == 2,
        TIMEOUT,
        "both workers to start a batch",
        [
            survivor.process,
            victim.process,
        ],
    )
    taken = [
        job["key"] for job in labs.jobs(lab, "reserved") if int(job["pid"]) == victim.process.pid
    ]
    assert len(taken) == 2
    victim.process.send_signal(signal.SIGKILL)
    victim.process.communicate(timeout=TIMEOUT)
    wait_for(
        dead_worker_is_gone(lab.MEI(), victim.process.pid),
        TIMEOUT,
        "the server to see the victim gone",
    )
    gate.open()
    summary = survivor.finish()
    assert summary == {**summary, "done": 6, "errors": 0, "stopped_by": "no pending keys"}
    assert as_set(taken) <= as_set(summary["keys"]) and len(as_set(summary["keys"])) == 6
    assert survivor.logged("recovered the reservation of a dead worker")
    assert len(lab.MEI()) == 6 and len(labs.jobs(lab, "reserved")) == 0


def test_a_sigterm_while_the_worker_starts_stops_it_before_it_reserves(
    make_lab, mei_main, monkeypatch
):
    """A scheduler may signal a worker that is still starting (checking devices, recovering):
    it stops without reserving a key, rather than being killed or taking a batch."""
    import mei.dj.worker as worker_module

    lab = scale_lab(make_lab, mei_main, n_units=4, broken=False)
    check_devices = worker_module.check_devices

    def signalled_while_checking(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the worker's handler, here
        return check_devices(*args)

    monkeypatch.setattr(worker_module, "check_devices", signalled_while_checking)
    before = signal.getsignal(signal.SIGTERM)
    summary = run_worker(lab.MEI(), batch_size=2, display_progress=False)
    assert summary["stopped_by"] == "SIGTERM" and summary["success_count"] == 0
    assert len(lab.MEI()) == 0 and labs.jobs(lab, "reserved") == []
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back


def test_keys_another_worker_finished_meanwhile_are_neither_reserved_nor_computed(
    make_lab, mei_main, start_worker, monkeypatch
):
    """A worker lists the pending keys once, then works through them batch by batch: keys that
    other workers took or finished since are skipped with one query per batch, not reserved one
    by one (DataJoint 0.14 deletes a finished key's job row, so reserving it again succeeds and
    its MEI was computed a second time and thrown away)."""
    from mei.dj import populate as populate_module

    lab = scale_lab(make_lab, mei_main, n_units=6, broken=False)
    computed, reserve_calls = [], []
    compute = populate_module.run.compute

    def counting_compute(table, keys, **kwargs):
        computed.extend(keys)
        return compute(table, keys, **kwargs)

    monkeypatch.setattr(populate_module.run, "compute", counting_compute)
    queue_class = type(backend().jobs(lab.MEI()))
    reserve = queue_class.reserve

    def counting_reserve(self, key):
        reserve_calls.append(key)
        return reserve(self, key)

    monkeypatch.setattr(queue_class, "reserve", counting_reserve)

    finished_by_other = []

    def other_worker_finishes_everything():  # polled before each batch: the list is stale
        if not finished_by_other:
            finished_by_other.append(start_worker("--batch-size", "6").finish())
        return False

    result = populate_module.populate(
        lab.MEI(), reserve_jobs=True, batch_size=2, stop=other_worker_finishes_everything
    )
    assert finished_by_other[0]["done"] == 6
    assert result["success_count"] == 0 and result["error_list"] == []
    assert computed == [] and reserve_calls == []
    assert len(lab.MEI()) == 6 and labs.jobs(lab, "reserved") == []
