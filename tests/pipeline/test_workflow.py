"""The issue's workflow end to end, and what happens when it goes wrong: on DataJoint 2.x with a
hand-written lab, on 0.14 with real NNFabrik 0.2.1 tables."""

from __future__ import annotations

import logging
import math

import labs
import pytest
import torch
from mei_testkit import METHOD_CONFIG, N_UNITS, check_mei, ensemble_unit, stored_files

from mei.dj.backend import backend
from mei.errors import NonFiniteError
from mei.integration import hash_list_of_dictionaries
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel, EnsembleModel

SEED = 42


def _ready(lab, restriction, comment=""):
    """An ensemble of the models under ``restriction``, the selector filled."""
    ensemble_key = lab.TrainedEnsembleModel().create_ensemble(restriction, comment=comment)
    lab.Selector().populate()
    return ensemble_key


def test_workflow_end_to_end(request, lab, mei_main, store):
    ensemble_key = _ready(lab, lab.ensemble_restriction, comment="My ensemble")
    method_key = mei_main.MEIMethod().add_method(
        "mei.methods.gradient_ascent", METHOD_CONFIG, comment="My MEI method"
    )
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    table = lab.MEI()
    table.populate()

    if lab.generation == 0:  # mei's tables went to NNFabrik's core schema, like the original's
        assert mei_main.schema.database == request.getfixturevalue("nnfabrik_main").schema.database
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
        # each stored file is traceable to its row
        if lab.generation == 0:
            for pattern in backend().attachment_names(key):
                assert len(list(store.rglob(f"*.{pattern}"))) == 1, pattern
        else:
            assert len(stored_files(store / backend().key_folder(table, key))) == 2

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
    assert all(p.requires_grad for p in cached.parameters())
    for (name, value), (_, fresh_value) in zip(
        cached.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(value, fresh_value), name

    # populating again finds nothing to do
    table.populate()
    assert len(lab.MEI()) == N_UNITS


def test_create_ensemble(lab, mei_main):
    ensembles = lab.TrainedEnsembleModel()
    key = ensembles.create_ensemble(lab.ensemble_restriction, comment="first")
    members = backend().keys(lab.TrainedModel & lab.ensemble_restriction)
    assert len(members) == 2
    assert key == dict(lab.dataset_key, ensemble_hash=hash_list_of_dictionaries(members))
    assert len(lab.TrainedEnsembleModel.Member & key) == 2
    assert (lab.TrainedEnsembleModel & key).fetch1("ensemble_comment") == "first"
    # the same members again: the same ensemble, nothing changes
    assert ensembles.create_ensemble(lab.ensemble_restriction, "other") == key
    assert (lab.TrainedEnsembleModel & key).fetch1("ensemble_comment") == "first"
    # a single model is an ensemble too, with its own hash
    single = ensembles.create_ensemble(lab.model_key(2))
    assert single["ensemble_hash"] != key["ensemble_hash"]
    assert ensembles.member_keys(single) == [lab.model_key(2)]
    assert len(lab.TrainedEnsembleModel()) == 2

    model = ensembles.load_model(single, include_dataloader=False)
    assert isinstance(model, EnsembleModel) and len(model.members) == 1

    with pytest.raises(ValueError, match="at least one trained model"):
        ensembles.create_ensemble(dict(lab.dataset_key, **lab.keys["missing_trainer"]))
    other_dataset = lab.add_dataset(n_units=2)
    with pytest.raises(ValueError, match="exactly one entry, it matches 2"):
        ensembles.create_ensemble({})
    with pytest.raises(ValueError, match="at least one trained model"):
        ensembles.create_ensemble(other_dataset)
    with pytest.raises(ValueError, match="exactly one ensemble"):
        ensembles.load_model(lab.dataset_key)
    assert len(lab.TrainedEnsembleModel()) == 2


def test_populate_without_method_or_seed_does_nothing_and_says_why(lab, mei_main, store, caplog):
    _ready(lab, lab.ensemble_restriction)
    before = stored_files(store)
    with caplog.at_level(logging.WARNING, logger="mei.dj.tables"):
        lab.MEI().populate()
    assert "nothing to compute" in caplog.text and "MEIMethod, MEISeed have no rows" in caplog.text
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", METHOD_CONFIG)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mei.dj.tables"):
        lab.MEI().populate(batch_size=4)
    assert "MEISeed has no rows" in caplog.text and 'insert1({"mei_seed": 42})' in caplog.text
    assert len(lab.MEI()) == 0
    mei_main.MEIMethod().delete_quick()
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    assert len(lab.MEI()) == 0
    assert lab.MEI().progress() == (0, 0)
    assert stored_files(store) == before


def test_diverged_model_leaves_no_row_and_no_file(lab, mei_main, store):
    _ready(lab, lab.diverging_restriction)  # NaN weights
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", METHOD_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    before = stored_files(store)
    with pytest.raises(NonFiniteError):
        lab.MEI().populate()
    assert len(lab.MEI()) == 0

    # with the job queue the errors are recorded for everyone to see
    errors = lab.MEI().populate(reserve_jobs=True, suppress_errors=True)
    assert len(errors["error_list"]) == N_UNITS
    messages = labs.jobs(lab, "error")
    assert len(messages) == N_UNITS
    assert all(m["error_message"].startswith("NonFiniteError") for m in messages)
    assert len(lab.MEI()) == 0
    assert stored_files(store) == before


def test_failed_insert_leaves_no_orphan_file(lab, mei_main, store):
    _ready(lab, lab.ensemble_restriction)
    mei_main.MEIMethod().add_method("mei_testkit.overflowing_method", METHOD_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    before = stored_files(store)
    # the score does not fit the float32 column: the server rejects the row after the files
    # were written; they must be gone again
    with pytest.raises(Exception, match="(?i)out of range"):
        lab.MEI().populate()
    assert len(lab.MEI()) == 0
    assert stored_files(store) == before
    if lab.generation == 0:  # and no external-table entries either (only the model states)
        assert len(lab.MEI().external["minio"]) == len(lab.TrainedModel.ModelStorage())


@pytest.mark.generation(2)
def test_stored_types(lab, mei_main):
    heading = lab.MEI().heading
    assert heading["mei"].type == heading["output"].type == "<mei_file@minio>"
    assert "<blob>" in mei_main.MEIMethod().heading["method_config"].type
    assert lab.MEI.storage == "minio"
