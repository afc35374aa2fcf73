"""The SLURM recipe, deploy/slurm/mei-worker.sbatch, run by a real SLURM on this machine.

A single-node cluster from Debian's ``slurm-wlm`` and ``munge`` (``tests/slurm_testkit.py``)
is started for this module and stopped afterwards. The recipe file itself is submitted, as a
lab would submit it (options on sbatch's command line, ``mei worker`` arguments after the
script), as an array of 3 workers against one table. Runs on DataJoint 2.x with a named
PostgreSQL server; skips, saying why, where the cluster cannot be started (not root, packages
missing).

The workers hold their first batch at a :class:`mei_testkit.Gate` while the test cancels two
of them, so what is shown does not depend on timing: ``scancel`` of a task whose batch ends
within SLURM's KillWait (the batch is stored, the worker exits 0), and of one whose batch
does not (SIGKILL: its keys are recovered and computed by the task still running).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import database_testkit
import labs
import pytest
import slurm_testkit
from mei_testkit import Gate, wait_for
from test_populate_scale import TESTS, as_set, dead_worker_is_gone, gated_lab
from worker_lab import worker_env

from mei.dj.backend import backend

RECIPE = TESTS.parents[1] / "deploy" / "slurm" / "mei-worker.sbatch"
TIMEOUT = 120
N_KEYS, BATCH = 12, 2


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = slurm_testkit.why_unavailable()
    if why is None:
        server = database_testkit.session_server()
        if backend().generation != 2 or server is None or server.backend != "postgresql":
            why = "the SLURM recipe is tested once: on DataJoint 2.x with PostgreSQL"
        elif server.embedded is not None:
            why = "the SLURM recipe is tested against a named PostgreSQL server (DJ_HOST)"
    if why is not None:
        pytest.skip(why)
    cluster = slurm_testkit.SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def job_env(cluster, schema, mei_main) -> dict[str, str]:
    """What a lab exports before sbatch: the database (here: the tests' tables through
    ``worker_lab``), and this checkout and its ``mei`` on the paths."""
    root = TESTS.parents[1]
    python_bin = Path(sys.executable).parent
    env = dict(cluster.env)
    env.update(worker_env(schema, mei_main))
    env["PATH"] = f"{python_bin}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = ":".join(str(p) for p in (TESTS, TESTS.parent, root))
    env["PYTHONWARNINGS"] = "ignore"
    return env


def output(folder: Path, job: str, task: int) -> str:
    path = folder / f"mei-worker-{job}_{task}.out"
    return path.read_text() if path.exists() else ""


def summary(text: str) -> dict:
    """The worker's ``--json`` summary: the last line of its output that is a JSON object."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, text
    return json.loads(lines[-1])


def test_an_array_of_three_workers_computes_every_key_once_through_two_cancels(
    slurm, make_lab, mei_main, schema, store, tmp_path
):
    gate = Gate(tmp_path / "gate")
    lab = gated_lab(make_lab, mei_main, gate, n_units=N_KEYS)
    table = lab.MEI()
    jobs = tmp_path / "jobs"  # the submission directory: the jobs' output files land here
    jobs.mkdir()
    env = job_env(slurm, schema, mei_main)
    submitted = slurm.run(
        "sbatch",
        "--parsable",
        "--array=0-2",
        str(RECIPE),
        "worker_lab.MEI",
        "--device",
        "cpu",
        "--batch-size",
        str(BATCH),
        "--json",
        cwd=jobs,
        env=env,
    )
    job = submitted.stdout.strip().split(";")[0]

    def task_ended_early():
        ended = {f"{job}_{t}" for t in range(3)} - {line.split()[0] for line in slurm.queued(job)}
        if ended:
            texts = "\n".join(output(jobs, job, t) for t in range(3))
            raise AssertionError(f"tasks {sorted(ended)} ended early:\n{texts}\n{slurm.logs()}")

    def arrived():
        task_ended_early()
        return gate.arrivals() == 3

    wait_for(arrived, TIMEOUT, "the 3 workers to reserve a batch each")  # 6 keys reserved
    pids = {}
    for task in range(3):
        first = output(jobs, job, task).splitlines()[0]
        # the recipe's own line: the command it runs, with --max-time from the time limit
        assert first.startswith(f"mei-worker.sbatch: task {job}_{task} (restart 0)"), first
        assert " mei worker --device cuda --max-time " in first and "worker_lab.MEI" in first
        max_time = int(re.search(r"--max-time (\d+)", first).group(1))
        assert 12 * 3600 - 900 - 120 <= max_time <= 12 * 3600 - 900  # --time=12:00:00
        pids[task] = int(re.search(r"pid (\d+)", first).group(1))
    held = {
        t: [j["key"] for j in labs.jobs(lab, "reserved") if int(j["pid"]) == pids[t]] for t in pids
    }
    assert all(len(keys) == BATCH for keys in held.values()), held

    # task 1: scancel while its batch is held past KillWait: SIGTERM, then SIGKILL
    slurm.run("scancel", f"{job}_1")
    wait_for(lambda: "SIGTERM" in output(jobs, job, 1), TIMEOUT, "task 1 to take the SIGTERM")
    wait_for(
        lambda: not any(line.startswith(f"{job}_1 ") for line in slurm.queued(job)),
        TIMEOUT,
        "task 1 to be killed",
    )
    wait_for(dead_worker_is_gone(table, pids[1]), TIMEOUT, "the server to see task 1 gone")
    assert len(labs.jobs(lab, "reserved")) == 3 * BATCH and len(lab.MEI()) == 0

    # task 0: scancel, and its batch ends within KillWait: stored, then the worker exits
    slurm.run("scancel", f"{job}_0")
    wait_for(lambda: "SIGTERM" in output(jobs, job, 0), TIMEOUT, "task 0 to take the SIGTERM")
    gate.open()
    wait_for(lambda: not slurm.queued(job), TIMEOUT, "the array to finish")

    texts = {t: output(jobs, job, t) for t in range(3)}
    first, killed, last = summary(texts[0]), texts[1], summary(texts[2])
    assert first["stopped_by"] == "SIGTERM" and first["done"] == BATCH, texts[0]
    assert as_set(first["keys"]) == as_set(held[0])
    assert "{" not in killed  # no summary: SIGKILLed holding its batch
    assert last["stopped_by"] == "no pending keys" and last["errors"] == 0, texts[2]
    assert "recovered the reservation of a dead worker" in texts[2]
    assert as_set(held[1]) <= as_set(last["keys"])  # the cancelled task's keys
    computed = [
        json.dumps(k, sort_keys=True, default=str) for s in (first, last) for k in s["keys"]
    ]
    assert len(computed) == N_KEYS == len(set(computed))  # every key once: none twice, none lost

    states = {t: slurm.job(f"{job}_{t}") for t in range(3)}
    # cancelled, yet exited 0 on its own; cancelled and killed (signal 9); finished
    assert [states[t]["JobState"] for t in range(3)] == ["CANCELLED", "CANCELLED", "COMPLETED"]
    assert [states[t]["ExitCode"] for t in range(3)] == ["0:0", "0:9", "0:0"]
    assert all(states[t]["Requeue"] == "1" for t in range(3))  # --requeue: preemption requeues

    assert len(lab.MEI()) == N_KEYS
    assert labs.jobs(lab, "reserved") == [] and labs.jobs(lab, "error") == []
    assert len(labs.mei_files(store, lab)) == 2 * N_KEYS  # nothing left behind
