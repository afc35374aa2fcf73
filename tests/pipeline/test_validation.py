"""Validating a lab's MEIs from its pipeline, on every setup: ``MEIValidationTemplate`` tables
score each MEI on other models (each trained model alone, the ensemble of another seed) and
against its neuron's best natural images of the dataset; batched populate stores what plain
populate stores, and both equal :mod:`mei.validation` on the same models."""

from __future__ import annotations

import math

import pytest
import torch
from mei_testkit import METHOD_CONFIG, N_UNITS, NORM

from mei.dj.backend import backend
from mei.errors import NonFiniteError
from mei.main import MEITemplate, MEIValidationTemplate
from mei.modules import ConstrainedOutputModel
from mei.validation import read_images, score_meis, top_natural_images

SEED = 3
TOP_K = 4


def test_the_template_is_public_in_mei_main():
    import mei.main

    assert "MEIValidationTemplate" in mei.main.__all__
    assert mei.main.MEIValidationTemplate is MEIValidationTemplate


def _declare(schema, lab):
    """The lab's code: validation on single trained models and on other ensembles."""

    class ValidationOnModels(MEIValidationTemplate):
        mei_table = lab.MEI
        validating_model_table = lab.TrainedModel
        top_k = TOP_K

    class BatchedValidationOnModels(MEIValidationTemplate):
        mei_table = lab.MEI
        validating_model_table = lab.TrainedModel
        top_k = TOP_K

    class ValidationOnEnsembles(MEIValidationTemplate):
        mei_table = lab.MEI
        validating_model_table = lab.TrainedEnsembleModel
        top_k = TOP_K

    for table in (ValidationOnModels, BatchedValidationOnModels, ValidationOnEnsembles):
        schema(table)
    return ValidationOnModels, BatchedValidationOnModels, ValidationOnEnsembles


@pytest.fixture
def meis(schema, lab, mei_main):
    """MEIs of every neuron, made by the ensemble of the seed-1 model."""
    lab.first = lab.TrainedEnsembleModel().create_ensemble(lab.model_key(1), comment="seed 1")
    lab.second = lab.TrainedEnsembleModel().create_ensemble(lab.model_key(2), comment="seed 2")
    lab.Selector().populate()
    lab.method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", METHOD_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate(lab.first, batch_size=N_UNITS)
    assert len(lab.MEI()) == N_UNITS
    return lab


def _rows(table):
    rows = backend().to_dicts(table)
    return sorted(rows, key=lambda r: [str(r[k]) for k in table.primary_key])


