"""``mei demo`` end to end: the seed workflow on the bundled model, with answers to check.

Against the embedded database (no database configured: mei starts its own PostgreSQL in the
data directory, and reuses it on the next run) and against the configured server (DataJoint's
environment variables). Every neuron's MEI must correlate >= 0.9 with its true filter.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys

import pytest
from tools_testkit import (
    base_env,
    parse_summary,
    png_size,
    require_datajoint2,
    require_embedded,
    require_server,
    run_mei,
    run_python,
    shared_directory,
    small_disk,
    stop_embedded,
    unique_name,
)

N_NEURONS = 32

LOAD_MODEL = """
import datajoint as dj, torch
import mei.cli.demo_pipeline as demo
dj.config["stores"] = {{"mei_demo": {{"protocol": "file", "location": "{store}"}}}}
demo.activate("{schema}", store="mei_demo")
key = {{"dataset_id": 0, "model_seed": 1}}
loaders, model = demo.TrainedModel().load_model(key)
images, responses = next(iter(loaders["train"]["v1"]))
assert images.shape == (16, 1, 32, 32) and responses.shape == (16, 32)
bare = demo.TrainedModel().load_model(key, include_dataloader=False, include_state_dict=False)
assert bare.filters.shape == model.filters.shape
assert not torch.equal(bare.filters, model.filters)
[ensemble] = demo.TrainedEnsembleModel().keys()
_, ensemble_model = demo.TrainedEnsembleModel().load_model(ensemble)
torch.testing.assert_close(ensemble_model(images), (model(images) + demo.TrainedModel().load_model(
    {{"dataset_id": 0, "model_seed": 2}}, include_dataloader=False)(images)) / 2)
