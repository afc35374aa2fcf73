"""The lab pipeline as a worker process imports it, configured from the environment.

``MEI_TEST_CONFIG`` (JSON) holds the DataJoint settings and schema names the test used
(:func:`worker_env`), so a worker started with ``mei worker worker_lab.MEI`` binds the same
tables, on either DataJoint generation.
"""

from __future__ import annotations

import json
import os

import datajoint as dj

_NAMES = {  # the settings a worker needs, per generation
    2: ("database.backend", "database.host", "database.port", "database.user"),
    0: ("database.host", "database.user", "nnfabrik.schema_name"),
}
_COMMON = ("database.password", "database.use_tls", "stores")


def worker_env(schema: dj.Schema, mei_main) -> dict[str, str]:
    """Environment variables for a worker process to bind the tables of ``schema``."""
    from mei.dj.backend import backend

    names = _NAMES[backend().generation] + _COMMON
    config = {
        "dj": {name: dj.config[name] for name in names},
        "schema": schema.database,
        "core_schema": mei_main.schema.database,
    }
    return {"MEI_TEST_CONFIG": json.dumps(config, default=str)}


if "MEI_TEST_CONFIG" in os.environ and __name__ != "__main__":
    _config = json.loads(os.environ["MEI_TEST_CONFIG"])
    for _name, _value in _config["dj"].items():
        dj.config[_name] = _value
    import labs

    from mei.dj.backend import backend

    if backend().generation == 2:
        import mei.main

        mei.main.activate(_config["core_schema"])
    # 0.14: mei's tables find NNFabrik's core schema (``nnfabrik.schema_name``) by default
    MEI = labs.declare(dj.Schema(_config["schema"])).MEI
