"""open-retina users' recipes (issue 23, part 4): the pieces with known answers, and open-retina's
published MEI and MDS recipes run through method configs on an open-retina model, against
open-retina's own optimizer on the same model and seed.

The comparisons with open-retina's classes skip without open-retina (see openretina_testkit), except
where .ci/run requires it; the rest runs everywhere.
"""

from __future__ import annotations

import math

import openretina_testkit as ort
import pytest
import torch
from torch import nn

from mei.config import resolve_config
from mei.domain import State
from mei.errors import ConfigError, ModelError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ClusterContrast, ConstrainedOutputModel, TimeWindowResponse
from mei.preconditioning import TemporalBlur, temporal_blur
from mei.regularization import RangePenalty, range_penalty
from mei.stoppers import LossEarlyStopping

REGULARIZER = "insilico.stimulus_optimization.regularizer"


def _config(**entries):
    config = {
        "device": "cpu",
        "initial": {"path": "mei.initial.RandomNormal", "kwargs": {"std": 0.1}},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 1}},
    }
    config.update(entries)
    return config


class Linear(nn.Module):
    """``(B, ...) -> (B, N)``: ``N`` linear neurons of seeded weights."""

    def __init__(self, n=2, size=16, seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, size, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


SHAPE = (1, 1, 4, 4)


# --- a. the start passed through the postprocessing ---------------------------------------


def test_the_start_passes_through_the_postprocessing_before_the_first_step():
    """With lr 0 the one step leaves the input as it is; the postprocessing doubles it after
    the step, and with ``postprocess_start`` before it too: 4 times the drawn start."""
    double = {"path": "mei.preconditioning.MultiplyBy", "kwargs": {"const": 2.0}}
    config = _config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.0}}, postprocessing=double
    )
    drawn = torch.Generator().manual_seed(5)
    start = torch.randn(SHAPE, generator=drawn) * 0.1
    model = ConstrainedOutputModel(Linear(), 0)
    plain, _, _ = gradient_ascent(model=model, config=config, seed=5, shape=SHAPE)
    torch.testing.assert_close(plain, 2 * start)  # the default: the start as drawn
    started, _, _ = gradient_ascent(
        model=model, config={**config, "postprocess_start": True}, seed=5, shape=SHAPE
    )
    torch.testing.assert_close(started, 4 * start)
    clip = {"path": "mei.postprocessing.ClipRange", "kwargs": {"x_min": -0.05, "x_max": 0.05}}
    own, _, _ = gradient_ascent(
        model=model, config={**config, "postprocess_start": clip}, seed=5, shape=SHAPE
    )
    torch.testing.assert_close(own, 2 * start.clamp(-0.05, 0.05))


