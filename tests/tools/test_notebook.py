"""The notebooks in examples/ run top to bottom, and are kept without outputs.

``examples/mei_in_a_notebook.ipynb`` is executed as Jupyter would (a real IPython kernel, via
``nbclient``) in a copy of ``examples/``, on the embedded database of a data directory of its
own, with no database configured: what a lab member gets who starts Jupyter in a clone.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from tools_testkit import (
    DJ_VARIABLES,
    REPO,
    require_embedded,
    shared_directory,
    stop_embedded,
)

NOTEBOOKS = sorted((REPO / "examples").glob("*.ipynb"))


def test_there_is_a_notebook():
    assert REPO / "examples" / "mei_in_a_notebook.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebooks_have_no_outputs(path):
    """Outputs are results of one run on one machine: they do not belong in the repository."""
    notebook = json.loads(path.read_text())
    for number, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name}, cell {number}: clear its outputs"
        assert cell.get("execution_count") is None, f"{path.name}, cell {number}: execution count"
    assert "widgets" not in notebook["metadata"], f"{path.name}: widget state in its metadata"


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    return "".join(output.get("data", {}).get("text/plain", ""))


def test_the_notebook_runs_top_to_bottom(monkeypatch):
    require_embedded()
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    with shared_directory() as clone:
        shutil.copytree(REPO / "examples", clone / "examples")
        data = clone / "data"
        # the kernel inherits this environment: no database configured, a data directory of
        # this test's own, mei from this checkout
        for name in DJ_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name in ("MEI_QUIET", "MEI_SCHEMA_NAME", "MEI_EMBEDDED_USER", "LAB_SCHEMA"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MEI_DATA_DIR", str(data))
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        notebook = nbformat.read(clone / "examples" / "mei_in_a_notebook.ipynb", as_version=4)
        client = nbclient.NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(clone / "examples")}},
        )
        try:
            client.execute()
        finally:
            stop_embedded(data)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        texts = ["".join(_text(o) for o in cell.outputs) for cell in code]
        kinds = [{k for o in cell.outputs for k in o.get("data", {})} for cell in code]
        everything = "\n".join(texts)
        for word in ("Traceback", "Error", "Warning"):  # what a lab member would see
            assert word not in everything, everything[-3000:]
        # the database: the embedded one, with its store
        assert "DataJoint will use postgresql and the store" in everything
        # populate with the notebook's own bar (a widget: ipywidgets is installed) and all done
        populate = next(i for i, cell in enumerate(code) if "MEI().populate(" in cell.source)
        assert "application/vnd.jupyter.widget-view+json" in kinds[populate], kinds[populate]
        assert "MEI: 8 of 8 computed" in texts[populate]
        assert "text/html" in kinds[populate]  # the table, as DataJoint shows it
        # the MEIs inline, each like its neuron's filter
        pictures = [i for i, k in enumerate(kinds) if "image/png" in k]
        assert len(pictures) == 2, kinds
        lowest = float(everything.split("lowest correlation with the filter:")[1].split()[0])
        assert lowest > 0.9
        # the second populate computes nothing, and shows no bar
        assert "0 MEIs computed now, 8 of 8 in the table" in texts[-2]
        assert "application/vnd.jupyter.widget-view+json" not in kinds[-2]
        assert "stopped" in texts[-1]
        assert not (data / "postgres" / "postmaster.pid").exists()
