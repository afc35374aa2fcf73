"""Movies ``(B, C, T, H, W)``: video pieces with known answers, and the engine on video neurons."""

import pytest
import torch
from models import SeparableVideoNeurons, base_config
from torch.nn.functional import cosine_similarity

from mei import preconditioning, regularization, transforms
from mei.errors import ConfigError, ModelError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel, TimeWindowResponse


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _movie(seed=0, shape=(2, 1, 5, 6, 7)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_resize_acts_on_every_frame_and_keeps_time():
    x = _movie()
    out = transforms.Resize(2.0)(x, 0)
    assert out.shape == (2, 1, 5, 12, 14)
    for t in range(5):
        torch.testing.assert_close(out[:, :, t], transforms.Resize(2.0)(x[:, :, t], 0))


def test_grayscale_to_rgb_repeats_the_channel_of_movies():
    x = _movie()
    out = transforms.GrayscaleToRGB()(x, 0)
    assert out.shape == (2, 3, 5, 6, 7)
    for c in range(3):
        assert torch.equal(out[:, c], x[:, 0])


def test_total_variation_over_time_counts_frame_changes():
    movie = torch.zeros(1, 1, 4, 3, 5)
    movie[:, :, 2:] = 1.0  # one change between frames 1 and 2, of 15 pixels
    spatial = regularization.TotalVariation(weight=2.0)
    assert spatial(movie, 0).item() == 0.0  # every frame is flat
    both = regularization.TotalVariation(weight=2.0, temporal_weight=0.5)
    assert both(movie, 0).item() == 2.0 * 0.5 * 15
    with pytest.raises(ValueError, match="acts on the time axis of movies"):
        both(movie[:, :, 0], 0)


def test_temporal_blur_matches_scipy_and_keeps_constant_movies():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _movie(shape=(2, 2, 11, 3, 4))
    ours = preconditioning.TemporalBlur(sigma=1.3)(x, 0)
    theirs = ndimage.gaussian_filter1d(x.numpy(), 1.3, axis=2, truncate=4.0, mode="nearest")
    torch.testing.assert_close(ours, torch.from_numpy(theirs))
    constant = torch.ones(1, 1, 6, 2, 2) * 3.0
    torch.testing.assert_close(preconditioning.TemporalBlur(sigma=2.0)(constant, 0), constant)
    # only time is blurred: a frame-wise pattern constant in time is kept
    pattern = _movie(shape=(1, 1, 1, 5, 5)).expand(1, 1, 7, 5, 5)
    torch.testing.assert_close(preconditioning.TemporalBlur(sigma=1.0)(pattern, 0), pattern)


def test_a_temporal_component_on_images_is_refused_before_the_first_step():
    config = base_config(
        precondition={"path": "mei.preconditioning.TemporalBlur", "kwargs": {"sigma": 1.0}}
    )
    model = ConstrainedOutputModel(torch.nn.Flatten(), 0)
    with pytest.raises(ConfigError, match=r"config\['precondition'\].*TemporalBlur.*movies"):
        gradient_ascent(None, model, config, 0, shape=(1, 1, 8, 8))


def test_time_window_response_reduces_the_chosen_frames():
    responses = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # (B, T, N)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return responses

    last_two = TimeWindowResponse(Fixed(), start=-2)(None)
    torch.testing.assert_close(last_two, responses[:, -2:].mean(1))
    summed = TimeWindowResponse(Fixed(), start=1, stop=3, reduce="sum")(None)
    torch.testing.assert_close(summed, responses[:, 1] + responses[:, 2])
    by_neuron = TimeWindowResponse(Fixed(), start=-1, time_dim=2)(None)  # (B, N, T) layout
    torch.testing.assert_close(by_neuron, responses[:, :, -1])
    with pytest.raises(ModelError, match="holds none of the model's 5 output frames"):
        TimeWindowResponse(Fixed(), start=7)(None)
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'sum'"):
        TimeWindowResponse(Fixed(), reduce="max")


def _video_config(**overrides):
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
        precondition={"path": "mei.preconditioning.TemporalBlur", "kwargs": {"sigma": 0.5}},
    )
    config.update(overrides)
    return config


def test_a_separable_space_time_neuron_gets_its_filter_back():
    neurons = SeparableVideoNeurons(frames=8, size=15)
    model = ConstrainedOutputModel(TimeWindowResponse(neurons, start=-1), 0)
    mei, score, _ = gradient_ascent(None, model, _video_config(), 0, shape=(1, 1, 8, 15, 15))
    assert mei.shape == (1, 1, 8, 15, 15)
    assert _cos(mei, neurons.kernels[0]) >= 0.95
    assert torch.allclose(mei.norm(), torch.tensor(10.0), atol=1e-4)


def test_frame_sum_objective_finds_the_sum_of_the_shifted_filters():
    """A linear neuron summed over its last two output frames responds to ``(w_a + w_b) . x``,
    where ``w_a``, ``w_b`` are its filter placed at the last two positions of the movie: under
    a fixed norm the MEI is that sum's direction."""
    neurons = SeparableVideoNeurons(frames=6, size=11, linear=True)
    kernel = neurons.kernels[0, 0]
    optimum = torch.zeros(1, 1, 9, 11, 11)
    optimum[0, 0, 2:8] += kernel
    optimum[0, 0, 3:9] += kernel
    config = _video_config(precondition=None)
    for reduce in ("sum", "mean"):
        model = ConstrainedOutputModel(TimeWindowResponse(neurons, start=-2, reduce=reduce), 0)
        mei, _, _ = gradient_ascent(None, model, config, 1, shape=(1, 1, 9, 11, 11))
        assert _cos(mei, optimum) >= 0.999


@pytest.mark.parametrize("jitter", [False, True])
def test_video_units_batched_equal_their_single_runs_and_find_their_filters(jitter):
    neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
    model = TimeWindowResponse(neurons, start=-1)
    config = _video_config(
        regularization={
            "path": "mei.regularization.TotalVariation",
            "kwargs": {"weight": 1e-4, "temporal_weight": 0.1},
        },
    )
    if jitter:  # random per element: each element draws its own shifts
        config["transform"] = {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}}
    shape = (1, 1, 8, 15, 15)
    batched = gradient_ascent_units(None, model, config, [3, 4], [0, 1], shape=shape)
    for unit, (mei, score, _) in enumerate(batched):
        alone, alone_score, _ = gradient_ascent(
            None, ConstrainedOutputModel(model, unit), config, 3 + unit, shape=shape
        )
        torch.testing.assert_close(mei, alone, rtol=1e-5, atol=1e-5)
        assert abs(score - alone_score) < 1e-4
        if not jitter:
            assert _cos(mei, neurons.kernels[unit]) >= 0.95
