"""Method rows of the sinzlab/mei fork used in sinzlab/nnsysident (issue 21): its
``"mei_class_name"`` ("MEI", "CEI", "VEI") and the CEI's and VEI's parameters, with the fork's
meaning, on a model that predicts the mean and the variance of each neuron's response.

The model: ``mean = w . x`` and ``variance = c -+ (v . x - t)**2`` with ``v`` orthogonal to
``w``. A CEI at ``ref_level`` ends where ``w . x = ref_level * mei_mean``, having moved only
along ``w``; a VEI ends there too (the potential well is symmetric around it) and where the
variance term is extreme, ``v . x = t``.
"""

from __future__ import annotations

import pytest
import torch
from models import base_config
from torch import nn

from mei.config import resolve_config
from mei.errors import ConfigError
from mei.initial import RandomNormal
from mei.methods import draw_initial, gradient_ascent
from mei.modules import ConstrainedOutputModel, EnsembleModel

SHAPE = (1, 1, 8, 8)
MEI_MEAN, MEI_VARIANCE, TARGET = 10.0, 50.0, 1.5


class TwoMoments(nn.Module):
    """Two neurons predicting a response distribution: mean ``w_n . x``, variance
    ``c + sign * (v_n . x - t)**2`` (sign -1: concave, its maximum at ``t``; +1: convex)."""

    def __init__(self, sign=-1.0):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        w = torch.randn(2, 64, generator=g)
        v = torch.randn(2, 64, generator=g)
        v = v - (v * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
        self.register_buffer("w", w)
        self.register_buffer("v", v)
        self.sign = sign

    def forward(self, x):
        return self.predict_mean(x)

    def predict_mean(self, x):
        return x.flatten(1) @ self.w.T

    def predict_variance(self, x):
        return 100.0 + self.sign * (x.flatten(1) @ self.v.T - TARGET) ** 2


def selected(model, unit=1, **references):
    """The selected neuron, with what the fork's MEI table put on it (``mei_mean`` & co.)."""
    wrapper = ConstrainedOutputModel(model, unit)
    for name, value in references.items():
        setattr(wrapper, name, value)
    return wrapper


def config(**settings):
    cfg = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.02}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 600}},
    )
    del cfg["postprocessing"]
    cfg.update(settings)
    return cfg


def start(seed):
    """The start of a run with ``seed`` (mei.initial.RandomNormal, torch's generator)."""
    return draw_initial(RandomNormal(), SHAPE, seed)


def test_a_cei_excites_its_neuron_to_ref_level_times_its_meis_mean():
    model = TwoMoments()
    w = model.w[1]
    cfg = config(mei_class_name="CEI", ref_level=0.4)
    mei, score, output = gradient_ascent(
        None, selected(model, mei_mean=MEI_MEAN), cfg, 3, shape=SHAPE
    )
    mean = float(mei.flatten() @ w)
    assert mean == pytest.approx(0.4 * MEI_MEAN, rel=1e-5)
    # the objective -(ref_level - mean / mei_mean)**2 reached its maximum, 0
    assert -1e-10 <= score <= 0.0
    # it moved along w only (the gradient of the objective), from the seed's start
    x0 = start(3).flatten()
    moved = mei.flatten() - x0
    assert torch.allclose(moved, (moved @ w) / (w @ w) * w, atol=1e-5)
    # the fork stored the last evaluation's mean and variance with the row
    assert output["mean"]["values"][0] == pytest.approx(mean, rel=1e-4)
    assert "variance" in output and output["mean"]["times"] == [600]


