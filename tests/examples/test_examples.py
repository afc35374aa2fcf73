"""The examples in examples/ (the README's DataJoint workflow) on the installed DataJoint
generation: 2.x on the tests' server (PostgreSQL, MySQL/MariaDB or the embedded PostgreSQL),
0.14 on MySQL/MariaDB. Each runs as a user runs it, `python workflow.py` in the examples
folder, with DataJoint configured the way that generation reads its settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import database_testkit
import pytest
import torch
from mei_testkit import unavailable, unique_name

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GENERATION = database_testkit.generation()


@pytest.fixture
def lab(tmp_path):
    """A copy of examples/ configured for the tests' server, with schemas of its own (dropped
    afterwards); yields ``(folder, env)``."""
    server = database_testkit.session_server()
    if server is None:
        unavailable(database_testkit.why_unavailable())
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder)
    store = tmp_path / "store"
    store.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(
        LAB_SCHEMA=unique_name("mei_example_lab"),
        MEI_SCHEMA_NAME=unique_name("mei_example_core"),
        MEI_QUIET="1",
    )
    if GENERATION == 0:  # DataJoint 0.14 itself uses names that newer libraries deprecate
        env["PYTHONWARNINGS"] = "ignore"
    stores = {"minio": {"protocol": "file", "location": str(store)}}
    if GENERATION == 2:  # DataJoint 2.x reads its settings from the environment
        # complete settings, as `mei db env` gives (DataJoint then looks for no datajoint.json)
        env.update(server.env, DJ_STORES=json.dumps(stores), DJ_IGNORE_CONFIG_FILE="true")
    else:  # 0.14 reads no store or TLS setting from it: dj_local_conf.json in the folder
        (folder / "dj_local_conf.json").write_text(
            json.dumps(
                {
                    "database.host": server.env["DJ_HOST"],
                    "database.user": server.env["DJ_USER"],
                    "database.password": server.env["DJ_PASS"],
                    "database.use_tls": False,
                    "stores": stores,
                }
            )
        )
    try:
        yield folder, env
    finally:
        python(
            "import os, datajoint as dj, lab_pipeline\n"
            "from mei.dj.backend import backend\n"
            "backend().drop_schema(lab_pipeline.schema)\n"
            "core = os.environ['MEI_SCHEMA_NAME']\n"
            "if core in dj.list_schemas():\n"
            "    backend().drop_schema(dj.Schema(core, create_schema=False))\n",
            folder,
            env,
        )


def python(code: str, folder: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """``python -c code`` (or a script file) in ``folder``; it must succeed."""
    command = [sys.executable, *(args or ("-c", code))]
    result = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


def results(stdout: str) -> list[str]:
    """The workflow's own lines (not DataJoint's time-stamped log)."""
    return [line for line in stdout.splitlines() if line.startswith(("MEI:", "neuron "))]


def test_the_workflow_computes_each_neurons_mei_and_again_nothing(lab):
    folder, env = lab
    first = python("", folder, env, "workflow.py")
    assert "MEI: 8 of 8 computed" in first.stdout
    if GENERATION == 2:  # the example uses DataJoint 2.x's own types and API: no advice
        for advice in ("Native type", "DeprecationWarning", "No datajoint.json found"):
            assert advice not in first.stderr, first.stderr
    found = re.findall(
        r"neuron (\d+): score (\S+), correlation with its filter (\S+)", first.stdout
    )
    assert [int(n) for n, _, _ in found] == list(range(100, 108))
    for _, score, r in found:
        # the MEI is its neuron's filter: softplus(0.5 * 10 * |w| - 1) with |w| about 1
        assert float(r) > 0.9 and 3.0 < float(score) < 5.0, (score, r)

    # the second run finds every row and computes nothing: the same MEIs, the same rows
    count = "from lab_pipeline import MEI, TrainedModel; print(len(MEI()), len(TrainedModel()))"
    assert python(count, folder, env).stdout.split()[-2:] == ["8", "2"]
    second = python("", folder, env, "workflow.py")
    assert results(second.stdout) == results(first.stdout)
    assert python(count, folder, env).stdout.split()[-2:] == ["8", "2"]

    # mei status imports the example's table from the working directory and counts it
    status = subprocess.run(
        [sys.executable, "-m", "mei", "status", "lab_pipeline.MEI", "--json"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert (counts["total"], counts["done"], counts["pending"]) == (8, 8, 0)


CLEAR_ERRORS = {  # the README's one-liners, per generation
    2: "MEI().jobs.errors.delete_quick()",
    0: '(schema.jobs & {"table_name": MEI.table_name, "status": "error"}).delete_quick()',
}


def test_the_readme_one_liner_clears_error_jobs(lab):
    folder, env = lab
    readme = (REPO / "README.md").read_text()
    one_liner = CLEAR_ERRORS[GENERATION]
    assert f"`{one_liner}`" in readme
    code = f"""
