"""MaCo's phase-only Fourier parameterization (``mei.parameterization.PhaseFourier``): the
image's magnitude spectrum is fixed, the optimizer changes its phase; the attribution map
(summed absolute gradients with respect to the image) comes back in the run's output."""

import logging

import pytest
import torch
from models import LinearNeurons, PlacedGabor, SeparableVideoNeurons, base_config
from torch.nn.functional import cosine_similarity

from mei.config import validate_config
from mei.errors import ConfigError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel
from mei.parameterization import PhaseFourier, magnitude_spectrum, power_law_magnitude

PHASE = {"path": "mei.parameterization.PhaseFourier", "kwargs": {"decay_power": 1.0}}
SIZE = 32


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _config(**overrides):
    config = base_config(
        optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.1}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 150}},
        parameterization=PHASE,
    )
    del config["postprocessing"]
    config.update(overrides)
    return config


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 1, 7, 9), (2, 2, 3, 6, 5), (3, 1, 16, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_image_has_the_fixed_magnitude_spectrum(shape, dtype):
    parameterization = PhaseFourier(decay_power=1.5)
    params = parameterization.from_image(torch.randn(*shape, dtype=dtype))
    assert params.shape == (*shape[:-1], shape[-1] // 2 + 1)
    fixed = power_law_magnitude(shape[-2], shape[-1], 1.5).to(dtype)
    for phase in (params, params + 3.0 * torch.randn_like(params)):
        image = parameterization(phase)
        assert image.shape == shape and image.dtype == dtype
        spectrum = torch.fft.rfft2(image, norm="ortho").abs()
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(spectrum, fixed.expand_as(spectrum), rtol=tol, atol=tol)
        # zero mean, pixel standard deviation 1 per channel and frame
        flat = image.reshape(*shape[:-2], -1)
        torch.testing.assert_close(
            flat.mean(-1), torch.zeros(shape[:-2], dtype=dtype), atol=tol, rtol=0
        )
        torch.testing.assert_close(
            flat.pow(2).mean(-1), torch.ones(shape[:-2], dtype=dtype), atol=tol * 10, rtol=0
        )
        # element b's image depends on element b's phases only
        torch.testing.assert_close(parameterization(phase[1:]), image[1:])


def test_a_given_magnitude_per_channel_and_a_norm():
    magnitude = torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    magnitude[:, :, [0]] = (magnitude[:, :, [0]] + magnitude[:, :, [0]].roll(-1, 1).flip(1)) / 2
    parameterization = PhaseFourier(magnitude=magnitude.tolist(), norm=7.0)
    image = parameterization(
        parameterization.from_image(torch.randn(3, 2, 6, 7, dtype=torch.float64))
    )
    spectrum = torch.fft.rfft2(image, norm="ortho").abs()
    scale = spectrum[0, 0, 1, 1] / magnitude[0, 1, 1]
    torch.testing.assert_close(spectrum, (scale * magnitude).expand_as(spectrum))
    torch.testing.assert_close(
        image.flatten(1).norm(dim=1), torch.full((3,), 7.0, dtype=torch.float64)
    )
    not_real = magnitude.clone()
    not_real[0, 1, 0] += 1.0  # row 1 of column 0 differs from row -1
    with pytest.raises(ValueError, match=r"columns \[0\] must be symmetric"):
        PhaseFourier(magnitude=not_real).check_shape((1, 2, 6, 7))
    with pytest.raises(
        ValueError, match=r"magnitude \(2, 6, 4\) does not fit inputs \(1, 2, 6, 8\)"
    ):
        PhaseFourier(magnitude=magnitude).check_shape((1, 2, 6, 8))


def test_the_mei_has_the_neurons_phase():
    """Under a fixed magnitude ``A`` the response ``w . x = sum A |W| cos(phase - phase_w)``
    is largest with the filter's phase: the optimum is ``x* = irfft2(A exp(i phase_w))``, the
    parameterization's image of the filter's own phase. The MEI is ``x*`` (cosine 0.986);
    with the filter itself its cosine is lower (the magnitudes differ), stated below."""
    neuron = PlacedGabor()
    mei, score, output = gradient_ascent(
        None, ConstrainedOutputModel(neuron, 0), _config(), 0, shape=(1, 1, SIZE, SIZE)
    )
    reference = PhaseFourier(decay_power=1.0)
    optimum = reference(reference.from_image(neuron.weight))
    assert _cos(mei, optimum) >= 0.98  # 0.986 (the phases of frequencies the Gabor lacks wander)
    spectrum, filter_spectrum = torch.fft.rfft2(mei), torch.fft.rfft2(neuron.weight)
    weight = spectrum.abs() * filter_spectrum.abs()
    agreement = (
        weight * torch.cos(spectrum.angle() - filter_spectrum.angle())
    ).sum() / weight.sum()
    assert agreement >= 0.99  # the MEI's phase is the filter's where both have power
    # 0.44: the 1/f magnitude is not the Gabor's
    assert 0.35 <= _cos(mei, neuron.weight) <= 0.6
    assert set(output) == {"attribution"}


def test_the_attribution_map_peaks_where_the_gabor_is():
    neuron = PlacedGabor(top=2, left=9)
    config = _config()
    _, _, output = gradient_ascent(
        None, ConstrainedOutputModel(neuron, 0), config, 0, shape=(1, 1, SIZE, SIZE)
    )
    [step], [attribution] = output["attribution"]["times"], output["attribution"]["values"]
    assert step == 150 and attribution.shape == (1, 1, SIZE, SIZE)
    # |d loss / d x| = sigmoid(w . x) |w|: the Gabor's envelope, scaled by the steps' gains
    assert _cos(attribution, neuron.weight.abs()) >= 0.99
    peak = divmod(int(attribution.flatten().argmax()), SIZE)
    assert abs(peak[0] - neuron.centre[0]) <= 3 and abs(peak[1] - neuron.centre[1]) <= 3
    inside = attribution[..., 2:23, 9:30].sum() / attribution.sum()
    assert inside > 0.999
    times_input = _config(parameterization={**PHASE, "kwargs": {"attribution": "gradient_x_input"}})
    _, _, output = gradient_ascent(
        None, ConstrainedOutputModel(neuron, 0), times_input, 0, shape=(1, 1, SIZE, SIZE)
    )
    assert (
        output["attribution"]["values"][0][..., 2:23, 9:30].sum()
        / output["attribution"]["values"][0].sum()
        > 0.99
    )
    none = _config(parameterization={**PHASE, "kwargs": {"attribution": None}})
    _, _, output = gradient_ascent(
        None, ConstrainedOutputModel(neuron, 0), none, 0, shape=(1, 1, SIZE, SIZE)
    )
    assert output == {}


@pytest.mark.parametrize("video", [False, True])
def test_batched_equals_single(video, caplog):
    if video:
        model, shape = (
            SeparableVideoNeurons(frames=4, size=9, thetas=(0.6, 2.2, 1.0)),
            (1, 1, 5, 9, 9),
        )
        config = _config(
            response={"path": "mei.modules.TimeWindowResponse", "kwargs": {"start": -1}},
            stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}},
        )
    else:
        model, shape = LinearNeurons(shape=(1, 12, 12), n=3), (1, 1, 12, 12)
        config = _config(transform={"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}})
    with caplog.at_level(logging.INFO, logger="mei.methods"):
        batched = gradient_ascent_units(None, model, config, [4, 5, 6], [0, 1, 2], shape=shape)
    assert "one by one" not in caplog.text
    for unit, (mei, score, output) in enumerate(batched):
        alone = gradient_ascent(
            None, ConstrainedOutputModel(model, unit), config, 4 + unit, shape=shape
        )
        torch.testing.assert_close(mei, alone[0], rtol=1e-5, atol=1e-5)
        assert score == pytest.approx(alone[1], rel=1e-5, abs=1e-6)
        [attribution] = output["attribution"]["values"]
        assert attribution.shape == shape
        torch.testing.assert_close(
            attribution, alone[2]["attribution"]["values"][0], rtol=1e-5, atol=1e-6
        )


def test_an_element_that_stops_early_stops_adding_to_its_attribution():
    config = _config(
        stopper={
            "path": "custom_components.EvaluationAbove",
            "kwargs": {"threshold": 60.0, "max_steps": 40},
        },
    )
    model = LinearNeurons(shape=(1, 12, 12), n=3)
    batched = gradient_ascent_units(None, model, config, [1, 2, 3], [0, 1, 2], shape=(1, 1, 12, 12))
    steps = {output["attribution"]["times"][0] for _, _, output in batched}
    assert len(steps) > 1, steps  # the elements stopped at different steps
    for unit, (mei, _, output) in enumerate(batched):
        alone = gradient_ascent(
            None, ConstrainedOutputModel(model, unit), config, 1 + unit, shape=(1, 1, 12, 12)
        )
        torch.testing.assert_close(mei, alone[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            output["attribution"]["values"][0], alone[2]["attribution"]["values"][0]
        )


def test_the_magnitude_spectrum_of_a_labs_images():
    """Gratings ``a cos(2 pi 3 x / W)``: one frequency, ``|X| = a sqrt(H W) / 2`` there."""
    xs = torch.arange(16, dtype=torch.float64)
    grating = torch.cos(2 * torch.pi * 3 * xs / 16).expand(12, 16)
    amplitudes = torch.tensor([1.0, 2.0, 3.0, 6.0])
    images = (amplitudes[:, None, None, None] * grating + 5.0).float()  # (4, 1, 12, 16), mean 5
    spectrum = magnitude_spectrum(images)
    expected = torch.zeros(1, 12, 9)
    expected[0, 0, 3] = amplitudes.mean() * (12 * 16) ** 0.5 / 2
    torch.testing.assert_close(spectrum, expected, atol=1e-4, rtol=1e-5)
    loader = [(images[:2], torch.zeros(2)), (images[2:], torch.zeros(2))]
    torch.testing.assert_close(magnitude_spectrum({"train": {"a": loader}}), spectrum)
    with_mean = magnitude_spectrum(images, remove_mean=False)
    assert with_mean[0, 0, 0] == pytest.approx(5.0 * (12 * 16) ** 0.5, rel=1e-5)
    # and a run with it: every step's image has that spectrum
    config = _config(
        parameterization={
            "path": "mei.parameterization.PhaseFourier",
            "kwargs": {"magnitude": spectrum.tolist()},
        }
    )
    mei, _, _ = gradient_ascent(
        None,
        ConstrainedOutputModel(LinearNeurons(shape=(1, 12, 16)), 0),
        config,
        0,
        shape=(1, 1, 12, 16),
    )
    torch.testing.assert_close(
        torch.fft.rfft2(mei, norm="ortho").abs(), spectrum[None], atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize(
    "kwargs, shape, message",
    [
        ({"decay_power": -1.0}, None, r"decay_power must be >= 0"),
        ({"norm": 0.0}, None, r"norm must be positive"),
        ({"attribution": "saliency"}, None, r"attribution must be one of"),
        ({"magnitude": [1.0, 2.0]}, None, r"magnitude must be \(H, W // 2 \+ 1\)"),
        ({"magnitude": [[1.0, -2.0]]}, None, r"magnitude must be finite and >= 0"),
        ({"magnitude": [[0.0, 0.0]]}, None, r"magnitude is zero everywhere"),
        ({}, (1, 8, 8), r"PhaseFourier expects images \(B, C, H, W\) or movies"),
        ({"magnitude": [[1.0] * 5] * 8}, (1, 1, 8, 10), r"magnitude \(8, 5\) does not fit"),
    ],
)
def test_bad_arguments_are_refused_before_the_first_step(kwargs, shape, message):
    config = _config(
        parameterization={"path": "mei.parameterization.PhaseFourier", "kwargs": kwargs}
    )
    pattern = r"config\['parameterization'\] \(mei.parameterization.PhaseFourier\): .*" + message
    if shape is None:
        with pytest.raises(ConfigError, match=pattern):
            validate_config(config)
    else:
        model = ConstrainedOutputModel(
            LinearNeurons(shape=shape[1:] if len(shape) == 4 else (1, 8), n=1), 0
        )
        with pytest.raises(ConfigError, match=pattern):
            gradient_ascent(None, model, config, 0, shape=shape)
