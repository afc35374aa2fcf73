"""``mei worker`` and ``mei status`` on the README's example pipeline (examples/lab_pipeline.py)
with the embedded database and nothing configured: they import the table from the working
directory and find the database the same way, refuse a missing device before reserving
anything, say why there is nothing to compute, and stay quiet."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
from tools_testkit import (
    REPO,
    base_env,
    require_embedded,
    run_mei,
    run_python,
    shared_directory,
    small_disk,
    stop_embedded,
)

SETUP = """
from lab_pipeline import Dataset, Selector, TrainedEnsembleModel, TrainedModel
Dataset().insert1({"dataset_id": 1, "n_images": 256})
TrainedModel().populate()
TrainedEnsembleModel().create_ensemble({"dataset_id": 1})
Selector().populate()
"""

METHOD_AND_SEED = """
from mei.main import MEIMethod, MEISeed
MEIMethod().add_method("mei.methods.gradient_ascent", {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 10.0}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}},
})
MEISeed().insert1({"mei_seed": 7})
"""

NOISE = ("No datajoint.json found", "Consider using a core DataJoint type", "Traceback")


def exported(output: str) -> dict[str, str]:
    """The variables of `mei db env`'s ``export NAME=value`` lines."""
    values = {}
    for line in output.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


def status(env, cwd) -> dict:
    result = run_mei("status", "lab_pipeline.MEI", "--json", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_error_line(result, command: str) -> str:
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mei {command}: error: ")
    return lines[0]


@pytest.fixture
def lab():
    """A working directory holding the example pipeline, and an environment with nothing
    configured but mei's data directory (the embedded database, started)."""
    require_embedded()
    with shared_directory() as directory:
        shutil.copy(REPO / "examples" / "lab_pipeline.py", directory)
        env = base_env(directory / "data")
        try:
            started = run_mei("db", "start", env=env, cwd=directory)
            assert started.returncode == 0, started.stderr
            yield directory, env
        finally:
            stop_embedded(directory / "data")


def test_worker_and_status_agree_on_the_table_and_the_embedded_database(lab):
    cwd, env = lab
    # the setup itself runs as a user's script would after `eval "$(mei db env)"`
    script_env = {**env, **exported(run_mei("db", "env", env=env, cwd=cwd).stdout)}
    run_python(SETUP, env=script_env, cwd=cwd, timeout=300)

    # no method and no seed yet: nothing to compute, and both commands say why
    counts = status(env, cwd)
    assert counts["total"] == 0
    assert counts["note"].startswith("nothing to compute: MEIMethod, MEISeed have no rows")
    idle = run_mei("worker", "lab_pipeline.MEI", env=env, cwd=cwd)
    assert idle.returncode == 0, idle.stderr
    assert idle.stdout.strip() == "mei worker: 0 done, 0 errors (stopped: no pending keys)"
    assert (
        "mei worker: nothing to compute: MEIMethod, MEISeed have no rows: fill them, e.g. "
        'MEIMethod().add_method("mei.methods.gradient_ascent", config); '
        'MEISeed().insert1({"mei_seed": 42})'
    ) in idle.stderr

    run_python(METHOD_AND_SEED, env=script_env, cwd=cwd)
    assert status(env, cwd) | {"table": None} == {
        "table": None,
        "total": 8,
        "done": 0,
        "pending": 8,
        "reserved": 0,
        "errors": 0,
        "ignored": 0,
    }
    import torch

    if not torch.cuda.is_available():  # refused before reserving anything
        line = one_error_line(
            run_mei("worker", "lab_pipeline.MEI", "--device", "cuda", env=env, cwd=cwd), "worker"
        )
        assert "--device cuda: CUDA is not available on this machine" in line
        counts = status(env, cwd)
        assert (counts["pending"], counts["reserved"], counts["errors"]) == (8, 0, 0)

    worker = run_mei("worker", "lab_pipeline.MEI", "--batch-size", "8", env=env, cwd=cwd)
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.strip() == "mei worker: 8 done, 0 errors (stopped: no pending keys)"
    for noise in NOISE:
        assert noise not in worker.stderr, worker.stderr
    lines = worker.stderr.strip().splitlines()
    assert len(lines) == len(set(lines)), worker.stderr  # nothing said twice
    assert status(env, cwd)["done"] == 8
    again = run_mei("worker", "lab_pipeline.MEI", env=env, cwd=cwd)
    assert "mei worker: nothing left for this worker: 8 of 8 keys are done" in again.stderr

    # a store that is not configured, or whose folder is missing, is refused up front
    configured = {**script_env}
    configured.pop("DJ_STORES")
    line = one_error_line(run_mei("worker", "lab_pipeline.MEI", env=configured, cwd=cwd), "worker")
    assert "the store 'minio' of lab_pipeline.MEI (its MEI files) is not configured" in line
    configured["DJ_STORES"] = json.dumps({"minio": {"protocol": "file", "location": "/nowhere"}})
    line = one_error_line(run_mei("worker", "lab_pipeline.MEI", env=configured, cwd=cwd), "worker")
    assert "the folder /nowhere of the store 'minio' does not exist" in line

    # with the embedded server stopped, both say how to start it, in one line
    assert run_mei("db", "stop", env=env, cwd=cwd).returncode == 0
    for command in ("worker", "status"):
        line = one_error_line(run_mei(command, "lab_pipeline.MEI", env=env, cwd=cwd), command)
        assert "the embedded database in" in line and "is not running: `mei db start`" in line


def test_a_store_filling_up_stops_the_worker_with_one_line(lab):
    cwd, env = lab
    with small_disk("16k") as disk:  # room for a file or two
        stores = json.dumps({"minio": {"protocol": "file", "location": str(disk)}})
        script_env = {**env, **exported(run_mei("db", "env", env=env, cwd=cwd).stdout)}
        script_env["DJ_STORES"] = stores
        run_python(SETUP + METHOD_AND_SEED, env=script_env, cwd=cwd, timeout=300)
        worker = run_mei("worker", "lab_pipeline.MEI", env={**env, "DJ_STORES": stores}, cwd=cwd)
    # a full store fails every next key too: the batch in hand is recorded once, the worker
    # stops (exit status 1) instead of computing key after key for nothing
    assert worker.returncode == 1, worker.stderr
    assert "Traceback" not in worker.stderr
    line = worker.stderr.strip().splitlines()[-1]  # after the worker's log lines
    assert line.startswith("mei worker: error: the store 'minio' (file "), line
    assert str(disk) in line and "is full (no space left on the device" in line
    counts = status(env, cwd)
    assert counts["errors"] >= 1 and counts["reserved"] == 0  # nothing left reserved
    assert counts["done"] + counts["errors"] + counts["pending"] == 8


def test_a_module_that_configures_datajoint_itself_is_used(lab):
    """With nothing configured and mei's embedded server stopped, a table module that points
    DataJoint at a server when imported (labs' modules do) is still used."""
    cwd, env = lab
    data = cwd / "data"
    (cwd / "configured_lab.py").write_text(
        "import datajoint as dj\n"
        "dj.config['database.backend'] = 'postgresql'\n"
        f"dj.config['database.host'] = {str(data / 'postgres')!r}\n"
        "dj.config['database.port'] = 5432\n"
        "dj.config['database.user'] = 'postgres'\n"
        "dj.config['database.password'] = ''\n"
        f"dj.config['stores'] = {{'minio': {{'protocol': 'file', 'location': {str(data)!r}}}}}\n"
        "from lab_pipeline import *  # noqa\n"
    )
    elsewhere = base_env(cwd / "no-server-here")
    result = run_mei("status", "configured_lab.MEI", "--json", env=elsewhere, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 0
    plain = run_mei("status", "lab_pipeline.MEI", env=elsewhere, cwd=cwd)
    line = one_error_line(plain, "status")
    assert f"the embedded database in {cwd / 'no-server-here'} is not running" in line
    assert not (cwd / "no-server-here").exists()  # looking created nothing