"""
ROOT = os.geteuid() == 0


def check_demo_output(result, out_dir) -> dict[int, tuple[str, float, float]]:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    summary = parse_summary(result.stdout)
    assert sorted(summary) == list(range(N_NEURONS))
    kinds = [summary[n][0] for n in range(N_NEURONS)]
    assert kinds == ["gabor"] * 24 + ["ON center", "OFF center"] * 4
    for neuron, (_, score, r) in summary.items():
        assert r >= 0.9, f"neuron {neuron}: correlation {r}"
        # softplus(0.5 * 10 * |w| - 1) with |w| a little over 1 for the noisy fitted models
        assert 3.5 < score < 4.3, f"neuron {neuron}: score {score}"
    # 32 pairs, 8 per row: 8 rows of tiles (150 pixels and a two-line title of 40), the
    # figure's title (40) and a one-line caption (25)
    assert png_size(out_dir / "meis.png") == (8 * 150, 8 * 190 + 40 + 25)
    assert png_size(out_dir / "traces.png") == (600, 350)
    return summary


def test_demo_on_the_embedded_database_and_again_reusing_it():
    require_embedded()
    with shared_directory() as directory:
        data = directory / "data"
        env = base_env(data)
        try:
            first = run_mei("demo", "--quick", "--out", "first", env=env, cwd=directory)
            summary = check_demo_output(first, directory / "first")
            assert "mei demo: using the embedded PostgreSQL database (started;" in first.stderr
            assert "populating MEI: 32 of 32 neurons to compute" in first.stderr
            assert f"local file store 'minio' in {data / 'store'}" in first.stderr
            assert any((data / "store").rglob("*.pth.tar"))
            cluster = data / "postgres"
            if ROOT:  # the server ran as an existing account, and mei said so, once
                assert first.stderr.count("runs as the existing account 'postgres'") == 1
                assert "no system user is created" in first.stderr
                assert pwd.getpwuid(cluster.stat().st_uid).pw_name == "postgres"
                assert stat.S_IMODE(directory.stat().st_mode) == 0o755  # untouched
            # the server was stopped on the way out
            status = run_mei("db", "status", env=env, cwd=directory)
            assert status.returncode == 3 and status.stdout.startswith("not running")
            created = (cluster / "PG_VERSION").stat().st_mtime_ns

            # the second run computes nothing; a stricter threshold than the MEIs meet fails it
            second = run_mei(
                "demo",
                "--quick",
                "--out",
                "second",
                "--min-correlation",
                "0.9999",
                env=env,
                cwd=directory,
            )
            assert "populating MEI: 0 of 32 neurons to compute" in second.stderr
            assert "running as root" not in second.stderr  # said when the cluster was made
            assert parse_summary(second.stdout) == summary
            assert second.returncode == 1 and "Traceback" not in second.stderr
            assert (
                "mei demo: error: 32 MEI(s) correlate less than 0.9999 with their neuron's "
                "filter: neurons 0, 1, 2," in second.stderr
            )
            assert png_size(directory / "second" / "meis.png") == (8 * 150, 8 * 190 + 40 + 25)
            assert (cluster / "PG_VERSION").stat().st_mtime_ns == created
        finally:
            stop_embedded(data)


def test_demo_on_the_configured_server():
    settings = require_server()
    schema = unique_name("mei_demo_test")
    with shared_directory() as directory:
        env = base_env(directory / "data", **settings)
        try:
            result = run_mei(
                "demo", "--quick", "--schema", schema, "--out", "out", env=env, cwd=directory
            )
            check_demo_output(result, directory / "out")
            backend, host = settings["DJ_BACKEND"], settings["DJ_HOST"]
            assert (
                f"using the configured database ({backend} at {host}, from the environment "
                "variable DJ_HOST)" in result.stderr
            )
            assert f"tables in the schema {schema!r}, methods and seeds in '{schema}_methods'" in (
                result.stderr
            )
            assert not (directory / "data" / "postgres").exists()  # no embedded server
            if settings["DJ_PASS"]:
                assert settings["DJ_PASS"] not in result.stdout + result.stderr
            # the demo's tables work as a lab's would: NNFabrik-style load_model
            run_python(
                LOAD_MODEL.format(schema=schema, store=directory / "data" / "store"),
                env=env,
                cwd=directory,
            )
            stored = directory / "data" / "store" / "_schema" / schema
            assert len(list(stored.rglob("*.pth.tar"))) == 2 * N_NEURONS  # mei and output

            # --reset starts over: schemas dropped, their files removed, everything recomputed
            again = run_mei(
                "demo",
                "--quick",
                "--schema",
                schema,
                "--out",
                "again",
                "--reset",
                env=env,
                cwd=directory,
            )
            check_demo_output(again, directory / "again")
            assert f"dropped the schemas {schema}, {schema}_methods" in again.stderr
            assert f"removed the stored files in {stored}" in again.stderr
            assert "populating MEI: 32 of 32 neurons to compute" in again.stderr
            assert len(list(stored.rglob("*.pth.tar"))) == 2 * N_NEURONS
        finally:
            run_python(
                f"import mei.cli.demo_pipeline as d; d.drop({schema!r})",
                env=env,
                cwd=directory,
                timeout=120,
            )


def test_demo_as_root_with_an_unreachable_data_directory_says_what_to_do(tmp_path):
    if not ROOT:
        pytest.skip("what mei does as root (CI runs as root)")
    require_embedded()
    data = tmp_path / "data"  # under pytest's directory, which only root may enter
    result = run_mei("demo", "--quick", env=base_env(data), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("mei demo: error: ") == 1 and "Traceback" not in result.stderr
    assert "cannot reach its data directory" in result.stderr
    assert "export MEI_DATA_DIR=" in result.stderr
    assert not (data / "postgres").exists()


def test_two_demos_at_once_both_finish_and_the_last_stops_the_server():
    """The first demo to finish must not stop the server the other is using; the last one
    stops the server that a demo started."""
    require_embedded()
    with shared_directory() as directory:
        data = directory / "data"
        env = base_env(data)
        try:
            demos = [
                subprocess.Popen(
                    [sys.executable, "-m", "mei", "demo", *args, "--out", name],
                    env=env,
                    cwd=directory,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for name, args in (
                    ("long", ["--steps", "200", "--schema", "demo_long"]),
                    ("short", ["--quick", "--schema", "demo_short"]),
                )
            ]
            results = [demo.communicate(timeout=600) for demo in demos]
            for demo, (out, error) in zip(demos, results, strict=True):
                assert demo.returncode == 0, f"{demo.args}:\n{out}\n{error}"
                assert "Traceback" not in error
                assert len(parse_summary(out)) == N_NEURONS
            # they shared one server: one started it, the other found it running
            states = sorted("(started;" in error for _, error in results)
            assert states == [False, True], [error for _, error in results]
            status = run_mei("db", "status", env=env, cwd=directory)
            assert status.returncode == 3, status.stdout  # stopped by the last one out
        finally:
            stop_embedded(data)


def test_a_demo_never_stops_a_server_another_command_uses():
    """Deterministically: this test holds the server (as a running `mei worker` would) while
    a demo that did not start it ends; then it is the last one out and stops it."""
    require_embedded()
    from mei.cli.embedded import EmbeddedPostgres

    with shared_directory() as directory:
        data = directory / "data"
        env = base_env(data)
        server = EmbeddedPostgres(data)
        try:
            with server.session(start=True) as started:
                assert started and server.started_for_commands()
                result = run_mei("demo", "--quick", "--out", "out", env=env, cwd=directory)
                assert result.returncode == 0, result.stderr
                assert "(already running;" in result.stderr
                assert server.is_running()  # the demo left it to us
            assert not server.is_running()  # we were the last: stopped
            # a server started by `mei db start` is kept after any demo
            assert run_mei("db", "start", env=env, cwd=directory).returncode == 0
            result = run_mei("demo", "--quick", "--out", "out", env=env, cwd=directory)
            assert result.returncode == 0, result.stderr
            status = run_mei("db", "status", env=env, cwd=directory)
            assert status.returncode == 0 and "kept running until `mei db stop`" in status.stdout
        finally:
            stop_embedded(data)


def one_error_line(result, command: str = "demo") -> str:
    """The one line a failed command printed (exit status 1, no traceback)."""
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"mei {command}: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_wrong_out_is_refused_before_any_work(tmp_path):
    require_datajoint2()
    (tmp_path / "a-file").write_text("not a folder")
    data = tmp_path / "data"
    env = base_env(data)
    line = one_error_line(run_mei("demo", "--quick", "--out", "a-file", env=env, cwd=tmp_path))
    assert "--out a-file: is a file, not a folder; choose another --out" in line
    line = one_error_line(
        run_mei("demo", "--quick", "--out", "a-file/figures", env=env, cwd=tmp_path)
    )
    assert "--out a-file/figures: cannot write there" in line
    (tmp_path / "out" / "meis.png").mkdir(parents=True)  # a folder where a figure goes
    line = one_error_line(run_mei("demo", "--quick", "--out", "out", env=env, cwd=tmp_path))
    assert "out/meis.png is in the way" in line
    assert not data.exists()  # no database was touched: nothing was started or created


def test_schema_names_that_datajoint_rejects_are_refused_with_the_rule(tmp_path):
    data = tmp_path / "data"
    for name, suggestion in (("My-Demo", "my_demo"), ("1demo", "s_1demo"), ("x" * 60, None)):
        result = run_mei("demo", "--schema", name, env=base_env(data), cwd=tmp_path)
        line = one_error_line(result)
        assert f"the schema name {name!r} is not allowed: use lowercase letters, digits" in line
        assert "starting with a letter, at most 55 characters" in line  # room for _methods
        if suggestion:
            assert line.endswith(f"e.g. {suggestion!r}")
    assert not data.exists()


def test_a_data_directory_that_is_a_file_is_one_clear_line(tmp_path):
    require_embedded()
    (tmp_path / "data").write_text("oops")
    for args, command in ((["demo", "--quick"], "demo"), (["db", "start"], "db start")):
        line = one_error_line(
            run_mei(*args, env=base_env(tmp_path / "data"), cwd=tmp_path), command
        )
        assert f"the data directory {tmp_path / 'data'} is a file, not a directory" in line
        assert "MEI_DATA_DIR" in line
    line = one_error_line(
        run_mei("db", "start", env=base_env(tmp_path / "data" / "mei"), cwd=tmp_path), "db start"
    )
    assert f"{tmp_path / 'data'}, above the data directory {tmp_path / 'data' / 'mei'}," in line


def test_a_full_disk_for_the_database_is_one_clear_line(tmp_path):
    require_embedded()
    with small_disk("2m") as disk:
        result = run_mei("demo", "--quick", env=base_env(disk / "mei"), cwd=tmp_path)
        line = one_error_line(result)
        assert "no space left on the device" in line and "MEI_DATA_DIR" in line, line
        assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # nothing buried


def test_a_store_filling_during_populate_is_one_clear_line(tmp_path):
    settings = require_server()
    schema = unique_name("mei_demo_full")
    with small_disk("64k") as disk:
        stores = json.dumps({"minio": {"protocol": "file", "location": str(disk)}})
        env = base_env(tmp_path / "data", **settings, DJ_STORES=stores)
        try:
            result = run_mei("demo", "--quick", "--schema", schema, env=env, cwd=tmp_path)
            line = one_error_line(result)
            assert "no space left on" in line and "store" in line, line
        finally:
            run_python(
                f"import mei.cli.demo_pipeline as d; d.drop({schema!r})", env=env, cwd=tmp_path
            )
