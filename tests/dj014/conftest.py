"""DataJoint 0.14 with real NNFabrik 0.2.1 tables against a MySQL/MariaDB server.

The server comes from ``DJ_HOST`` (``host:port``), ``DJ_USER``, ``DJ_PASS``; where unset the
local development server is assumed (``127.0.0.1:3306``, user ``root``, no password). This is
also the recipe for NNFabrik 0.2.1 on Python 3.11 that the docs give users:

- alias ``collections.Iterable/Mapping/Sequence`` to ``collections.abc`` before importing it;
- ``gitpython`` installed (``mei[nnfabrik]`` brings it);
- ``dj.config["database.use_tls"] = False`` for a server without TLS (PyMySQL 1.2);
- choose NNFabrik's core schema name before importing ``nnfabrik.main``, which connects and
  declares it at import.

mei's ``MEIMethod``/``MEISeed`` are left to find their default schema: NNFabrik's core schema,
as with the original library. That schema is unique to the session and dropped at its end;
every test builds its lab in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import collections
import collections.abc
import os

import datajoint as dj
import pytest
from mei_testkit import unavailable, unique_name

for _name in ("Iterable", "Mapping", "Sequence"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))


def pytest_report_header(config):
    return (
        f"mei DataJoint 0.14 tests: MySQL/MariaDB at {os.environ.get('DJ_HOST', '127.0.0.1:3306')}"
    )


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """The file-protocol store named ``minio``."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def connection(store):
    dj.config["database.host"] = os.environ.get("DJ_HOST", "127.0.0.1:3306")
    dj.config["database.user"] = os.environ.get("DJ_USER", "root")
    dj.config["database.password"] = os.environ.get("DJ_PASS", "")
    dj.config["database.use_tls"] = False
    dj.config["safemode"] = False
    dj.config["stores"] = {"minio": {"protocol": "file", "location": str(store)}}
    try:
        conn = dj.conn(reset=True)
        conn.ping()
    except Exception as e:  # any failure to connect: report the server, never credentials
        unavailable(f"no MySQL/MariaDB server at {dj.config['database.host']} ({type(e).__name__})")
    return conn


@pytest.fixture(scope="session")
def nnfabrik_main(connection):
    """``nnfabrik.main`` with its core schema (and mei's tables) unique to this session."""
    os.environ.pop("MEI_SCHEMA_NAME", None)
    dj.config["nnfabrik.schema_name"] = unique_name("mei_test_nnfabrik_core")
    with pytest.warns(DeprecationWarning, match="nnfabrik.schema_name"):
        import nnfabrik.main
    yield nnfabrik.main
    nnfabrik.main.schema.drop(force=True)


@pytest.fixture(scope="session")
def mei_main(nnfabrik_main):
    import mei.main

    return mei.main


@pytest.fixture
def nnf(mei_main, nnfabrik_main):
    """A lab's own NNFabrik tables in a fresh schema; mei's tables emptied afterwards."""
    module = nnfabrik_main.my_nnfabrik(unique_name("mei_test"), use_common_fabrikant=False)
    yield module
    module.schema.drop(force=True)
    mei_main.MEIMethod().delete_quick()
    mei_main.MEISeed().delete_quick()


def pytest_configure(config):
    # DataJoint 0.14 uses pyparsing names that newer pyparsing deprecates, thousands of times.
    config.addinivalue_line("filterwarnings", "ignore:.*deprecated.* use:DeprecationWarning")
