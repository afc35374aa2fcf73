"""Collect the test folders the environment can run, and find the database server.

``tests/engine`` and ``tests/tools`` are always collected (the tools tests that need DataJoint
2.x skip themselves without it). ``tests/pipeline`` and ``tests/examples`` need DataJoint,
either generation (2.x, or 0.14 with NNFabrik): the pipeline conftest picks the generation's lab
and fixtures. The server is the one ``DJ_HOST`` names, else an embedded PostgreSQL started for
the session (DataJoint 2.x): see ``database_testkit``.
"""

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# tests/mei_testkit.py is shared by the pipeline and tools tests.
sys.path.insert(0, str(Path(__file__).parent))

try:
    _DJ_MAJOR = int(version("datajoint").split(".")[0])
except PackageNotFoundError:
    _DJ_MAJOR = None

collect_ignore = ["pipeline", "examples"] if _DJ_MAJOR is None else []


def pytest_report_header(config):
    found = "not installed" if _DJ_MAJOR is None else version("datajoint")
    header = [f"datajoint: {found}; skipped test folders: {', '.join(collect_ignore) or 'none'}"]
    if os.environ.get("DJ_HOST"):
        header.append(f"database server: DJ_HOST={os.environ['DJ_HOST']}")
    else:
        header.append("database server: none named (DJ_HOST); an embedded PostgreSQL if needed")
    return header


def pytest_sessionfinish(session, exitstatus):
    import database_testkit

    database_testkit.shutdown()
