"""The pipeline scenarios against a real server, on the installed DataJoint generation.

One scenario suite runs in three setups:

- DataJoint 2.x on PostgreSQL (``MEI_TEST_BACKEND=postgresql``, the default),
- DataJoint 2.x on MySQL/MariaDB (``MEI_TEST_BACKEND=mysql``),
- DataJoint 0.14 with real NNFabrik 0.2.1 tables on MySQL/MariaDB.

The generation comes from ``mei.dj.backend.backend().generation`` (2 or 0). The server is the
one DataJoint's environment variables name (2.x: ``DJ_HOST``, ``DJ_PORT``; 0.14: ``DJ_HOST``
as ``host:port``; both ``DJ_USER``, ``DJ_PASS``); without ``DJ_HOST``, on DataJoint 2.x, an
embedded PostgreSQL started for the session (``tests/database_testkit.py``). A server that is
not named is never assumed.

Fixtures (the same names and meaning on both generations):

``store``       session: the ``Path`` of the file-protocol store named ``minio``
``connection``  session: the DataJoint connection
``mei_main``    session: ``mei.main`` activated in a schema unique to the session, dropped at
                its end (on 0.14 that is NNFabrik's core schema, where the original library
                kept ``MEIMethod`` and ``MEISeed``)
``schema``      a fresh, unique ``dj.Schema`` per test, dropped afterwards; ``MEIMethod`` and
                ``MEISeed`` are emptied
``lab``         the lab's tables declared in ``schema`` (2.x: the hand-written lab of
                ``lab2.py``; 0.14: NNFabrik tables, ``lab014.py``), filled with one dataset of
                ``N_UNITS`` neurons and trained models: see :func:`labs.build`
``make_lab``    ``make_lab(**options)`` builds the lab with other options (:func:`labs.build`)

Tests for one generation only are marked ``@pytest.mark.generation(2)`` or
``@pytest.mark.generation(0)`` and skip on the other.

On 0.14 this is also the recipe for NNFabrik 0.2.1 on Python 3.11 that the docs give users:
alias ``collections.Iterable/Mapping/Sequence`` to ``collections.abc`` before importing it;
``gitpython`` installed; ``dj.config["database.use_tls"] = False`` for a server without TLS
(PyMySQL 1.2); choose NNFabrik's core schema name before importing ``nnfabrik.main``, which
connects and declares it at import.
"""

from __future__ import annotations

import os

import database_testkit
import datajoint as dj
import labs
import pytest
from mei_testkit import unavailable, unique_name

from mei.dj.backend import backend

GENERATION = backend().generation
BACKEND = database_testkit.backend_under_test()
if GENERATION == 0:
    labs.alias_collections()
_NAMES = {2: "DataJoint 2.x", 0: "DataJoint 0.14"}


def pytest_report_header(config):
    return f"mei pipeline tests: {_NAMES[GENERATION]} ({dj.__version__}) on {BACKEND}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "generation(n): the test needs DataJoint generation n (2: 2.x, 0: 0.14)"
    )
    if GENERATION == 0:
        # DataJoint 0.14 uses pyparsing names that newer pyparsing deprecates, thousands of
        # times.
        config.addinivalue_line("filterwarnings", "ignore:.*deprecated.* use:DeprecationWarning")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("generation")
        if marker is not None and GENERATION not in marker.args:
            wanted = " or ".join(_NAMES[g] for g in marker.args)
            item.add_marker(pytest.mark.skip(reason=f"needs {wanted}, found {dj.__version__}"))


def _configure(store_dir) -> str:
    """Point DataJoint at the test server and store; return a description of the server."""
    server = database_testkit.session_server()
    if server is None:
        unavailable(database_testkit.why_unavailable())
    env = server.env
    dj.config["database.user"] = env["DJ_USER"]
    dj.config["database.password"] = env["DJ_PASS"]
    dj.config["database.use_tls"] = False
    dj.config["stores"] = {"minio": {"protocol": "file", "location": str(store_dir)}}
    dj.config["database.host"] = env["DJ_HOST"]
    if GENERATION == 2:
        dj.config["database.backend"] = env["DJ_BACKEND"]
        dj.config["database.port"] = int(env["DJ_PORT"])
    else:
        dj.config["safemode"] = False
    return server.description


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """The file-protocol store named ``minio``."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def connection(store):
    where = _configure(store)
    try:
        conn = dj.conn(reset=True)
        conn.ping()
    except Exception as e:  # any failure to connect: report the server, never credentials
        unavailable(f"cannot reach {where} ({type(e).__name__})")
    return conn


@pytest.fixture(scope="session")
def nnfabrik_main(connection):
    """0.14: ``nnfabrik.main`` with its core schema (and mei's tables) unique to the session."""
    if GENERATION != 0:
        pytest.skip(f"NNFabrik needs DataJoint 0.14, found {dj.__version__}")
    os.environ.pop("MEI_SCHEMA_NAME", None)
    dj.config["nnfabrik.schema_name"] = unique_name("mei_test_nnfabrik_core")
    with pytest.warns(DeprecationWarning, match="nnfabrik.schema_name"):
        import nnfabrik.main
    yield nnfabrik.main
    nnfabrik.main.schema.drop(force=True)


@pytest.fixture(scope="session")
def mei_main(request, connection):
    """``mei.main`` with ``MEIMethod`` and ``MEISeed`` in a schema of this session, dropped at
    its end. On 0.14 they find their default schema, NNFabrik's core schema, as with the
    original library."""
    if GENERATION == 0:
        request.getfixturevalue("nnfabrik_main")  # drops the core schema with mei's tables
        import mei.main

        yield mei.main
        return
    import mei.main

    mei.main.activate(unique_name("mei_test_core"))
    yield mei.main
    mei.main.schema.drop(prompt=False)


@pytest.fixture
def schema(mei_main):
    """A fresh schema for the test's own tables; mei's tables are emptied afterwards."""
    schema = dj.Schema(unique_name("mei_test"))
    yield schema
    backend().drop_schema(schema)
    mei_main.MEIMethod().delete_quick()
    mei_main.MEISeed().delete_quick()


@pytest.fixture
def make_lab(schema):
    """``make_lab(**options)``: the lab's tables in ``schema``, filled (:func:`labs.build`)."""
    built = []

    def make(**options):
        if built:
            raise RuntimeError("make_lab builds one lab per test (one schema)")
        built.append(labs.build(schema, **options))
        return built[0]

    return make


@pytest.fixture
def lab(make_lab):
    """The lab with one dataset of ``N_UNITS`` neurons; a fitting and a diverging trainer;
    models trained for seeds 1 and 2 with each (see :func:`labs.build`)."""
    return make_lab()
