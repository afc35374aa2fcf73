"""A worker process that dies (SIGKILL) inside its insert transaction, after storing files.

python fault_worker.py SCHEMA_NAME METHODS_SCHEMA_NAME  (DataJoint settings in $MEI_TEST_DJ)
"""

from __future__ import annotations

import json
import os
import signal
import sys

import datajoint as dj

for name, value in json.loads(os.environ["MEI_TEST_DJ"]).items():
    dj.config[name] = value

import run_path_lab  # noqa: E402

import mei.main  # noqa: E402

mei.main.activate(sys.argv[2])
lab = run_path_lab.declare(dj.Schema(sys.argv[1], create_schema=False), fill=False)


class MEI(lab.MEI):  # the same table; dies after the first row of a batch is staged
    def make_insert(self, key, *result):
        super().make_insert(key, *result)
        os.kill(os.getpid(), signal.SIGKILL)


MEI().populate(batch_size=4, reserve_jobs=True)
