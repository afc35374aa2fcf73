"""The parameterization slot: the optimizer changes parameters, the model sees their image."""

import pytest
import torch
from models import GaborNeuron, LinearNeurons, base_config, gabor
from torch.nn.functional import cosine_similarity

from mei.errors import ConfigError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel
from mei.parameterization import Fourier, Pixel

FOURIER = {"path": "mei.parameterization.Fourier", "kwargs": {"decay_power": 1.0}}


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 1, 7, 9), (2, 2, 3, 6, 5)])
def test_fourier_maps_an_image_to_parameters_and_back(shape):
    image = torch.randn(*shape, dtype=torch.float64)
    parameterization = Fourier(decay_power=1.5)
    params = parameterization.from_image(image)
    assert params.shape == (*shape[:-1], shape[-1] // 2 + 1, 2)
    torch.testing.assert_close(parameterization(params), image)
    # element b's image depends on element b's parameters only
    torch.testing.assert_close(parameterization(params[1:]), image[1:])


def test_fourier_steps_change_low_frequencies_most():
    """A unit gradient step on the parameters of a flat image changes low frequencies more
    than high ones, by the scale ``1 / f``: the decorrelated parameterization."""
    parameterization = Fourier(decay_power=1.0)
    params = parameterization.from_image(torch.zeros(1, 1, 16, 16)).requires_grad_(True)
    image = parameterization(params)
    (image * torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))).sum().backward()
    step = parameterization(params.detach() + params.grad)
    power = torch.fft.rfft2(step[0, 0]).abs() ** 2
    assert power[1, 1] > 10 * power[8, 8]


def _seen_config(**overrides):
    config = base_config(
        parameterization=FOURIER,
        objectives=[{"path": "custom_components.SeenInput"}],
        **overrides,
    )
    return config


def test_the_returned_mei_is_the_image_the_model_saw():
    model = ConstrainedOutputModel(LinearNeurons(), 2)
    mei, score, output = gradient_ascent(None, model, _seen_config(), 0, shape=(1, 1, 8, 8))
    seen = output["custom_components.SeenInput"]["values"]
    assert len(seen) == 51
    for (_, before), (saw, _) in zip(seen, seen[1:], strict=False):
        torch.testing.assert_close(saw, before)  # step i saw the image step i - 1 left
    torch.testing.assert_close(seen[-1][1], mei)  # and the MEI is the last image
    assert score == pytest.approx(model(seen[-1][0]).item(), rel=1e-5)  # the last step's
    assert torch.allclose(mei.norm(), torch.tensor(3.0), atol=1e-4)  # ChangeNorm on the image
    final = gradient_ascent(None, model, _seen_config(score="final"), 0, shape=(1, 1, 8, 8))
    torch.testing.assert_close(final[0], mei)
    assert final[1] == pytest.approx(model(mei).item(), rel=1e-5)


def test_pixel_is_the_default():
    model = ConstrainedOutputModel(LinearNeurons(), 1)
    plain = gradient_ascent(None, model, base_config(), 3, shape=(1, 1, 8, 8))
    named = base_config(parameterization={"path": "mei.parameterization.Pixel"})
    pixel = gradient_ascent(None, model, named, 3, shape=(1, 1, 8, 8))
    assert torch.equal(plain[0], pixel[0]) and plain[1] == pixel[1]
    assert Pixel()(plain[0]) is plain[0]


def test_batched_fourier_equals_single_runs():
    model = LinearNeurons(n=3)
    config = base_config(
        parameterization=FOURIER,
        transform={"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}},
    )
    batched = gradient_ascent_units(None, model, config, [5, 6, 7], [0, 1, 2], shape=(1, 1, 8, 8))
    for unit, (mei, score, _) in enumerate(batched):
        alone = gradient_ascent(
            None, ConstrainedOutputModel(model, unit), config, 5 + unit, shape=(1, 1, 8, 8)
        )
        torch.testing.assert_close(mei, alone[0], rtol=1e-5, atol=1e-5)
        assert score == pytest.approx(alone[1], rel=1e-5)


def _steps_to_gabor(parameterization, lr):
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": lr}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
        stopper={"path": "custom_components.ReachCosine", "kwargs": {"threshold": 0.95}},
        objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
    )
    if parameterization is not None:
        config["parameterization"] = parameterization
    mei, _, output = gradient_ascent(None, GaborNeuron(), config, 0, shape=(1, 1, 21, 21))
    return len(output["mei.objectives.EvaluationObjective"]["times"]), _cos(mei, gabor())


@pytest.mark.parametrize("lr", [0.03, 0.1])
def test_fourier_reaches_a_gabor_neurons_filter_in_fewer_steps_than_pixels(lr):
    fourier = {"path": "mei.parameterization.Fourier", "kwargs": {"fixed_norm": True}}
    pixel_steps, pixel_cos = _steps_to_gabor(None, lr)
    fourier_steps, fourier_cos = _steps_to_gabor(fourier, lr)
    assert fourier_cos >= 0.95 and pixel_cos >= 0.95  # both arrive
    assert fourier_steps < pixel_steps


def test_without_fixed_norm_a_norm_constraint_stops_fourier_short_of_the_filter():
    """Under ChangeNorm the parameterized steps settle on the filter smoothed by the scale,
    not on the filter: ``fixed_norm=True`` drops the gradient's radial part and fixes that."""
    steps, cosine = _steps_to_gabor(FOURIER, 0.1)
    assert steps == 300 and cosine < 0.9


def test_parameterization_config_errors():
    model = ConstrainedOutputModel(LinearNeurons(), 0)
    bad = base_config(parameterization={"path": "mei.transforms.Identity"})
    with pytest.raises(ConfigError, match=r"parameterization.*no from_image"):
        gradient_ascent(None, model, bad, 0, shape=(1, 1, 8, 8))
    with pytest.raises(ConfigError, match=r"decay_power must be >= 0"):
        gradient_ascent(
            None,
            model,
            base_config(parameterization={"path": FOURIER["path"], "kwargs": {"decay_power": -1}}),
            0,
            shape=(1, 1, 8, 8),
        )
