"""The issue's workflow end to end on DataJoint 0.14 with real NNFabrik 0.2.1 tables."""

from __future__ import annotations

import math

import pytest
import torch
from mei_testkit import METHOD_CONFIG, N_UNITS, check_mei, ensemble_unit, stored_files

from mei.dj.backend import backend
from mei.errors import NonFiniteError
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel, EnsembleModel

SEED = 42


@pytest.fixture
def lab(nnf):
    import lab014  # imports nnfabrik, which connects: only after the fixtures configured it

    lab = lab014.declare(nnf)
    lab.keys = lab014.fill(lab)
    return lab


def _ready(lab, trainer):
    key = dict(lab.keys["dataset"], **lab.keys[trainer])
    ensemble_key = lab.TrainedEnsembleModel().create_ensemble(key, comment="My ensemble")
    lab.Selector().populate()
    return ensemble_key


def test_workflow_end_to_end(lab, mei_main, nnfabrik_main, store):
    ensemble_key = _ready(lab, "trainer")
    method_key = mei_main.MEIMethod().add_method(
        "mei.methods.gradient_ascent", METHOD_CONFIG, comment="My MEI method"
    )
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    table = lab.MEI()
    table.populate()

    # mei's tables went to NNFabrik's core schema, like the original library's
    assert mei_main.schema.database == nnfabrik_main.schema.database
    assert len(lab.MEI()) == N_UNITS
    dataloaders, ensemble = lab.TrainedEnsembleModel().load_model(ensemble_key)
    assert isinstance(ensemble, EnsembleModel) and len(ensemble.members) == 2
    for unit in range(N_UNITS):
        key = dict(ensemble_key, **method_key, mei_seed=SEED, neuron_id=100 + unit)
        mei = lab.MEI().load_mei(key)
        output = lab.MEI().load_output(key)
        score = (lab.MEI & key).fetch1("score")
        expected = gradient_ascent(
            dataloaders, ConstrainedOutputModel(ensemble, unit), METHOD_CONFIG, SEED
        )
        assert torch.equal(mei, expected[0])
        assert math.isclose(score, expected[1], rel_tol=1e-5)  # a float32 column
        assert output == expected[2]
        check_mei(mei, score, *ensemble_unit(list(ensemble.members), unit), seed=SEED)
        # each stored file is traceable to its row
        for pattern in backend().attachment_names(key):
            assert len(list(store.rglob(f"*.{pattern}"))) == 1, pattern

    assert (table.model_loader.misses, table.model_loader.hits) == (1, N_UNITS - 1)
    [(_, cached)] = table.model_loader.cache.values()
    _, fresh = lab.TrainedEnsembleModel().load_model(ensemble_key)
    assert cached.training == fresh.training
    for (name, value), (_, fresh_value) in zip(
        cached.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(value, fresh_value), name
    assert all(p.requires_grad for p in cached.parameters())


def test_create_ensemble_errors(lab):
    ensembles = lab.TrainedEnsembleModel()
    key = _ready(lab, "trainer")
    assert len(lab.TrainedEnsembleModel.Member & key) == 2
    assert ensembles.create_ensemble(dict(lab.keys["dataset"], **lab.keys["trainer"])) == key
    with pytest.raises(ValueError, match="at least one trained model"):
        ensembles.create_ensemble(dict(lab.keys["dataset"], trainer_hash="0" * 32))
    lab.nnf.Dataset().add_entry(
        "mei_testkit.linear_dataset", {"n_units": 2}, dataset_fabrikant="tester"
    )
    with pytest.raises(ValueError, match="exactly one entry, it matches 2"):
        ensembles.create_ensemble({})


def test_populate_without_method_or_seed_does_nothing(lab, mei_main, store):
    _ready(lab, "trainer")
    before = stored_files(store)
    lab.MEI().populate()
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", METHOD_CONFIG)
    lab.MEI().populate()
    assert len(lab.MEI()) == 0
    mei_main.MEIMethod().delete_quick()
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    assert len(lab.MEI()) == 0
    assert stored_files(store) == before


def test_diverged_model_leaves_no_row_and_no_file(lab, mei_main, nnf, store):
    _ready(lab, "diverging")
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", METHOD_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    before = stored_files(store)
    with pytest.raises(NonFiniteError):
        lab.MEI().populate()
    assert len(lab.MEI()) == 0
    # with the job queue the errors are recorded for everyone to see
    lab.MEI().populate(reserve_jobs=True, suppress_errors=True)
    errors = (nnf.schema.jobs & 'status="error"').fetch("error_message")
    assert len(errors) == N_UNITS
    assert all(message.startswith("NonFiniteError") for message in errors)
    assert len(lab.MEI()) == 0
    assert stored_files(store) == before


def test_failed_insert_leaves_no_orphan_file(lab, mei_main, store):
    _ready(lab, "trainer")
    mei_main.MEIMethod().add_method("mei_testkit.overflowing_method", METHOD_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    before = stored_files(store)
    # both files are uploaded before the server rejects the score; they must be gone again
    with pytest.raises(Exception, match="(?i)out of range"):
        lab.MEI().populate()
    assert len(lab.MEI()) == 0
    assert stored_files(store) == before
    assert len(lab.MEI().external["minio"]) == len(lab.TrainedModel.ModelStorage())
