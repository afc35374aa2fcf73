"""``mei status``: how far a computed table's populate has come, from its jobs table."""

from __future__ import annotations

import json
import textwrap

import pytest
from tools_testkit import (
    base_env,
    require_datajoint2,
    require_server,
    run_mei,
    run_python,
    shared_directory,
    unique_name,
)

LAB = """
import os

import datajoint as dj

schema = dj.Schema(os.environ["LAB_SCHEMA"])


@schema
class Item(dj.Manual):
    definition = '''
    item : int32
    '''


@schema
class Square(dj.Computed):
    definition = '''
    -> Item
    ---
    square : int32
    '''

    def make(self, key):
        if key["item"] % 5 == 4:
            raise ValueError(f"item {key['item']} is unlucky")
        self.insert1(dict(key, square=key["item"] ** 2))
"""

SETUP = """
import lab

lab.Item().insert([{"item": i} for i in range(10)])
# items 0..5 by a worker: 4 fails, the others are done
lab.Square().populate("item < 6", reserve_jobs=True, suppress_errors=True)
# 6..9 wait in the queue; a worker has just taken 6
lab.Square.jobs.refresh()
assert lab.Square.jobs.reserve({"item": 6})
"""


@pytest.fixture
def lab(tmp_path):
    settings = require_server()
    schema = unique_name("mei_status_test")
    (tmp_path / "lab.py").write_text(textwrap.dedent(LAB))
    env = base_env(tmp_path / "data", **settings, LAB_SCHEMA=schema)
    try:
        yield tmp_path, env
    finally:
        run_python("import lab; lab.schema.drop(prompt=False)", env=env, cwd=tmp_path)


def test_status_counts_done_pending_reserved_and_errors(lab):
    cwd, env = lab
    run_python(SETUP, env=env, cwd=cwd)
    result = run_mei("status", "lab.Square", "--json", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "table": "lab.Square",
        "total": 10,
        "done": 5,
        "pending": 3,
        "reserved": 1,
        "errors": 1,
        "ignored": 0,
    }
    text = run_mei("status", "lab.Square", "--errors", env=env, cwd=cwd)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("lab.Square (")
    assert lines[1].split() == ["total", "10", "keys", "to", "compute"]
    assert lines[2].split()[:2] == ["done", "5"] and lines[5].split()[:2] == ["errors", "1"]
    assert "error {'item': 4}: ValueError: item 4 is unlucky" in text.stdout


def test_clear_errors_returns_the_failed_keys_to_the_queue(lab):
    cwd, env = lab
    run_python(SETUP, env=env, cwd=cwd)
    result = run_mei("status", "lab.Square", "--clear-errors", "--json", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["cleared_errors"] == 1
    assert (counts["errors"], counts["pending"], counts["reserved"]) == (0, 4, 1)
    # the key is computed again (and fails again: it is unlucky)
    run_python(
        "import lab; lab.Square().populate('item = 4', reserve_jobs=True, suppress_errors=True)",
        env=env,
        cwd=cwd,
    )
    again = run_mei("status", "lab.Square", "--json", env=env, cwd=cwd)
    assert json.loads(again.stdout)["errors"] == 1
    text = run_mei("status", "lab.Square", "--clear-errors", env=env, cwd=cwd)
    assert text.stdout.startswith("cleared 1 error job(s): workers compute those keys again")


def test_status_before_any_populate_reads_no_jobs_and_creates_none(lab):
    cwd, env = lab
    run_python("import lab; lab.Item().insert1({'item': 1})", env=env, cwd=cwd)
    result = run_mei("status", "lab.Square", "--json", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert (counts["total"], counts["done"], counts["pending"]) == (1, 0, 1)
    check = run_python(
        "import lab; from datajoint.jobs import Job; print(Job(lab.Square()).is_declared)",
        env=env,
        cwd=cwd,
    )
    assert check.stdout.strip().splitlines()[-1] == "False"


def test_status_errors_are_clear(lab):
    cwd, env = lab
    cases = {
        "lab.Nope": "cannot import the table 'lab.Nope': module 'lab' has no attribute 'Nope'",
        "nolab.Square": "cannot import the table 'nolab.Square'",
        "lab.Item": "lab.Item is not a computed DataJoint table (it has no populate())",
    }
    for table, message in cases.items():
        result = run_mei("status", table, env=env, cwd=cwd)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("mei status: error: ") and message in last
        assert "Traceback" not in result.stderr


def test_status_on_a_stopped_embedded_database_says_how_to_start_it():
    require_datajoint2()
    with shared_directory() as directory:
        env = base_env(directory / "data")
        result = run_mei("status", "lab.Square", "--database", "embedded", env=env, cwd=directory)
        assert not (directory / "data").exists()  # looking created nothing
    assert result.returncode == 1
    assert "the embedded database in" in result.stderr and "`mei db start`" in result.stderr
