"""``State.transformed_input`` is exactly what the model saw at that step.

Transforms may return the input itself or a view of it (``expand``, slicing); the step then
changes the input in place. A forward hook on the model records what it was given.
"""

import pytest
import torch
from torch import nn

from mei import transforms
from mei.optimization import MEI, optimize
from mei.stoppers import NumIterations
from mei.tracking import Tracker


class Linear(nn.Module):
    """One linear neuron per element, on inputs of ``shape``."""

    def __init__(self, shape):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(1, *shape, generator=g), requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.weight.flatten(1).T


class TopLeftCrop:
    """A view of the input starting at storage offset 0 (same data pointer as the input)."""

    def __call__(self, x, i_iteration=None):
        return x[..., :4, :3]


class InnerCrop:
    """A view of the input at a non-zero offset."""

    def __call__(self, x, i_iteration=None):
        return x[..., 1:5, 2:5]


def _transformed_inputs(transform, model_shape, x=None, steps=4):
    """Run ``steps`` steps; return what the model saw per step and the States' values."""
    model = Linear(model_shape)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    if x is None:
        x = torch.randn(2, 1, 6, 5, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    optimizer = torch.optim.SGD([x], lr=0.5)
    mei = MEI(model, x, optimizer, transform=transform)
    batch = len(x)
    trackers = [Tracker(t=lambda state: state.transformed_input) for _ in range(batch)]
    optimize(mei, [NumIterations(steps) for _ in range(batch)], trackers)
    recorded = [tracker.log["t"]["values"] for tracker in trackers]
    return seen[:steps], recorded  # the last call is the final evaluation


@pytest.mark.parametrize(
    "transform, model_shape",
    [
        (transforms.GrayscaleToRGB(), (3, 6, 5)),
        (TopLeftCrop(), (1, 4, 3)),
        (InnerCrop(), (1, 4, 3)),
        (transforms.Identity(), (1, 6, 5)),
        (transforms.Jitter(2), (1, 6, 5)),
        (None, (1, 6, 5)),
    ],
    ids=["grayscale-to-rgb", "top-left-crop", "inner-crop", "identity", "jitter", "none"],
)
def test_transformed_input_is_what_the_model_saw(transform, model_shape):
    seen, recorded = _transformed_inputs(transform, model_shape)
    assert not torch.equal(seen[0], seen[1])  # the step changes what the model sees
    for step, model_input in enumerate(seen):
        for b, values in enumerate(recorded):
            assert values[step].shape == (1, *model_shape)
            assert torch.equal(values[step], model_input[b : b + 1])


@pytest.mark.parametrize("transform", [transforms.Identity(), InnerCrop()])
def test_views_of_an_input_with_gaps_are_recorded_too(transform):
    # An input with gaps between its elements: its copy does not share its layout, so the
    # view cannot be re-created on the copy and is copied at the step instead.
    x = torch.randn(2, 1, 12, 5, generator=torch.Generator().manual_seed(2))[:, :, ::2]
    assert not x.is_contiguous()
    seen, recorded = _transformed_inputs(transform, (1, *transform(x).shape[2:]), x=x.detach())
    assert not torch.equal(seen[0], seen[1])
    for step, model_input in enumerate(seen):
        for b, values in enumerate(recorded):
            assert torch.equal(values[step], model_input[b : b + 1])
