"""On DataJoint 0.14 mei's tables equal the original library's, and so do its hashes."""

from __future__ import annotations

from collections import OrderedDict

import datajoint as dj
import numpy as np
import pytest
import torch
from mei_testkit import METHOD_CONFIG, unique_name

from mei.dj.backend import backend
from mei.integration import hash_list_of_dictionaries, make_hash
from mei.main import CSRFV1ObjectiveTemplate, MEITemplate, TrainedEnsembleModelTemplate

pytestmark = pytest.mark.generation(0)

CONFIGS = [
    METHOD_CONFIG,
    {"b": 1, "a": [1, 2.5, "x"], "c": {"z": (1, None, True), 1: "one"}},
    OrderedDict([("b", 1), ("a", OrderedDict([("y", 2), ("x", 1)]))]),
    {"nested": [{"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": [1.0, 2.0]}}]},
    {"numpy": np.int64(3), "float": np.float32(0.5), "tensor_free": b"bytes"},
    [],
    "a string",
    42,
]


@pytest.mark.parametrize("obj", CONFIGS)
def test_make_hash_equals_nnfabrik(nnfabrik_main, obj):
    from nnfabrik.utility.dj_helpers import make_hash as nnfabrik_make_hash

    assert make_hash(obj) == nnfabrik_make_hash(obj)


def test_ensemble_hash_equals_the_original(nnfabrik_main):
    from nnfabrik.utility.dj_helpers import make_hash as nnfabrik_make_hash

    keys = [
        {"seed": 2, "model_hash": "b"},
        {"seed": 1, "model_hash": "a"},
        {"model_hash": "b", "seed": 2},
    ]
    by_hash = {nnfabrik_make_hash(k): k for k in keys}  # the original's recipe
    original = nnfabrik_make_hash([by_hash[h] for h in sorted(by_hash)])
    assert hash_list_of_dictionaries(keys) == original


# The original library's definitions (mei.mixins of sinzlab/mei, DataJoint 0.14).
ORIGINAL = {
    "MEIMethod": """
    method_fn                           : varchar(64)   # name of the method function
    method_hash                         : varchar(32)   # hash of the method config
    ---
    method_config                       : longblob      # method configuration object
    method_ts       = CURRENT_TIMESTAMP : timestamp     # UTZ timestamp at time of insertion
    method_comment                      : varchar(256)  # a short comment describing the method
    """,
    "MEISeed": """
    mei_seed    : int   # MEI seed
    """,
    "TrainedEnsembleModel": """
    -> Dataset
    ensemble_hash                   : char(32)      # the hash of the ensemble
    ---
    ensemble_comment        = ''    : varchar(256)  # a short comment describing the ensemble
    """,
    "MEI": """
    -> OriginalMEIMethod
    -> TrainedEnsembleModel
    -> Dataset
    -> OriginalMEISeed
    ---
    mei                 : attach@minio  # the MEI as a tensor
    score               : float         # some score depending on the used method function
    output              : attach@minio  # object returned by the method function
    """,
}


def _columns(table):
    return [
        (a.name, a.type, a.in_key, a.nullable, a.default, a.is_attachment, a.is_external, a.store)
        for a in table.heading.attributes.values()
    ]


def test_definitions_equal_the_original(connection, mei_main):
    schema = dj.Schema(unique_name("mei_test_compat"))
    try:

        @schema
        class Dataset(dj.Manual):
            definition = """
            dataset_id : int
            """

        @schema
        class OriginalMEIMethod(dj.Lookup):
            definition = ORIGINAL["MEIMethod"]

        @schema
        class OriginalMEISeed(dj.Lookup):
            definition = ORIGINAL["MEISeed"]

        @schema
        class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
            dataset_table = Dataset
            trained_model_table = Dataset

        @schema
        class OriginalTrainedEnsembleModel(dj.Manual):
            definition = ORIGINAL["TrainedEnsembleModel"]

        @schema
        class MEI(MEITemplate):
            trained_model_table = TrainedEnsembleModel
            selector_table = Dataset

        @schema
        class OriginalMEI(dj.Computed):
            definition = ORIGINAL["MEI"]

        assert _columns(mei_main.MEIMethod()) == _columns(OriginalMEIMethod())
        assert _columns(mei_main.MEISeed()) == _columns(OriginalMEISeed())
        assert _columns(TrainedEnsembleModel()) == _columns(OriginalTrainedEnsembleModel())
        assert _columns(MEI()) == _columns(OriginalMEI())
        mei = MEI().heading.attributes["mei"]
        assert mei.is_attachment and mei.store == "minio"
    finally:
        backend().drop_schema(schema)


ORIGINAL_CSRF_V1 = """
-> Dataset
neuron_id       : smallint unsigned
---
neuron_position : smallint unsigned
session_id      : varchar(13)
"""


def test_csrf_v1_objective_equals_the_original(connection, mei_main):
    schema = dj.Schema(unique_name("mei_test_compat"))
    try:

        @schema
        class Dataset(dj.Manual):
            definition = """
            dataset_fn : varchar(64)
            dataset_hash : varchar(64)
            ---
            dataset_config : longblob
            """

        @schema
        class CSRFV1Objective(CSRFV1ObjectiveTemplate):
            dataset_table = Dataset

        @schema
        class OriginalCSRFV1Objective(dj.Manual):
            definition = ORIGINAL_CSRF_V1

        assert _columns(CSRFV1Objective()) == _columns(OriginalCSRFV1Objective())
    finally:
        backend().drop_schema(schema)


def test_stored_files_are_readable_as_the_original_wrote_them(connection, store, tmp_path):
    """A row written the original way (torch.save + attach) loads through load_mei."""
    schema = dj.Schema(unique_name("mei_test_compat"))
    try:

        @schema
        class Row(MEITemplate):
            definition = """
            row_id : int
            ---
            mei : attach@minio
            output : attach@minio
            """

        mei = torch.randn(1, 1, 4, 4)
        output = {"objective": {"times": [0, 1], "values": [0.5, 1.5]}}
        torch.save(mei, tmp_path / "mei_original.pth.tar")
        torch.save(output, tmp_path / "output_original.pth.tar")
        Row.insert1(
            {
                "row_id": 1,
                "mei": str(tmp_path / "mei_original.pth.tar"),
                "output": str(tmp_path / "output_original.pth.tar"),
            },
            allow_direct_insert=True,
        )
        assert torch.equal(Row().load_mei({"row_id": 1}), mei)
        assert Row().load_output({"row_id": 1}) == output
    finally:
        backend().drop_schema(schema)


def test_type_map():
    assert backend().generation == 0
    assert backend().type_map("minio") == {
        "int": "int",
        "uint16": "smallint unsigned",
        "float": "float",
        "blob": "longblob",
        "timestamp": "timestamp",
        "file": "attach@minio",
    }
