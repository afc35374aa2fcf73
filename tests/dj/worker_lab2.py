"""The lab pipeline as a worker process imports it: configured from the environment.

``MEI_TEST_CONFIG`` (JSON) holds the DataJoint settings and schema names the test used, so a
worker started with ``mei worker worker_lab2.MEI`` binds the same tables.
"""

import json
import os

import datajoint as dj
import lab2

import mei.main

_config = json.loads(os.environ["MEI_TEST_CONFIG"])
for _name, _value in _config["dj"].items():
    dj.config[_name] = _value
mei.main.activate(_config["core_schema"])
_tables = lab2.declare(dj.Schema(_config["schema"]))
MEI = _tables.MEI
