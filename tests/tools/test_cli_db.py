"""``mei db``: its own help per action, the settings it prints (database and local store), and
how much it says."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from tools_testkit import (
    base_env,
    require_datajoint2,
    require_embedded,
    run_mei,
    shared_directory,
    stop_embedded,
)

ROOT = os.geteuid() == 0


def test_each_action_has_its_own_help_and_the_help_says_where_the_data_is(tmp_path):
    env = base_env(tmp_path / "here", COLUMNS="1000")  # argparse wraps (and breaks at "-")
    db = run_mei("db", "--help", env=env, cwd=tmp_path)
    start = run_mei("db", "start", "--help", env=env, cwd=tmp_path)
    assert db.returncode == start.returncode == 0
    assert start.stdout != db.stdout
    assert start.stdout.startswith("usage: mei db start")
    assert "keeps running until `mei db stop`" in " ".join(start.stdout.split())
    text = " ".join(db.stdout.split())
    for action in ("start", "stop", "status", "env"):
        assert f"{action} " in text
    assert "/var/lib/mei as root" in text and f"here: {tmp_path / 'here'}" in text
    demo = " ".join(run_mei("demo", "--help", env=env, cwd=tmp_path).stdout.split())
    assert "/var/lib/mei as root" in demo


def exported(output: str) -> dict[str, str]:
    """The variables of ``export NAME=value`` lines, as a shell would read them."""
    values = {}
    for line in output.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


def test_env_configures_the_database_and_a_local_store_that_exists(tmp_path):
    require_datajoint2()
    data = tmp_path / "data"
    result = run_mei("db", "env", env=base_env(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    variables = exported(result.stdout)
    assert variables["DJ_BACKEND"] == "postgresql"
    assert variables["DJ_HOST"] == str(data / "postgres")
    assert variables["DJ_IGNORE_CONFIG_FILE"] == "true"
    stores = json.loads(variables["DJ_STORES"])
    assert stores == {"minio": {"protocol": "file", "location": str(data / "store")}}
    assert (data / "store").is_dir()  # DataJoint refuses a store folder that does not exist
    assert '\n# export DJ_STORES=\'{"minio": {"protocol": "s3"' in result.stdout  # a lab's MinIO
    # what a shell gets from `eval "$(mei db env)"`, and DataJoint reads it without a warning
    code = (
        'eval "$(python -m mei db env)" && python -W default -c "import datajoint as dj; '
        "print(dj.config['stores']['minio']['location'], dj.config['database.host'])\""
    )
    shell = subprocess.run(
        ["bash", "-c", code],
        env={**base_env(data), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == [str(data / "store"), str(data / "postgres")]
    assert "No datajoint.json found" not in shell.stderr


def test_start_says_once_what_it_does_as_root_and_status_says_how_long_it_runs():
    require_embedded()
    with shared_directory() as directory:
        env = base_env(directory / "data")
        try:
            first = run_mei("db", "start", env=env, cwd=directory)
            assert first.returncode == 0, first.stderr
            assert first.stdout.startswith("started")
            assert ("running as root" in first.stderr) == ROOT
            status = run_mei("db", "status", env=env, cwd=directory)
            assert status.returncode == 0
            assert "kept running until `mei db stop`" in status.stdout
            assert f"local store: 'minio' in {directory / 'data' / 'store'}" in status.stdout
            assert run_mei("db", "stop", env=env, cwd=directory).stdout.strip() == "stopped"
            again = run_mei("db", "start", env=env, cwd=directory)
            assert again.returncode == 0 and again.stdout.startswith("started")
            assert "running as root" not in again.stderr  # said when the cluster was made
            assert "created the data directory" not in again.stderr
        finally:
            stop_embedded(directory / "data")
