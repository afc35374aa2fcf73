"""DataJoint 2.x against a real server: PostgreSQL by default, MySQL/MariaDB with
``MEI_TEST_BACKEND=mysql``.

The server address comes from DataJoint's environment variables (``DJ_HOST``, ``DJ_PORT``,
``DJ_USER``, ``DJ_PASS``); where they are unset the local development servers are assumed
(``127.0.0.1``, user ``postgres`` or ``root``, no password). mei's own tables go to one schema
per session; every test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os

import datajoint as dj
import pytest
from mei_testkit import unavailable, unique_name

BACKEND = os.environ.get("MEI_TEST_BACKEND", "postgresql")
if BACKEND not in ("postgresql", "mysql"):
    raise ValueError(f"MEI_TEST_BACKEND must be 'postgresql' or 'mysql', got {BACKEND!r}")
_DEFAULTS = {
    "postgresql": {"port": 5432, "user": "postgres"},
    "mysql": {"port": 3306, "user": "root"},
}[BACKEND]


def pytest_report_header(config):
    return f"mei DataJoint 2.x tests: backend {BACKEND}"


def _configure(store_dir) -> None:
    dj.config["database.backend"] = BACKEND
    dj.config["database.host"] = os.environ.get("DJ_HOST", "127.0.0.1")
    dj.config["database.port"] = int(os.environ.get("DJ_PORT", _DEFAULTS["port"]))
    dj.config["database.user"] = os.environ.get("DJ_USER", _DEFAULTS["user"])
    dj.config["database.password"] = os.environ.get("DJ_PASS", "")
    dj.config["database.use_tls"] = False
    dj.config["stores"] = {"minio": {"protocol": "file", "location": str(store_dir)}}


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """The file-protocol store named ``minio``."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def connection(store):
    _configure(store)
    try:
        conn = dj.conn(reset=True)
        conn.ping()
    except Exception as e:  # any failure to connect: report the server, never credentials
        host, port = dj.config["database.host"], dj.config["database.port"]
        unavailable(f"no {BACKEND} server at {host}:{port} ({type(e).__name__})")
    return conn


@pytest.fixture(scope="session")
def mei_main(connection):
    """mei.main with MEIMethod and MEISeed in a schema of this session, dropped at its end."""
    import mei.main

    mei.main.activate(unique_name("mei_test_core"))
    yield mei.main
    mei.main.schema.drop(prompt=False)


@pytest.fixture
def schema(mei_main):
    """A fresh schema for the test's own tables; mei's tables are emptied afterwards."""
    schema = dj.Schema(unique_name("mei_test"))
    yield schema
    schema.drop(prompt=False)
    mei_main.MEIMethod().delete_quick()
    mei_main.MEISeed().delete_quick()
