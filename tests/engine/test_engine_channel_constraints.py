"""ChannelNormClip: a norm budget and a value range per channel, holding after every step."""

import pytest
import torch
from models import base_config

from mei.errors import ConfigError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel
from mei.postprocessing import ChannelNormClip

GREEN, UV = (-0.654, 6.269), (-0.913, 6.269)  # Hoefling et al. (2024)


class TwoChannelNeurons(torch.nn.Module):
    """Linear neurons on UV/green movies ``(B, 2, T, H, W)`` whose weights sit on a few
    pixels: the unconstrained optimum puts the whole norm there, so clipping binds."""

    def __init__(self, shape=(2, 4, 6, 6), n=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(n, *shape, generator=g) * 0.05
        weight[:, 0, -1, 2:4, 2:4] += 3.0  # green: a strong positive spot in the last frame
        weight[:, 1, -2, 1:3, 1:3] -= 2.0  # UV: a negative spot
        self.register_buffer("weight", weight)

    def forward(self, x):
        return x.flatten(1) @ self.weight.flatten(1).T


def _every_step(postprocessing, shape=(1, 2, 4, 6, 6), units=(0,)):
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.5}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 30}},
        postprocessing={"path": "mei.postprocessing.ChannelNormClip", "kwargs": postprocessing},
        objectives=[
            {"path": "mei.objectives.PostProcessedInputObjective", "kwargs": {"interval": 1}}
        ],
    )
    model = TwoChannelNeurons()
    results = gradient_ascent_units(None, model, config, 0, list(units), shape=shape)
    logs = [r[2]["mei.objectives.PostProcessedInputObjective"]["values"] for r in results]
    assert all(len(log) == 31 for log in logs)
    return [torch.cat(log) for log in logs]  # (steps, 2, ...) per unit


def _in_range(steps, channel, low, high):
    values = steps[:, channel]
    return bool((values >= low).all() and (values <= high).all())


def test_hoefling_constraints_hold_exactly_after_every_step():
    settings = {"norm": 5.0, "x_min": [GREEN[0], UV[0]], "x_max": [GREEN[1], UV[1]]}
    for steps in _every_step(settings, units=(0, 1)):
        assert _in_range(steps, 0, *GREEN) and _in_range(steps, 1, *UV)
        assert bool((steps[-1, 1] == UV[0]).any())  # the UV spot is clipped
        norms = steps.flatten(1).norm(dim=1)
        assert bool((norms <= 5.0 * (1 + 1e-6)).all())


def test_tight_ranges_bind_and_the_norm_stays_within_budget():
    settings = {"norm": 5.0, "x_min": [-0.3, -0.2], "x_max": [1.0, 0.4]}
    [steps] = _every_step(settings)
    assert _in_range(steps, 0, -0.3, 1.0) and _in_range(steps, 1, -0.2, 0.4)
    assert bool((steps[-1, 0] == 1.0).any()) and bool((steps[-1, 1] == -0.2).any())  # binds
    norms = steps.flatten(1).norm(dim=1)
    assert bool((norms <= 5.0 * (1 + 1e-6)).all())
    assert norms[-1] < 4.9  # open-retina's order (norm, then clip) leaves budget unused


def test_exact_meets_the_budget_after_clipping():
    settings = {"norm": 5.0, "x_min": [-0.3, -0.2], "x_max": [1.0, 0.4], "exact": True}
    [steps] = _every_step(settings)
    assert _in_range(steps, 0, -0.3, 1.0) and _in_range(steps, 1, -0.2, 0.4)
    assert bool((steps[-1, 0] == 1.0).any())
    norms = steps.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 5.0), rtol=1e-5, atol=0)


def test_a_norm_per_channel():
    settings = {"norm": [4.0, 1.5], "x_min": -10.0, "x_max": 10.0}
    [steps] = _every_step(settings)
    for channel, budget in enumerate((4.0, 1.5)):
        norms = steps[:, channel].flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.full_like(norms, budget))


def test_exact_keeps_the_saturated_stimulus_when_the_ranges_cannot_hold_the_budget():
    x = torch.tensor([[[[0.5, -0.2], [0.1, 0.0]]]])  # (1, 1, 2, 2)
    out = ChannelNormClip(norm=100.0, x_min=-1.0, x_max=1.0, exact=True)(x, 0)
    torch.testing.assert_close(out, torch.tensor([[[[1.0, -1.0], [1.0, 0.0]]]]))


def test_settings_must_match_the_channels_before_the_first_step():
    config = base_config(
        postprocessing={
            "path": "mei.postprocessing.ChannelNormClip",
            "kwargs": {"norm": 5.0, "x_min": [GREEN[0], UV[0]], "x_max": [6.0, 6.0]},
        }
    )
    model = ConstrainedOutputModel(torch.nn.Flatten(), 0)
    with pytest.raises(
        ConfigError, match=r"postprocessing.*settings for 2 channels, the input has 1"
    ):
        gradient_ascent(None, model, config, 0, shape=(1, 1, 4, 4))
    with pytest.raises(ValueError, match="different numbers of channels"):
        ChannelNormClip(norm=[1.0, 2.0, 3.0], x_min=[0.0, 0.0])
    with pytest.raises(ValueError, match="x_max must be >= x_min"):
        ChannelNormClip(x_min=[0.0, 1.0], x_max=[1.0, 0.5])
