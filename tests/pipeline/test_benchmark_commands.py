"""The script that is run on a lent GPU machine (scripts/gpu_session.sh: the CUDA tests and
benchmarks/gpu_suite.py), run here on the CPU: a GPU session is short, so the script must
work unchanged the first time."""

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
def test_the_gpu_session_script_runs_every_figure_on_the_cpu(connection, tmp_path):
    server = database_testkit.session_server()
    assert server is not None  # the connection fixture skipped otherwise
    env = {
        **os.environ,
        **server.env,
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "GPU_SUITE_ARGS": "--device cpu --quick",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", "scripts/gpu_session.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "CUDA tests: exit 0" in done.stdout  # all skipped here, none failed
    assert "profile_step: exit 0 (2 table(s))" in done.stdout  # engine and loop
    output = (tmp_path / "gpu_suite.jsonl").read_text()
    assert output.strip() in done.stdout  # the figures are printed too
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["figure"] for line in lines] == [
        "single",
        *["batch"] * 2,
        *["overhead"] * 2,
        *["jitter"] * 2,
        *["syncs"] * 4,
        "populate",
        *["populate_hour"] * 4,
    ]
    assert all(line["device"] == "cpu" and line["steps"] == 5 for line in lines)
    single = lines[0]
    assert single["engine_ms_per_step"] > 0 and single["minimal_ms_per_step"] > 0
    assert single["captured_ratio"] > 0  # the captured engine ran (eagerly, on the CPU)
    assert all(line["captured_throughput_vs_minimal"] > 0 for line in lines[1:5])
    jitter = lines[5]
    assert jitter["plain_ms_per_step"] > 0 and jitter["jitter_ms_per_step"] > 0
    syncs = [line for line in lines if line["figure"] == "syncs"]
    assert [s["config"] for s in syncs] == ["benchmark", "jitter", "target_fn", "original_ops"]
    assert all("needs CUDA" in s["skipped"] for s in syncs)  # each config ran on the CPU
    hours = [line for line in lines if line["figure"] == "populate_hour"]
    assert [(h["capture"], h["batch_size"]) for h in hours] == [
        (False, 4), (False, 8), (True, 4), (True, 8)
    ]  # fmt: skip
    for hour in hours:
        assert hour["window_steps"] == 6 and hour["target_steps"] == 1001
        assert 0 < hour["engine_s"] < hour["window_s"]
        at_target = hour["outside_engine_s"] + hour["engine_s"] * 1001 / 6
        assert hour["meis_per_hour"] == pytest.approx(3600 * hour["batch_size"] / at_target)
        assert 0 < hour["share_outside_engine"] < 1
    populate = lines[-5]
    assert "skipped" not in populate, populate
    assert populate["neurons"] == 4 and populate["database"].endswith("(DJ_HOST)")
    for mode in ("unbatched", "batched"):
        per_key = populate[f"{mode}_ms_per_key"]
        assert 0 <= populate[f"overhead_ms_per_key_{mode}"] < per_key
        assert populate[f"{mode}_meis_per_min"] == pytest.approx(60e3 / per_key)


@pytest.mark.generation(2)
def test_the_workers_benchmark_runs_quickly(connection):
    """benchmarks/workers_scaling.py --quick: 1 and 2 worker processes on one table of 8 keys,
    every key stored once in each round, and the queries per key counted."""
    server = database_testkit.session_server()
    assert server is not None  # the connection fixture skipped otherwise
    env = {**os.environ, **server.env, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "workers_scaling.py", "--quick", "--json"],
        cwd=ROOT / "benchmarks",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["workers"] for line in lines] == [1, 2]
    for line in lines:
        assert line["figure"] == "workers" and " cores, " in line["machine"]
        assert line["keys"] == 8 and line["errors"] == 0 and sum(line["keys_per_worker"]) == 8
        assert line["keys_per_min"] == pytest.approx(60 * 8 / line["seconds"])
        by_kind = line["queries_per_key_by_kind"]
        assert line["queries_per_key"] == pytest.approx(sum(by_kind.values()))
        assert by_kind["INSERT"] > 0 and by_kind["SELECT"] > 0  # the rows, the pending keys
        assert 0 < line["query_ms_per_key"] < 1e3 * line["seconds"] * line["workers"] / 8
    assert lines[0]["speedup"] == 1.0
