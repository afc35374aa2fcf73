"""The benchmark commands that are run on a lent GPU machine, run here on the CPU: a GPU
session is short, so the command must work unchanged the first time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import database_testkit
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.generation(2)
def test_the_gpu_command_runs_every_figure_on_the_cpu(connection):
    server = database_testkit.session_server()
    assert server is not None  # the connection fixture skipped otherwise
    env = {**os.environ, **server.env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--device", "cpu", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["figure"] for line in lines] == [
        "single",
        *["batch"] * 2,
        *["overhead"] * 2,
        "populate",
    ]
    assert all(line["device"] == "cpu" and line["steps"] == 5 for line in lines)
    single = lines[0]
    assert single["engine_ms_per_step"] > 0 and single["minimal_ms_per_step"] > 0
    populate = lines[-1]
    assert "skipped" not in populate, populate
    assert populate["neurons"] == 4 and populate["database"].endswith("(DJ_HOST)")
    for mode in ("unbatched", "batched"):
        per_key = populate[f"{mode}_ms_per_key"]
        assert 0 <= populate[f"overhead_ms_per_key_{mode}"] < per_key
        assert populate[f"{mode}_meis_per_min"] == pytest.approx(60e3 / per_key)
