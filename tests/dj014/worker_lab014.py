"""The 0.14 + NNFabrik lab pipeline as a worker process imports it, configured from the
environment (``MEI_TEST_CONFIG``, JSON: DataJoint settings, NNFabrik core and lab schemas).

It follows the NNFabrik-on-Python-3.11 recipe of the README: collections aliases, TLS off,
core schema name chosen before ``nnfabrik.main`` is imported.
"""

import collections
import collections.abc
import json
import os

import datajoint as dj

for _name in ("Iterable", "Mapping", "Sequence"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

_config = json.loads(os.environ["MEI_TEST_CONFIG"])
for _name, _value in _config["dj"].items():
    dj.config[_name] = _value

import lab014  # noqa: E402
import nnfabrik.main  # noqa: E402

_nnf = nnfabrik.main.my_nnfabrik(_config["schema"], use_common_fabrikant=False)
MEI = lab014.declare(_nnf).MEI
