"""Collect the test folders the environment can run.

``tests/engine`` and ``tests/tools`` are always collected (the tools tests that need DataJoint
2.x skip themselves without it). ``tests/pipeline`` needs DataJoint, either generation (2.x,
or 0.14 with NNFabrik): its conftest picks the generation's lab and fixtures.
"""

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# tests/mei_testkit.py is shared by the pipeline and tools tests.
sys.path.insert(0, str(Path(__file__).parent))

try:
    _DJ_MAJOR = int(version("datajoint").split(".")[0])
except PackageNotFoundError:
    _DJ_MAJOR = None

collect_ignore = ["pipeline"] if _DJ_MAJOR is None else []


def pytest_report_header(config):
    found = "not installed" if _DJ_MAJOR is None else version("datajoint")
    return f"datajoint: {found}; skipped test folders: {', '.join(collect_ignore) or 'none'}"
