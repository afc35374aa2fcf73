"""mei.zoo: the bundled V1-like model and its ground truth."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mei.config import resolve_config
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel
from mei.zoo import (
    FilterBankModel,
    center_surround,
    correlation,
    gabor,
    v1_filters,
    v1_model,
)

SIZE = (21, 21)
CENTER = (10.0, 10.0)


def test_gabor_is_unit_norm_and_oriented():
    horizontal = gabor(SIZE, center=CENTER, sigma=3, orientation=0.0, frequency=0.2)
    vertical = gabor(SIZE, center=CENTER, sigma=3, orientation=math.pi / 2, frequency=0.2)
    assert horizontal.shape == SIZE and horizontal.dtype == torch.float32
    assert torch.linalg.vector_norm(horizontal).item() == pytest.approx(1.0, abs=1e-5)
    # rotating by 90 degrees about the center transposes the image
    torch.testing.assert_close(vertical, horizontal.T, atol=1e-5, rtol=0)
    # an even Gabor along x: symmetric under x -> -x, and its carrier varies along x
    torch.testing.assert_close(horizontal, horizontal.flip(1), atol=1e-5, rtol=0)
    assert horizontal[10, 10] > 0 and horizontal[10, 12] < 0  # a half period is 2.5 pixels
    odd = gabor(SIZE, center=CENTER, sigma=3, orientation=0.0, frequency=0.2, phase=math.pi / 2)
    torch.testing.assert_close(odd, -odd.flip(1), atol=1e-5, rtol=0)


def test_center_surround_is_zero_mean_with_the_sign_of_its_polarity():
    on = center_surround(SIZE, center=CENTER, sigma_center=1.5, sigma_surround=4.0)
    off = center_surround(SIZE, center=CENTER, sigma_center=1.5, sigma_surround=4.0, polarity=-1)
    torch.testing.assert_close(off, -on)
    assert torch.linalg.vector_norm(on).item() == pytest.approx(1.0, abs=1e-5)
    assert abs(on.sum().item()) < 0.02  # equal volumes; a little surround is cut by the border
    assert on[10, 10] > 0 and on[10, 16] < 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0}, "sigma and aspect must be positive"),
        ({"frequency": 0.7}, r"frequency must be in \(0, 0.5\]"),
    ],
)
def test_gabor_rejects_bad_parameters(kwargs, match):
    params = {"center": CENTER, "sigma": 3, "orientation": 0.0, "frequency": 0.2, **kwargs}
    with pytest.raises(ValueError, match=match):
        gabor(SIZE, **params)


def test_center_surround_rejects_bad_parameters():
    with pytest.raises(ValueError, match="sigma_center < sigma_surround"):
        center_surround(SIZE, center=CENTER, sigma_center=4, sigma_surround=2)
    with pytest.raises(ValueError, match="polarity must be 1"):
        center_surround(SIZE, center=CENTER, sigma_center=1, sigma_surround=2, polarity=0)


def test_v1_filters_are_reproducible_and_mixed():
    filters, parameters = v1_filters(n_gabors=5, n_center_surround=3, size=24, seed=7)
    again, _ = v1_filters(n_gabors=5, n_center_surround=3, size=24, seed=7)
    other, _ = v1_filters(n_gabors=5, n_center_surround=3, size=24, seed=8)
    assert filters.shape == (8, 1, 24, 24)
    assert torch.equal(filters, again) and not torch.equal(filters, other)
    assert [p.kind for p in parameters] == ["gabor"] * 5 + ["center-surround"] * 3
    assert [p.polarity for p in parameters[5:]] == [1, -1, 1]
    norms = torch.linalg.vector_norm(filters.flatten(1), dim=1)
    torch.testing.assert_close(norms, torch.ones(8), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="need at least one neuron"):
        v1_filters(n_gabors=0, n_center_surround=0)


def test_filter_bank_model_is_linear_nonlinear():
    filters, _ = v1_filters(n_gabors=3, n_center_surround=2, size=16)
    x = torch.randn(4, 1, 16, 16)
    drive = 0.5 * x.flatten(1) @ filters.flatten(1).T - 1.0
    expected = {
        "softplus": F.softplus(drive),
        "elu": F.elu(drive) + 1,
        "exp": torch.exp(drive),
        "identity": drive,
    }
    for name, value in expected.items():
        model = FilterBankModel(filters, nonlinearity=name, gain=0.5, bias=-1.0)
        torch.testing.assert_close(model(x), value)
    assert model.input_shape == (1, 1, 16, 16) and model.n_neurons == 5
    assert "n_neurons=5" in repr(model) and "nonlinearity='identity'" in repr(model)
    with pytest.raises(ValueError, match=r"expected inputs \(B, 1, 16, 16\), got \(4, 1, 8, 8\)"):
        model(torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        FilterBankModel(filters, nonlinearity="relu6")
    with pytest.raises(ValueError, match=r"filters must be a tensor \(N, C, H, W\)"):
        FilterBankModel(filters[0])


def test_noisy_models_differ_by_noise_seed_but_stay_close_to_the_truth():
    truth, _ = v1_filters()
    a, b = v1_model(noise=0.2, noise_seed=1), v1_model(noise=0.2, noise_seed=2)
    assert not torch.equal(a.filters, b.filters)
    r = correlation(a.filters.detach(), truth)
    assert (r > 0.95).all() and (r < 0.995).all()
    with pytest.raises(ValueError, match="noise must be >= 0"):
        v1_model(noise=-1)


def test_correlation():
    x = torch.randn(3, 1, 5, 5)
    torch.testing.assert_close(correlation(x, x), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(correlation(x, -2 * x + 1), -torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="batches"):
        correlation(x, x[:2])


def test_the_demo_method_recovers_every_filter():
    """The optimum is known: under a fixed norm each neuron's MEI is its filter."""
    truth, _ = v1_filters()
    config = {
        "device": "cpu",
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 10.0}},
        "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}},
    }
    resolve_config(config)
    model = v1_model(noise=0.0)
    shape = model.input_shape
    results = gradient_ascent_units(None, model, config, 42, list(range(32)), shape=shape)
    meis = torch.cat([mei for mei, _, _ in results])
    assert meis.shape == (32, 1, 32, 32)
    r = correlation(meis, truth)
    assert r.min() > 0.97, r
    # the norm is fixed at 10, so the best response is softplus(0.5 * 10 * |w| - 1)
    best = F.softplus(torch.tensor(0.5 * 10.0 - 1.0)).item()
    scores = torch.tensor([score for _, score, _ in results])
    assert (scores > 0.98 * best).all() and (scores <= best + 1e-4).all()
    # the batched run agrees with a single run of one neuron
    mei, _, _ = gradient_ascent(None, ConstrainedOutputModel(model, 5), config, 42, shape=shape)
    torch.testing.assert_close(mei, meis[5:6], atol=1e-5, rtol=0)