def _same_rows(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for name in x:
            if name in ("natural_indices", "natural_responses"):
                assert list(x[name]) == list(y[name]), name
            elif isinstance(x[name], float):  # a forward pass of 3 vs of 1; MariaDB: 6 digits
                assert x[name] == pytest.approx(y[name], rel=1e-5), name
            else:
                assert x[name] == y[name], name


def _counting(monkeypatch):
    """Count the engine calls the validation tables make (the real functions run)."""
    import mei.dj.run

    calls = {"score_meis": [], "top_natural_images": 0}

    def score(model, meis, units, **kwargs):
        calls["score_meis"].append(len(meis))
        return score_meis(model, meis, units, **kwargs)

    def natural(*args, **kwargs):
        calls["top_natural_images"] += 1
        return top_natural_images(*args, **kwargs)

    monkeypatch.setattr(mei.dj.run, "score_meis", score)
    monkeypatch.setattr(mei.dj.run, "top_natural_images", natural)
    return calls


def test_each_mei_is_scored_on_every_trained_model_and_against_its_best_natural_images(
    schema, meis, monkeypatch
):
    lab = meis
    Plain, Batched, _ = _declare(schema, lab)
    fitting = {**lab.keys["trainer"]}
    calls = _counting(monkeypatch)
    Plain().populate(fitting)
    assert len(Plain()) == N_UNITS * 2  # every MEI x the fitting trainer's two models
    # one key at a time, but the dataset is read once per model (for all its units)
    assert calls == {"score_meis": [1] * 2 * N_UNITS, "top_natural_images": 2}
    # three MEIs of one model and session in one forward pass: the same rows
    calls = _counting(monkeypatch)
    Batched().populate(fitting, batch_size=N_UNITS)
    assert calls == {"score_meis": [N_UNITS, N_UNITS], "top_natural_images": 2}
    _same_rows(_rows(Plain()), _rows(Batched()))
    assert Plain.validating_renames() == {}  # the trained models share only the dataset

    for row in _rows(Plain()):
        model_key = Plain().validating_key(row)
        loaders, model = lab.TrainedModel().load_model(key=model_key)
        unit = row["neuron_id"] - 100
        mei = lab.MEI().load_mei(row)
        # the known answer: a linear neuron's response w . x + b on the validating model
        weight, bias = model[1].weight[unit].detach(), float(model[1].bias[unit].detach())
        expected = float(mei.flatten().double() @ weight.double()) + bias
        assert math.isclose(row["mei_response"], expected, rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(
            row["mei_response"], float(score_meis(model, mei, [unit])[0]), rel_tol=1e-5
        )
        # the MEI under its norm beats every white-noise image of the dataset on this neuron
        assert row["mei_response"] > row["best_natural_response"] > 0
        natural = top_natural_images(model, loaders, [unit], k=TOP_K)
        assert list(row["natural_indices"]) == natural.indices[0].tolist()
        torch.testing.assert_close(
            torch.tensor(list(row["natural_responses"])), natural.responses[0]
        )
        assert row["best_natural_response"] == pytest.approx(
            float(natural.responses[0, 0]), rel=1e-5
        )
        assert row["fraction"] == pytest.approx(
            row["mei_response"] / row["best_natural_response"], rel=1e-5
        )
        assert row["n_images"] == natural.n_images == 512
        # the stored indices are the images the neuron responds to most: check one directly
        best = read_images(loaders, natural.indices[0, :1])
        response = float(model(best)[0, unit])
        assert response == pytest.approx(row["best_natural_response"], rel=1e-5)
    # on the model that made it, the MEI reaches the known optimum NORM * |w| + b
    own = _rows(Plain() & lab.model_key(1))
    for row in own:
        _, model = lab.TrainedModel().load_model(key=lab.model_key(1))
        unit = row["neuron_id"] - 100
        optimum = NORM * model[1].weight[unit].detach().norm().item() + float(
            model[1].bias[unit].detach()
        )
        assert row["mei_response"] == pytest.approx(optimum, rel=1e-3)


def test_the_ensemble_of_another_seed_validates_under_renamed_attributes(schema, meis):
    lab = meis
    _, _, OnEnsembles = _declare(schema, lab)
    assert OnEnsembles.validating_renames() == {"validating_ensemble_hash": "ensemble_hash"}
    assert "validating_ensemble_hash" in OnEnsembles().primary_key
    OnEnsembles().populate(batch_size=8)
    assert len(OnEnsembles()) == N_UNITS * 2  # on its own ensemble and on the other
    loaders, second = lab.TrainedEnsembleModel().load_model(lab.second)
    other = {"validating_ensemble_hash": lab.second["ensemble_hash"]}
    rows = _rows(OnEnsembles() & other)
    assert len(rows) == N_UNITS
    assert all(r["ensemble_hash"] == lab.first["ensemble_hash"] for r in rows)
    meis_ = torch.cat([lab.MEI().load_mei(r) for r in rows])
    units = [r["neuron_id"] - 100 for r in rows]
    expected = score_meis(second, meis_, units)  # one forward pass in the engine too
    natural = top_natural_images(second, loaders, units, k=TOP_K)
    for i, row in enumerate(rows):
        assert row["mei_response"] == pytest.approx(float(expected[i]), rel=1e-5)
        assert list(row["natural_indices"]) == natural.indices[i].tolist()
    # the selector's model: the engine's answer through ConstrainedOutputModel is the same
    selected = ConstrainedOutputModel(second, units[0])
    assert float(selected(meis_[:1])[0, 0]) == pytest.approx(rows[0]["mei_response"], rel=1e-5)


def test_a_diverged_validating_model_fails_its_keys_alone_and_writes_nothing(schema, meis):
    lab = meis
    Plain, Batched, _ = _declare(schema, lab)
    diverged = {**lab.keys["diverging"]}
    result = Batched().populate(batch_size=8, suppress_errors=True, reserve_jobs=True)
    errors = result["error_list"]
    assert len(errors) == 2 * N_UNITS  # the diverging trainer's two models x every MEI
    assert all("NonFiniteError" in message for _, message in errors)
    assert len(Batched()) == 2 * N_UNITS and not (Batched() & diverged)
    assert len(_error_jobs(lab, Batched())) == 2 * N_UNITS  # recorded in the job queue
    with pytest.raises(NonFiniteError, match="not finite"):
        Plain().populate(diverged)
    assert len(Plain()) == 0


def _error_jobs(lab, table):
    """The error records of ``table``'s jobs (2.x: its own jobs table; 0.14: the schema's)."""
    if lab.generation == 2:
        return table.jobs.errors.to_dicts()
    query = lab.jobs_table & {"table_name": table.table_name, "status": "error"}
    return query.fetch(as_dict=True)


def _probe_table(schema, lab, images_side):
    """A validating model table whose models break the rules: probe 1 has only two output
    units (the third neuron's unit is out of range), probe 2 loaders of other images (4 x 4),
    probe 3 loaders without images."""
    import datajoint as dj
    from torch.utils.data import DataLoader, TensorDataset

    class Probe(dj.Manual):
        definition = """
        -> self.dataset_table
        probe_id : int
        """
        dataset_table = lab.Dataset

        def load_model(self, key=None, include_dataloader=True, include_state_dict=True):
            probe, side = int(key["probe_id"]), images_side
            n_units = 2 if probe == 1 else N_UNITS
            n_images = 0 if probe == 3 else 16
            if probe == 2:
                side = 4
            images = torch.randn(n_images, 1, side, side, generator=torch.Generator())
            loaders = {"train": {"all": DataLoader(TensorDataset(images), batch_size=8)}}
            model = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.LazyLinear(n_units) if probe == 2 else
                torch.nn.Linear(images_side * images_side, n_units)
            )  # fmt: skip
            return loaders, model

    schema(Probe)
    Probe.insert([{**lab.dataset_key, "probe_id": p} for p in (1, 2, 3)])
    return Probe


def test_bad_validating_models_fail_their_keys_with_a_typed_error_naming_the_value(schema, meis):
    lab = meis
    side = lab.MEI().load_mei(backend().keys(lab.MEI())[0]).shape[-1]
    Probe = _probe_table(schema, lab, side)

    class ProbeValidation(MEIValidationTemplate):
        mei_table = lab.MEI
        validating_model_table = Probe
        top_k = 2

    schema(ProbeValidation)
    result = ProbeValidation().populate(batch_size=8, suppress_errors=True)
    messages = {}
    for key, message in result["error_list"]:
        messages.setdefault(int(key["probe_id"]), []).append((key["neuron_id"], message))
    # probe 1: only the neuron whose unit is out of range fails; the others are stored
    [(neuron, message)] = messages[1]
    assert neuron == 100 + N_UNITS - 1
    assert "InputError" in message and f"= {N_UNITS - 1} is out of range" in message
    assert "the model has 2 output units" in message
    assert len(ProbeValidation() & {"probe_id": 1}) == N_UNITS - 1
    # probe 2: images of another shape than the MEIs; probe 3: no images at all
    assert len(messages[2]) == N_UNITS and len(messages[3]) == N_UNITS
    assert all(f"MEIs are of shape (1, {side}, {side})" in m for _, m in messages[2])
    assert all("(1, 4, 4)" in m for _, m in messages[2])
    assert all("yields no images" in m for _, m in messages[3])
    assert not ProbeValidation() & [{"probe_id": 2}, {"probe_id": 3}]  # nothing written


def test_a_selector_with_a_target_fn_is_scored_one_input_at_a_time(schema, meis):
    """A lab's selector that reduces with ``target_fn=torch.mean`` (a batch to one number):
    its MEIs are scored through the selector's own model, one input at a time, and get the
    unit's response."""
    import datajoint as dj

    lab = meis

    class MeanSelector(dj.Computed):
        definition = lab.Selector.definition
        dataset_table = lab.Dataset
        make = lab.Selector.make

        def get_output_selected_model(self, model, key):
            unit = (self & key).fetch1("output_unit")
            return ConstrainedOutputModel(model, unit, target_fn=torch.mean)

    class MeanMEI(MEITemplate):
        trained_model_table = lab.TrainedEnsembleModel
        selector_table = MeanSelector

    class MeanValidation(MEIValidationTemplate):
        mei_table = MeanMEI
        validating_model_table = lab.TrainedEnsembleModel
        top_k = 2

    for table in (MeanSelector, MeanMEI, MeanValidation):
        schema(table)
    MeanSelector().populate()
    MeanMEI().populate(lab.first)
    MeanValidation().populate({"validating_ensemble_hash": lab.second["ensemble_hash"]})
    rows = _rows(MeanValidation())
    assert len(rows) == N_UNITS
    loaders, second = lab.TrainedEnsembleModel().load_model(lab.second)
    for row in rows:
        unit = row["neuron_id"] - 100
        mei = MeanMEI().load_mei(row)
        assert row["mei_response"] == pytest.approx(float(second(mei)[0, unit]), rel=1e-5)
        natural = top_natural_images(second, loaders, [unit], k=2)
        assert list(row["natural_indices"]) == natural.indices[0].tolist()