@pytest.mark.parametrize("well", ["exp", "linear"])
@pytest.mark.parametrize(("optimization", "sign"), [("max", -1.0), ("min", 1.0)])
def test_a_vei_keeps_the_mean_and_drives_the_variance_to_its_extreme(well, optimization, sign):
    model = TwoMoments(sign=sign)
    cfg = config(
        mei_class_name="VEI",
        ref_level=0.8,
        scale=1.0,
        dx=0.5,
        variance_optimization=optimization,
        potential_well_function=well,
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.05}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 1500}},
    )
    neuron = selected(model, mei_mean=MEI_MEAN, mei_variance=MEI_VARIANCE)
    mei, score, output = gradient_ascent(None, neuron, cfg, 4, shape=SHAPE)
    x = mei.flatten()
    assert float(x @ model.w[1]) == pytest.approx(0.8 * MEI_MEAN, rel=1e-3)
    assert float(x @ model.v[1]) == pytest.approx(TARGET, rel=1e-3)
    assert output["variance"]["values"][0] == pytest.approx(100.0, abs=1e-3)


def test_mei_as_class_name_is_the_plain_method():
    neuron = selected(TwoMoments())
    cfg = config()
    plain = gradient_ascent(None, neuron, cfg, 2, shape=SHAPE)
    named = gradient_ascent(None, neuron, dict(cfg, mei_class_name="MEI"), 2, shape=SHAPE)
    assert torch.equal(plain[0], named[0]) and plain[1] == named[1]
    assert "mean" not in named[2]


def test_an_ensemble_predicts_its_members_mean_and_mean_variance():
    a, b = TwoMoments(sign=-1.0), TwoMoments(sign=1.0)
    x = torch.randn(3, 1, 8, 8)
    ensemble = EnsembleModel(a, b)
    assert torch.allclose(ensemble.predict_mean(x), (a.predict_mean(x) + b.predict_mean(x)) / 2)
    assert torch.allclose(
        ensemble.predict_variance(x), (a.predict_variance(x) + b.predict_variance(x)) / 2
    )
    neuron = ConstrainedOutputModel(ensemble, 1)
    assert torch.allclose(neuron.predict_mean(x), ensemble.predict_mean(x)[:, 1:2])


@pytest.mark.parametrize(
    ("settings", "model", "match"),
    [
        ({"mei_class_name": "XEI"}, None, r"config\['mei_class_name'\]: must be one of"),
        ({"mei_class_name": "CEI"}, None, r"config\['ref_level'\]: a CEI needs 'ref_level'"),
        (
            {"mei_class_name": "VEI", "ref_level": 1.0, "scale": 5.0, "dx": 0.1},
            None,
            r"config\['variance_optimization'\]: a VEI needs 'variance_optimization'",
        ),
        (
            {"orthogonal_vei": {"mei_type": "MEI"}},
            None,
            r"config\['orthogonal_vei'\]: key\(s\) \['orthogonal_vei'\] of the sinzlab/mei fork",
        ),
        (
            {"mei_class_name": "CEI", "ref_level": 0.5},
            selected(TwoMoments()),
            r"config\['mei_class_name'\]: a CEI is relative to the unit's MEI: the model "
            r"\(ConstrainedOutputModel\) has no mei_mean .*add_params_to_model",
        ),
        (
            {
                "mei_class_name": "VEI",
                "ref_level": 1.0,
                "scale": 5.0,
                "dx": 0.1,
                "variance_optimization": "max",
            },
            selected(TwoMoments(), mei_mean=MEI_MEAN),
            r"a VEI is relative to the unit's MEI: the model \(ConstrainedOutputModel\) has no "
            r"mei_variance",
        ),
        (
            {"mei_class_name": "CEI", "ref_level": 0.5},
            selected(nn.Flatten(), mei_mean=MEI_MEAN),
            r"config\['mei_class_name'\]: the model \(Flatten\) has no predict_mean\(x\) method",
        ),
    ],
    ids=[
        "unknown-class",
        "cei-without-ref-level",
        "vei-without-variance-optimization",
        "fork-only-key",
        "no-mei-mean",
        "no-mei-variance",
        "no-predict-mean",
    ],
)
def test_what_a_cei_or_vei_lacks_is_named(settings, model, match):
    cfg = config(**settings)
    with pytest.raises(ConfigError, match=match):
        if model is None:
            resolve_config(cfg)
        else:
            gradient_ascent(None, model, cfg, 0, shape=SHAPE)
