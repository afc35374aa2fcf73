"""Method rows of the sinzlab/mei fork used in sinzlab/nnsysident (``"mei_class_name"``) in a
real pipeline (issue 21): accepted by ``add_method``, computed with the fork's meaning.

The fork's MEI table gave each key's selected model what a CEI is relative to in
``add_params_to_model(model, key)`` (``model.mei_mean``); a lab's table that defines that hook
gets it called before each key's run. The model's neurons predict a mean ``w_n . x``: a CEI at
``ref_level`` ends where ``w_n . x = ref_level * mei_mean``.
"""

from __future__ import annotations

import pytest
import run_path_lab
import torch
from torch import nn

from mei.dj.backend import backend

MEI_MEAN = 4.0
REF_LEVEL = 0.5


class Moments(nn.Module):
    """Neurons predicting a response distribution: mean ``w_n . x``, variance ``1 + x . x``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(run_path_lab.N_UNITS, 16, generator=_g()))

    def forward(self, x):
        return self.predict_mean(x)

    def predict_mean(self, x):
        return x.flatten(1) @ self.weight.T

    def predict_variance(self, x):
        return 1.0 + (x.flatten(1) ** 2).sum(1, keepdim=True).expand(-1, run_path_lab.N_UNITS)


def _g():
    return torch.Generator().manual_seed(5)


def config(**settings):
    return dict(
        run_path_lab.CONFIG,
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 300}},
        **settings,
    )


@pytest.fixture
def lab(schema, mei_main):
    run_path_lab.CALLS.clear()
    lab = run_path_lab.declare(schema, n_units=run_path_lab.N_UNITS, model=Moments)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    return lab


@pytest.mark.parametrize("batch_size", [None, 4], ids=["per-key", "batched"])
def test_a_cei_row_is_computed_with_the_forks_meaning(lab, mei_main, monkeypatch, batch_size):
    given = []

    def add_params_to_model(self, model, key):  # the fork's hook, in the lab's MEI table
        given.append(key["neuron_id"])
        model.mei_mean = MEI_MEAN

    monkeypatch.setattr(lab.MEI, "add_params_to_model", add_params_to_model, raising=False)
    mei_main.MEIMethod().add_method(
        "mei.methods.gradient_ascent",
        config(mei_class_name="CEI", ref_level=REF_LEVEL),
        "CEI at half the MEI's mean",
    )
    table = lab.MEI()
    table.populate(batch_size=batch_size)
    weight = Moments().weight.detach()
    keys = backend().keys(table)
    assert sorted(given) == sorted(k["neuron_id"] for k in keys) == list(range(4))
    for key in keys:
        mei = table.load_mei(key)
        unit = key["neuron_id"] % run_path_lab.N_UNITS
        assert float(mei.flatten() @ weight[unit]) == pytest.approx(REF_LEVEL * MEI_MEAN, rel=1e-4)
        assert table.load_output(key)["mean"]["times"] == [300]


def test_an_mei_row_with_the_class_name_is_the_plain_method(lab, mei_main):
    methods = mei_main.MEIMethod()
    methods.add_method("mei.methods.gradient_ascent", config(), "plain")
    methods.add_method("mei.methods.gradient_ascent", config(mei_class_name="MEI"), "named")
    lab.MEI().populate(batch_size=8)
    rows = {}
    for key in backend().keys(lab.MEI()):
        comment = (methods & key).fetch1("method_comment")
        rows.setdefault(key["neuron_id"], {})[comment] = lab.MEI().load_mei(key)
    assert len(rows) == 4
    assert all(torch.equal(r["plain"], r["named"]) for r in rows.values())


def test_a_cei_row_without_its_reference_fails_each_key_naming_it(lab, mei_main):
    mei_main.MEIMethod().add_method(
        "mei.methods.gradient_ascent", config(mei_class_name="CEI", ref_level=REF_LEVEL), "CEI"
    )
    result = lab.MEI().populate(batch_size=4, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 4
    assert all(
        "a CEI is relative to the unit's MEI" in message and "add_params_to_model" in message
        for _, message in result["error_list"]
    )
    assert len(lab.MEI()) == 0
