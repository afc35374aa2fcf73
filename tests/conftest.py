"""Collect the DataJoint tests that fit the installed DataJoint generation.

``tests/dj`` needs DataJoint 2.x, ``tests/dj014`` DataJoint 0.14 (with NNFabrik); a virtual
environment has one or the other, or neither (then only the engine tests run).
"""

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# tests/mei_testkit.py is shared by both DataJoint test folders.
sys.path.insert(0, str(Path(__file__).parent))

try:
    _DJ_MAJOR = int(version("datajoint").split(".")[0])
except PackageNotFoundError:
    _DJ_MAJOR = None

if _DJ_MAJOR is None:
    collect_ignore = ["dj", "dj014"]
elif _DJ_MAJOR >= 2:
    collect_ignore = ["dj014"]
else:
    collect_ignore = ["dj"]


def pytest_report_header(config):
    found = "not installed" if _DJ_MAJOR is None else version("datajoint")
    return f"datajoint: {found}; skipped test folders: {', '.join(collect_ignore)}"