import json
from lab_pipeline import MEI, Dataset, Selector, TrainedEnsembleModel, TrainedModel, schema
from mei.dj.backend import backend
from mei.main import MEIMethod, MEISeed

Dataset().insert1({{"dataset_id": 1, "n_images": 64}})
TrainedModel().populate()
TrainedEnsembleModel().create_ensemble({{"dataset_id": 1}})
Selector().populate()
MEIMethod().add_method("mei.methods.gradient_ascent", json.load(open("method.json")))
MEISeed().insert1({{"mei_seed": 1}})
queue = backend().jobs(MEI())
for key in queue.pending(backend().todo(MEI(), ()))[:2]:  # two keys fail
    assert queue.reserve(key)
    queue.error(key, "a failure", "a stack")
print("before", backend().jobs(MEI(), declare=False).counts()["error"])
{one_liner}
print("after", backend().jobs(MEI(), declare=False).counts()["error"])
"""
    out = python(code, folder, env).stdout.split()
    assert out[-4:] == ["before", "2", "after", "0"]


def test_the_custom_stoppers_step_cap_stops_a_model_that_never_gets_there():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from my_stoppers import EvaluationThreshold
    finally:
        sys.path.remove(str(EXAMPLES))
    from mei.methods import gradient_ascent

    config = {
        "device": "cpu",
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 1.0}},
        "stopper": {"path": "my_stoppers.EvaluationThreshold", "kwargs": {"threshold": 1e9}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
    }
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    sys.path.insert(0, str(EXAMPLES))
    try:
        for max_steps in (1, 37):
            config["stopper"]["kwargs"]["max_steps"] = max_steps
            _, score, output = gradient_ascent(None, model, config, seed=0, shape=(1, 1, 4, 4))
            steps = output["mei.objectives.EvaluationObjective"]["times"]
            assert len(steps) == max_steps  # exactly max_steps steps, like NumIterations
            assert score < 1e9
        # and a threshold that is reached stops it early
        config["stopper"]["kwargs"].update(threshold=-1e9, max_steps=1000)
        _, _, output = gradient_ascent(None, model, config, seed=0, shape=(1, 1, 4, 4))
        assert len(output["mei.objectives.EvaluationObjective"]["times"]) == 1
    finally:
        sys.path.remove(str(EXAMPLES))
    assert EvaluationThreshold(5.0).max_steps == 1000


@pytest.mark.skipif(GENERATION != 0, reason="the README's NNFabrik recipe is for DataJoint 0.14")
def test_the_readme_nnfabrik_recipe_runs_on_datajoint_014(tmp_path):
    server = database_testkit.session_server()
    if server is None:
        unavailable(database_testkit.why_unavailable())
    readme = (REPO / "README.md").read_text()
    [block] = re.findall(r"<!-- test: dj014 -->\n```python\n(.*?)```", readme, re.DOTALL)
    core = unique_name("mei_example_nnfabrik")
    assert '"my_nnfabrik_core"' in block
    code = block.replace('"my_nnfabrik_core"', repr(core))  # a schema of this test's own
    code += "\nimport nnfabrik.main\nprint(nnfabrik.main.schema.database)\n"
    code += "nnfabrik.main.schema.drop(force=True)\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(server.env, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == core