def test_a_postprocessed_start_of_a_batch_equals_each_single_run():
    config = _config(
        stopper={"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 5}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 1.0}},
        postprocess_start=True,
    )
    model = Linear(n=3)
    batched = gradient_ascent_units(None, model, config, [1, 2, 3], [0, 1, 2], shape=SHAPE)
    for unit, (mei, score, _) in enumerate(batched):
        single, single_score, _ = gradient_ascent(
            model=ConstrainedOutputModel(model, unit), config=config, seed=unit + 1, shape=SHAPE
        )
        torch.testing.assert_close(mei, single)
        assert math.isclose(score, single_score, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (True, r"config\['postprocess_start'\]: true passes the start through the config's "),
        ("yes", r"config\['postprocess_start'\]: must be true, false or an entry"),
        (
            {"path": "custom_components.RunsInstead"},
            r"config\['postprocess_start'\] \(custom_components.RunsInstead\): built a "
            r"RunsInstead, which does not fit the postprocessing slot",
        ),
    ],
)
def test_a_bad_postprocess_start_is_refused_naming_the_key(value, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(_config(postprocess_start=value))


# --- b. the range penalty -------------------------------------------------------------------


def test_range_penalty_is_the_formula():
    """Channel 0 in [-1, 1], channel 1 above 0: the values past the bounds add their excess;
    the norm past 3 adds its excess; times the factor."""
    x = torch.zeros(1, 2, 1, 3)
    x[0, 0, 0] = torch.tensor([-3.0, 0.5, 2.0])  # 2 below, 1 above
    x[0, 1, 0] = torch.tensor([-0.25, 1.0, 0.0])  # 0.25 below
    norm = math.sqrt(9 + 0.25 + 4 + 0.0625 + 1)
    expected = 2 + 1 + 0.25 + (norm - 3)
    penalty = RangePenalty([[-1.0, 1.0], [0.0, None]], max_norm=3.0, factor=0.5)
    torch.testing.assert_close(penalty(x, 0), torch.tensor([0.5 * expected]))
    assert range_penalty(x, [(None, None)]).item() == 0.0
    both = torch.cat([x, torch.zeros_like(x)])  # per element: the second is in range
    torch.testing.assert_close(penalty(both, 0), torch.tensor([0.5 * expected, 0.0]))


def test_range_penalty_refuses_bad_ranges_and_more_channels_than_the_input():
    with pytest.raises(ValueError, match=r"min_max_values\[1\] must be a pair"):
        RangePenalty([[0.0, 1.0], [0.0]])
    with pytest.raises(ValueError, match=r"min_max_values\[0\]: high must be >= low"):
        RangePenalty([[1.0, 0.0]])
    with pytest.raises(ConfigError, match=r"RangePenalty has ranges for 3 channels"):
        gradient_ascent(
            model=ConstrainedOutputModel(Linear(), 0),
            config=_config(
                regularization={
                    "path": "mei.regularization.RangePenalty",
                    "kwargs": {"min_max_values": [[0, 1]] * 3},
                }
            ),
            seed=0,
            shape=SHAPE,
        )


def test_range_penalty_gives_open_retinas_numbers():
    regularizer = ort.openretina(REGULARIZER)
    x = 3 * torch.randn(1, 2, 7, 5, 4, generator=torch.Generator().manual_seed(0))
    for ranges, max_norm, factor in [
        (ort.RANGES, 5.0, 0.3),
        ([(-0.5, None), (None, 0.5)], None, 2.0),
        ([(0.0, 1.0)], 100.0, 1.0),
    ]:
        theirs = regularizer.RangeRegularizationLoss(ranges, max_norm, factor).forward(x)
        ours = RangePenalty(ranges, max_norm, factor)(x, 0)
        torch.testing.assert_close(ours, theirs.reshape(1), rtol=1e-6, atol=0)


# --- c. open-retina's early stopping ---------------------------------------------------------


def _state(i, loss, reg_term=0.0):
    none = torch.zeros(1)
    return State(i, reg_term - loss, reg_term, none, none, none, none, none)


LOSSES = [5.0, 4.0, 4.05, 3.0, 3.5, 3.5, 3.2, 2.0, 2.0, 2.6, 2.5, 2.7]


@pytest.mark.parametrize(
    ("patience", "min_delta", "max_iterations", "stops_at"),
    [
        (1, 0.0, None, 2),  # 4.05 > 4.0
        (1, 0.1, None, 4),  # 4.05 is within 0.1 of 4.0; 3.5 is not within 0.1 of 3.0
        (2, 0.0, None, 5),  # 3.5, 3.5 (the count is not reset by a loss above the lowest)
        (3, 0.3, None, 11),  # 3.5 once (3.5 again, 3.2: within 0.3); 2.6, 2.5 (2.0 lowest), 2.7
        (4, 0.0, 9, 8),  # max_iterations 9: 9 steps, i_iter 0 to 8
    ],
)
def test_loss_early_stopping_counts_as_open_retina(patience, min_delta, max_iterations, stops_at):
    """A loss below the lowest resets the count, one more than ``min_delta`` above it counts,
    one in between (or equal) does nothing; the stopper reads the loss ``reg_term -
    evaluation``."""
    stopper = LossEarlyStopping(max_iterations, patience, min_delta)
    decisions = [stopper(_state(i, loss, reg_term=0.5))[0] for i, loss in enumerate(LOSSES)]
    assert decisions.index(True) == stops_at


def test_loss_early_stopping_decides_as_open_retinas_early_stopper():
    stopping = ort.openretina("insilico.stimulus_optimization.optimization_stopper")
    losses = torch.randn(200, generator=torch.Generator().manual_seed(3)).cumsum(0).tolist()
    for patience, min_delta in [(1, 0.0), (2, 0.5), (5, 1.0), (3, 0.0)]:
        theirs = stopping.EarlyStopper(patience=patience, min_delta=min_delta)
        ours = LossEarlyStopping(patience=patience, min_delta=min_delta)
        for i, loss in enumerate(losses):
            loss32 = float(torch.tensor(loss, dtype=torch.float32))
            assert ours(_state(i, loss32))[0] == theirs.early_stop(loss32), (patience, i)


def test_loss_early_stopping_refuses_bad_arguments():
    for kwargs, match in [
        ({"patience": 0}, "patience must be a positive integer"),
        ({"min_delta": -1.0}, "min_delta must be >= 0"),
        ({"max_iterations": 0}, "max_iterations must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            LossEarlyStopping(**kwargs)


class SineNeurons(nn.Module):
    """``sin(a_n * sum(x))``: SGD's steps overshoot the peak, by more for a larger ``a_n``;
    each neuron's loss then rises and its stopper ends its run."""

    def __init__(self, rates=(0.5, 0.4)):
        super().__init__()
        self.register_buffer("rates", torch.tensor(rates))

    def forward(self, x):
        return torch.sin(x.flatten(1).sum(1, keepdim=True) * self.rates)


def test_each_element_of_a_batch_stops_as_its_own_run():
    config = _config(
        stopper={"path": "mei.stoppers.LossEarlyStopping", "kwargs": {"max_iterations": 100}},
        objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
    )
    model = SineNeurons()
    batched = gradient_ascent_units(None, model, config, 4, [0, 1], shape=SHAPE)
    steps = []
    for unit, (mei, score, log) in enumerate(batched):
        single, single_score, single_log = gradient_ascent(
            model=ConstrainedOutputModel(model, unit), config=config, seed=4, shape=SHAPE
        )
        torch.testing.assert_close(mei, single)
        assert score == single_score and log == single_log
        steps.append(len(log["mei.objectives.EvaluationObjective"]["times"]))
    assert steps[0] < steps[1] < 100  # each stopped on its own, past its peak


# --- d. a response window that reaches past the end -----------------------------------------


class Frames(nn.Module):
    """Responses ``(B, T, N)``: frame ``t`` of neuron ``n`` is ``10 n + t``."""

    def forward(self, x):
        frames = torch.arange(6.0)
        return (frames[:, None] + 10 * torch.arange(2.0))[None].expand(len(x), 6, 2)


def test_a_window_past_the_end_keeps_the_frames_it_covers_as_open_retinas_reducer():
    x = torch.zeros(1, 1)
    torch.testing.assert_close(TimeWindowResponse(Frames(), 4, 10)(x), torch.tensor([[4.5, 14.5]]))
    with pytest.raises(ModelError, match=r"the window \[6:10\] holds none of the model's 6 output"):
        TimeWindowResponse(Frames(), 6, 10)(x)
    objective = ort.openretina("insilico.stimulus_optimization.objective")
    responses = Frames()(x)[0]
    for start, length in [(4, 6), (0, 10), (2, 3)]:
        theirs = objective.SliceMeanReducer(axis=0, start=start, length=length).forward(responses)
        ours = TimeWindowResponse(Frames(), start, start + length)(x)
        torch.testing.assert_close(ours[0], theirs)


def test_a_strict_window_past_the_end_is_an_error_naming_the_window_and_the_frames():
    x = torch.zeros(1, 1)
    with pytest.raises(ModelError, match=r"the window \[4:10\] reaches past the model's 6 output "):
        TimeWindowResponse(Frames(), 4, 10, strict=True)(x)
    with pytest.raises(ModelError, match=r"the window \[-8:None\] reaches past"):
        TimeWindowResponse(Frames(), -8, strict=True)(x)
    inside = TimeWindowResponse(Frames(), -2, 6, strict=True)(x)  # windows within: unchanged
    torch.testing.assert_close(inside, TimeWindowResponse(Frames(), -2)(x))
    assert "strict=True" in repr(TimeWindowResponse(Frames(), 1, strict=True))
    assert "strict" not in repr(TimeWindowResponse(Frames(), 1))


# --- e. a temporal low-pass of any kernel size with zero padding ------------------------------


@pytest.mark.parametrize("kernel_size", [1, 2, 4, 5, 12])
def test_a_sized_temporal_kernel_is_open_retinas_window(kernel_size):
    """An impulse at frame 4 of 9 gives the window back, reversed, centred as a ``padding=
    "same"`` convolution puts it, cut off at the movie's ends (zeros outside)."""
    sigma = 1.5
    taps = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    window = torch.exp(-(taps**2) / (2 * sigma**2))
    window = window / window.sum()
    impulse = torch.zeros(1, 1, 9, 1, 1)
    impulse[0, 0, 4] = 1.0
    out = TemporalBlur(sigma, kernel_size=kernel_size, pad_mode="constant")(impulse, 0)
    before = (kernel_size - 1) // 2
    expected = torch.zeros(9)
    for k in range(kernel_size):  # out[t] = sum_k window[k] * x[t + k - before]
        t = 4 - k + before
        if 0 <= t < 9:
            expected[t] = window[k]
    torch.testing.assert_close(out.flatten(), expected)


def test_sized_temporal_kernels_give_open_retinas_numbers():
    regularizer = ort.openretina(REGULARIZER)
    x = torch.randn(2, 2, 9, 5, 4, generator=torch.Generator().manual_seed(1))
    for sigma, size in [(0.5, 5), (2.0, 4), (1.0, 13), (3.0, 1)]:
        theirs = regularizer.TemporalGaussianLowPassFilterProcessor(sigma, size).process(x)
        ours = temporal_blur(x, sigma, pad_mode="constant", kernel_size=size)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_temporal_blur_without_a_kernel_size_is_unchanged():
    x = torch.randn(1, 1, 8, 2, 2, generator=torch.Generator().manual_seed(2))
    window = torch.exp(-0.5 * (torch.arange(-4.0, 5.0, dtype=torch.float64) / 1.0) ** 2)
    padded = torch.nn.functional.pad(x.movedim(2, -1).reshape(-1, 1, 8), (4, 4), mode="replicate")
    expected = torch.nn.functional.conv1d(padded, (window / window.sum()).float().view(1, 1, -1))
    out = TemporalBlur(1.0)(x, 0)
    torch.testing.assert_close(out, expected.reshape(1, 1, 2, 2, 8).movedim(-1, 2))
    assert repr(TemporalBlur(1.0)) == "TemporalBlur(sigma=1.0, truncate=4, pad_mode='replicate')"


def test_a_bad_kernel_size_is_refused():
    with pytest.raises(ValueError, match="kernel_size must be a positive integer, got 0"):
        TemporalBlur(1.0, kernel_size=0)
    with pytest.raises(ValueError, match=r"reflect padding of a 9-frame kernel needs more than 4"):
        TemporalBlur(1.0, kernel_size=9, pad_mode="reflect").check_shape((1, 1, 4, 2, 2))


# --- f. components of other libraries named by path -----------------------------------------


def _run(**entries):
    config = _config(stopper={"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 3}}, **entries)
    return gradient_ascent(
        model=ConstrainedOutputModel(Linear(), 0), config=config, seed=2, shape=SHAPE
    )


def test_classes_called_through_forward_or_process_fill_their_slots():
    """A class with ``forward(stimulus)`` and no call (open-retina's losses), one with
    ``process(x)`` (its postprocessors), a module whose ``forward`` takes the input alone:
    each runs where mei's own component of the same numbers runs, with the same result."""
    theirs = _run(
        regularization={"path": "custom_components.ForwardOnlyPenalty", "kwargs": {"weight": 0.5}},
        postprocessing={
            "path": "mei.transforms.Compose",
            "kwargs": {
                "transforms": [
                    {"path": "custom_components.ScaleModule", "kwargs": {"factor": 0.9}},
                    {"path": "custom_components.ProcessOnlyClip", "kwargs": {"low": -1, "high": 1}},
                ]
            },
        },
        transform={"path": "custom_components.ScaleModule", "kwargs": {"factor": 2.0}},
    )
    ours = _run(
        regularization={
            "path": "mei.regularization.L2ToReference",
            "kwargs": {"reference": 0.0, "weight": 0.5},
        },
        postprocessing={
            "path": "mei.transforms.Compose",
            "kwargs": {
                "transforms": [
                    {"path": "mei.preconditioning.MultiplyBy", "kwargs": {"const": 0.9}},
                    {"path": "mei.postprocessing.ClipRange", "kwargs": {"x_min": -1, "x_max": 1}},
                ]
            },
        },
        transform={"path": "mei.preconditioning.MultiplyBy", "kwargs": {"const": 2.0}},
    )
    torch.testing.assert_close(theirs[0], ours[0])
    assert theirs[1] == pytest.approx(ours[1], rel=1e-6)
    assert not torch.equal(theirs[0], _run()[0])  # the components did something


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("custom_components.RunsInstead", r"is not callable and has no forward\(x\) or process"),
        ("custom_components.ForwardTakesThree", r"neither its call nor its forward method takes"),
    ],
)
def test_a_class_without_a_fitting_call_is_refused_naming_key_and_path(path, why):
    with pytest.raises(ConfigError) as error:
        resolve_config(_config(regularization={"path": path}))
    message = str(error.value)
    assert message.startswith(f"config['regularization'] ({path}): built a ")
    assert "does not fit the regularization slot" in message and __import__("re").search(
        why, message
    )


def test_open_retinas_classes_by_path_give_mei_components_numbers():
    """open-retina's RangeRegularizationLoss, ChangeNormJointlyClipRangeSeparately and
    TemporalGaussianLowPassFilterProcessor named by path: the run is the run with mei's
    RangePenalty, ChannelNormClip and TemporalBlur(kernel_size=..., pad_mode="constant")."""
    ort.openretina(REGULARIZER)
    path = "openretina." + REGULARIZER + "."
    ranges = [list(r) for r in ort.RANGES]
    theirs = {
        "regularization": {
            "path": path + "RangeRegularizationLoss",
            "kwargs": {"min_max_values": ranges, "max_norm": 4.0, "factor": 0.1},
        },
        "postprocessing": {
            "path": "mei.transforms.Compose",
            "kwargs": {
                "transforms": [
                    {
                        "path": path + "ChangeNormJointlyClipRangeSeparately",
                        "kwargs": {"min_max_values": ranges, "norm": 5.0},
                    },
                    {
                        "path": path + "TemporalGaussianLowPassFilterProcessor",
                        "kwargs": {"sigma": 1.0, "kernel_size": 4},
                    },
                ]
            },
        },
    }
    ours = {
        "regularization": {
            "path": "mei.regularization.RangePenalty",
            "kwargs": {"min_max_values": ranges, "max_norm": 4.0, "factor": 0.1},
        },
        "postprocessing": {
            "path": "mei.transforms.Compose",
            "kwargs": {
                "transforms": [
                    ort.clip_entry(),
                    {
                        "path": "mei.preconditioning.TemporalBlur",
                        "kwargs": {"sigma": 1.0, "kernel_size": 4, "pad_mode": "constant"},
                    },
                ]
            },
        },
    }
    model = ConstrainedOutputModel(ort.model(), 5, forward_kwargs={"data_key": ort.SESSION})
    common = {
        **ort.MEI_CONFIG,
        "stopper": {"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 4}},
    }
    a = gradient_ascent(model=model, config={**common, **theirs}, seed=3, shape=ort.SHAPE)
    b = gradient_ascent(model=model, config={**common, **ours}, seed=3, shape=ort.SHAPE)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=3e-6)
    assert a[1] == pytest.approx(b[1], rel=1e-5)


# --- g. open-retina's published recipes on an open-retina model ------------------------------


def _their_clip(ranges=ort.RANGES, norm=5.0):
    regularizer = ort.openretina(REGULARIZER)
    return regularizer.ChangeNormJointlyClipRangeSeparately(min_max_values=ranges, norm=norm)


def _their_reducer():
    objective = ort.openretina("insilico.stimulus_optimization.objective")
    return objective.SliceMeanReducer(axis=0, start=10, length=10)


@pytest.mark.parametrize(("seed", "neuron"), [(3, 5), (40, 0)])
def test_open_retinas_mei_recipe_gives_open_retinas_mei(seed, neuron):
    """mei_example.ipynb's recipe, once with open-retina's optimizer and once as a method
    config: the same MEI to 1e-6 (and a stimulus that moved, within its ranges and norm)."""
    objective = ort.openretina("insilico.stimulus_optimization.objective")
    model = ort.model()
    clip = _their_clip()
    increase = objective.IncreaseObjective(model, neuron, ort.SESSION, _their_reducer())
    theirs = ort.optimize_stimulus(increase, seed, 10.0, 10, [clip], clip)
    selected = ConstrainedOutputModel(model, neuron, forward_kwargs={"data_key": ort.SESSION})
    mei, score, _ = gradient_ascent(
        model=selected, config=ort.MEI_CONFIG, seed=seed, shape=ort.SHAPE
    )
    torch.testing.assert_close(mei, theirs, rtol=0, atol=1e-6)
    torch.manual_seed(seed)
    start = clip.process(torch.randn(ort.SHAPE) * 0.1)
    assert (mei - start).norm() > 0.5  # it moved
    assert increase.forward(mei) > increase.forward(start)
    assert torch.linalg.vector_norm(mei) <= 5.0 + 1e-5
    for c, (low, high) in enumerate(ort.RANGES):
        assert low <= mei[:, c].min() and mei[:, c].max() <= high


def test_open_retinas_mds_recipe_gives_open_retinas_stimulus():
    """most_discriminative_stimulus.ipynb's recipe (ContrastiveNeuronObjective, temperature
    1.6; start clipped; clip then temporal low-pass after each step; SGD lr 100) and mei's
    ClusterContrast with MDS_CONFIG: the same stimulus. mei's evaluation is open-retina's
    objective less log(number of clusters)."""
    objective = ort.openretina("insilico.stimulus_optimization.objective")
    regularizer = ort.openretina(REGULARIZER)
    model = ort.model()
    clip = _their_clip(ort.MDS_RANGES, 30.0)
    lowpass = regularizer.TemporalGaussianLowPassFilterProcessor(sigma=0.5, kernel_size=5)
    contrast = objective.ContrastiveNeuronObjective(
        model, ort.CLUSTERS[0], ort.CLUSTERS[1:], ort.SESSION, _their_reducer(), temperature=1.6
    )
    theirs = ort.optimize_stimulus(contrast, 40, 100.0, 10, [clip, lowpass], clip)
    ours_model = ClusterContrast(
        model, ort.CLUSTERS, targets=[0], temperature=1.6, forward_kwargs={"data_key": ort.SESSION}
    )
    config = {**ort.MDS_CONFIG, "score": "final"}
    mds, score, _ = gradient_ascent(model=ours_model, config=config, seed=40, shape=ort.SHAPE)
    torch.testing.assert_close(mds, theirs, rtol=0, atol=1e-5)
    assert score == pytest.approx(contrast.forward(theirs).item() - math.log(3), abs=1e-5)


def test_early_stopping_with_a_range_penalty_stops_where_open_retina_stops():
    """open-retina's EarlyStopper and RangeRegularizationLoss in its optimizer, mei's
    LossEarlyStopping and RangePenalty in a method config: the same steps, the same MEI."""
    objective = ort.openretina("insilico.stimulus_optimization.objective")
    regularizer = ort.openretina(REGULARIZER)
    stopping = ort.openretina("insilico.stimulus_optimization.optimization_stopper")
    model = ort.model()
    clip = _their_clip()
    penalty = regularizer.RangeRegularizationLoss(ort.RANGES, max_norm=4.0, factor=0.05)
    increase = objective.IncreaseObjective(model, 5, ort.SESSION, _their_reducer())
    calls = []

    class Counting(stopping.EarlyStopper):
        def early_stop(self, loss):
            calls.append(loss)
            return super().early_stop(loss)

    stopper = Counting(max_iterations=60, patience=2, min_delta=0.0)
    theirs = ort.optimize_stimulus(increase, 3, 100.0, None, [clip], clip, stopper, penalty)
    assert len(calls) < 60  # it stopped early (15 steps: a rise, a new lowest, two rises)
    config = {
        **ort.MEI_CONFIG,
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 100.0}},
        "stopper": {
            "path": "mei.stoppers.LossEarlyStopping",
            "kwargs": {"max_iterations": 60, "patience": 2},
        },
        "regularization": {
            "path": "mei.regularization.RangePenalty",
            "kwargs": {"min_max_values": ort.RANGES, "max_norm": 4.0, "factor": 0.05},
        },
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
    }
    selected = ConstrainedOutputModel(model, 5, forward_kwargs={"data_key": ort.SESSION})
    mei, _, log = gradient_ascent(model=selected, config=config, seed=3, shape=ort.SHAPE)
    assert len(log["mei.objectives.EvaluationObjective"]["times"]) == len(calls)
    torch.testing.assert_close(mei, theirs, rtol=0, atol=1e-5)


def test_open_retinas_recipe_for_several_neurons_in_one_batch_equals_single_runs():
    model = ort.model()
    config = {
        **ort.MEI_CONFIG,
        "stopper": {"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 3}},
    }
    units = [0, 5, 9]
    batched = gradient_ascent_units(
        None, model, config, [3, 4, 5], units, shape=ort.SHAPE, forward_kwargs={"data_key": "s1"}
    )
    for (mei, score, _), unit, seed in zip(batched, units, [3, 4, 5], strict=True):
        selected = ConstrainedOutputModel(model, unit, forward_kwargs={"data_key": ort.SESSION})
        single, single_score, _ = gradient_ascent(
            model=selected, config=config, seed=seed, shape=ort.SHAPE
        )
        torch.testing.assert_close(mei, single, rtol=1e-5, atol=1e-6)
        assert score == pytest.approx(single_score, rel=1e-5)
