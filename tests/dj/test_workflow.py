"""The issue's workflow end to end on DataJoint 2.x, and what happens when it goes wrong."""

from __future__ import annotations

import math

import lab2
import pytest
import torch
from mei_testkit import (
    METHOD_CONFIG,
    N_UNITS,
    check_mei,
    ensemble_unit,
    stored_files,
)

from mei.errors import NonFiniteError
from mei.integration import hash_list_of_dictionaries
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel, EnsembleModel

SEED = 42


def make_lab(schema):
    """Declare the lab's tables and train two seeds x two trainers on one dataset."""
    lab = lab2.declare(schema)
    lab.Dataset.insert1({"dataset_id": 1, "dataset_config": {"n_units": N_UNITS}})
    lab.Trainer.insert(
        [
            {"trainer_id": 1, "trainer_config": {}},
            {"trainer_id": 2, "trainer_config": {"diverge": True}},
        ]
    )
    lab.ModelSeed.insert([{"model_seed": 1}, {"model_seed": 2}])
    lab.TrainedModel.populate()
    return lab


def test_workflow_end_to_end(schema, mei_main, store):
    lab = make_lab(schema)
    ensemble_key = lab.TrainedEnsembleModel().create_ensemble(
        {"dataset_id": 1, "trainer_id": 1}, comment="My ensemble"
    )
    lab.Selector().populate()
    method_key = mei_main.MEIMethod().add_method(
        "mei.methods.gradient_ascent", METHOD_CONFIG, comment="My MEI method"
    )
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    table = lab.MEI()
    table.populate()

    assert len(lab.MEI()) == N_UNITS
    dataloaders, ensemble = lab.TrainedEnsembleModel().load_model(ensemble_key)
    assert isinstance(ensemble, EnsembleModel) and len(ensemble.members) == 2
    for unit in range(N_UNITS):
        key = dict(ensemble_key, **method_key, mei_seed=SEED, neuron_id=100 + unit)
        mei = lab.MEI().load_mei(key)
        output = lab.MEI().load_output(key)
        score = (lab.MEI & key).fetch1("score")
        # fetched back equal to what the method computes for this key
        expected = gradient_ascent(
            dataloaders, ConstrainedOutputModel(ensemble, unit), METHOD_CONFIG, SEED
        )
        assert torch.equal(mei, expected[0])
        assert math.isclose(score, expected[1], rel_tol=1e-5)  # a float32 column
        assert output == expected[2]
        assert list(output) == ["mei.objectives.EvaluationObjective"]
        # and it is the known optimum of the ensemble's unit
        check_mei(mei, score, *ensemble_unit(list(ensemble.members), unit), seed=SEED)

    # the method table runs a method directly too
    row = mei_main.MEIMethod().generate_mei(
        dataloaders, ConstrainedOutputModel(ensemble, 0), dict(method_key), SEED
    )
    assert torch.equal(
        row["mei"],
        lab.MEI().load_mei(dict(ensemble_key, **method_key, mei_seed=SEED, neuron_id=100)),
    )

    # one model load for the three neurons; the cached model is untouched by the runs
    assert (table.model_loader.misses, table.model_loader.hits) == (1, N_UNITS - 1)
    [(_, cached)] = table.model_loader.cache.values()
    _, fresh = lab.TrainedEnsembleModel().load_model(ensemble_key)
    assert cached.training == fresh.training
    assert [p.requires_grad for p in cached.parameters()] == [
        p.requires_grad for p in fresh.parameters()
    ]
    for (name, value), (_, fresh_value) in zip(
        cached.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(value, fresh_value), name

    # populating again finds nothing to do
    table.populate()
    assert len(lab.MEI()) == N_UNITS


def test_create_ensemble(schema, mei_main):
    lab = make_lab(schema)
    ensembles = lab.TrainedEnsembleModel()
    key = ensembles.create_ensemble({"dataset_id": 1, "trainer_id": 1}, comment="first")
    members = (lab.TrainedModel & {"dataset_id": 1, "trainer_id": 1}).keys()
    assert key == {"dataset_id": 1, "ensemble_hash": hash_list_of_dictionaries(members)}
    assert len(lab.TrainedEnsembleModel.Member & key) == 2
    assert (lab.TrainedEnsembleModel & key).fetch1("ensemble_comment") == "first"
    # the same members again: the same ensemble, nothing changes
    assert ensembles.create_ensemble({"dataset_id": 1, "trainer_id": 1}, "other") == key
    assert (lab.TrainedEnsembleModel & key).fetch1("ensemble_comment") == "first"
    # a single model is an ensemble too, with its own hash
    single = ensembles.create_ensemble({"dataset_id": 1, "trainer_id": 1, "model_seed": 2})
    assert single["ensemble_hash"] != key["ensemble_hash"]
    assert ensembles.member_keys(single) == [{"dataset_id": 1, "trainer_id": 1, "model_seed": 2}]
    assert len(lab.TrainedEnsembleModel()) == 2

    model = ensembles.load_model(single, include_dataloader=False)
    assert isinstance(model, EnsembleModel) and len(model.members) == 1

    lab.Dataset.insert1({"dataset_id": 2, "dataset_config": {"n_units": 2}})
    with pytest.raises(ValueError, match="exactly one entry, it matches 2"):
        ensembles.create_ensemble({})
    with pytest.raises(ValueError, match="at least one trained model"):
        ensembles.create_ensemble({"dataset_id": 2})
    with pytest.raises(ValueError, match="exactly one ensemble"):
        ensembles.load_model({"dataset_id": 1})
    assert len(lab.TrainedEnsembleModel()) == 2


def _ready_lab(schema, trainer_id):
    lab = make_lab(schema)
    lab.TrainedEnsembleModel().create_ensemble({"dataset_id": 1, "trainer_id": trainer_id})
    lab.Selector().populate()
    return lab


def test_populate_without_method_or_seed_does_nothing(schema, mei_main, store):
    lab = _ready_lab(schema, trainer_id=1)
    before = stored_files(store)
    lab.MEI().populate()
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", METHOD_CONFIG)
    lab.MEI().populate()
    assert len(lab.MEI()) == 0
    mei_main.MEIMethod().delete_quick()
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    assert len(lab.MEI()) == 0
    assert lab.MEI().progress() == (0, 0)
    assert stored_files(store) == before


def test_diverged_model_leaves_no_row_and_no_file(schema, mei_main, store):
    lab = _ready_lab(schema, trainer_id=2)  # NaN weights
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", METHOD_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    before = stored_files(store)
    with pytest.raises(NonFiniteError):
        lab.MEI().populate()
    assert len(lab.MEI()) == 0

    # with the job queue the errors are recorded for everyone to see
    errors = lab.MEI().populate(reserve_jobs=True, suppress_errors=True)
    assert len(errors["error_list"]) == N_UNITS
    messages = lab.MEI().jobs.errors.to_dicts()
    assert len(messages) == N_UNITS
    assert all(m["error_message"].startswith("NonFiniteError") for m in messages)
    assert len(lab.MEI()) == 0
    assert stored_files(store) == before


def test_failed_insert_leaves_no_orphan_file(schema, mei_main, store):
    lab = _ready_lab(schema, trainer_id=1)
    mei_main.MEIMethod().add_method("mei_testkit.overflowing_method", METHOD_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    before = stored_files(store)
    # the score does not fit the float32 column: the server rejects the row after the files
    # were written; they must be gone again
    with pytest.raises(Exception, match="(?i)out of range"):
        lab.MEI().populate()
    assert len(lab.MEI()) == 0
    assert stored_files(store) == before


def test_stored_types(schema, mei_main):
    lab = _ready_lab(schema, trainer_id=1)
    heading = lab.MEI().heading
    assert heading["mei"].type == heading["output"].type == "<object@minio>"
    assert "<blob>" in mei_main.MEIMethod().heading["method_config"].type
    assert lab.MEI.storage == "minio"
