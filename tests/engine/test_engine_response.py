"""The config's ``response`` entry: a video model's responses ``(B, T, N)`` reduced over a
time window before the unit is selected, for the run only, so that a stored method row gives
a selector's ``ConstrainedOutputModel(video_model, unit)`` the right MEI."""

import logging

import pytest
import torch
from models import SeparableVideoNeurons, base_config
from torch import nn
from torch.nn.functional import cosine_similarity

from mei.config import resolve_config, validate_config
from mei.errors import ConfigError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import (
    ClusterContrast,
    ConstrainedOutputModel,
    ContrastiveOutputModel,
    EnsembleModel,
    NotAWrapperError,
    TimeWindowResponse,
    UnitPerElement,
    wrap_inner,
)

SHAPE = (1, 1, 10, 15, 15)  # 10 frames: a neuron with an 8-frame filter answers 3 times


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _response(**kwargs):
    return {"path": "mei.modules.TimeWindowResponse", "kwargs": kwargs}


WINDOW = {"start": -1, "stop": None, "reduce": "mean", "time_dim": 1}


def _config(**overrides):
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
        precondition={"path": "mei.preconditioning.TemporalBlur", "kwargs": {"sigma": 0.5}},
        response=_response(**WINDOW),
    )
    config.update(overrides)
    return config


def _placed(kernel, start, frames=SHAPE[2]):
    """``kernel`` (T, H, W) at frames ``start ..`` of an otherwise empty movie."""
    movie = torch.zeros(1, 1, frames, *kernel.shape[1:])
    movie[0, 0, start : start + len(kernel)] += kernel
    return movie


def test_a_selected_video_neuron_gets_its_filter_back_from_the_config():
    """The selector's plain ``ConstrainedOutputModel(model, unit)`` of a ``(B, T, N)`` model:
    the config reduces over the last output frame, so the MEI is the neuron's filter in the
    movie's last 8 frames."""
    neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
    for unit in (0, 1):
        model = ConstrainedOutputModel(neurons, unit)
        mei, score, _ = gradient_ascent(None, model, _config(), 0, shape=SHAPE)
        assert mei.shape == SHAPE
        kernel = neurons.kernels[unit, 0]
        assert _cos(mei, _placed(kernel, 2)) >= 0.95
        assert _cos(mei, _placed(neurons.kernels[1 - unit, 0], 2)) < 0.2  # not the other one
        assert _cos(mei, _placed(kernel, 0)) < 0.5  # nor its filter in the first frames
        assert torch.allclose(mei.norm(), torch.tensor(10.0), atol=1e-4)
        # the same run as wrapping the model by hand
        by_hand = ConstrainedOutputModel(TimeWindowResponse(neurons, **WINDOW), unit)
        config = _config()
        del config["response"]
        expected, expected_score, _ = gradient_ascent(None, by_hand, config, 0, shape=SHAPE)
        assert torch.equal(mei, expected) and score == expected_score


def test_the_window_decides_the_mei_of_a_linear_video_neuron():
    """A linear neuron averaged over its last two output frames responds to ``(w_1 + w_2) . x``
    (its filter at the last two positions); over its first frame to ``w_0 . x``. Under a fixed
    norm each MEI is that direction."""
    neurons = SeparableVideoNeurons(frames=8, size=15, linear=True)
    kernel = neurons.kernels[0, 0]
    model = ConstrainedOutputModel(neurons, 0)
    cases = [
        (dict(WINDOW, start=-2), _placed(kernel, 1) + _placed(kernel, 2)),
        (dict(WINDOW, start=0, stop=1, reduce="sum"), _placed(kernel, 0)),
    ]
    for window, optimum in cases:
        config = _config(response=_response(**window), precondition=None)
        mei, _, _ = gradient_ascent(None, model, config, 1, shape=SHAPE)
        assert _cos(mei, optimum) >= 0.999, window


@pytest.mark.parametrize("jitter", [False, True])
def test_batched_units_equal_their_single_runs_with_the_response(jitter, caplog):
    neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
    config = _config()
    if jitter:  # random per element: each element draws its own shifts
        config["transform"] = {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}}
    with caplog.at_level(logging.INFO, logger="mei.methods"):
        batched = gradient_ascent_units(None, neurons, config, [3, 4], [0, 1], shape=SHAPE)
    assert "one by one" not in caplog.text  # one batched run
    for unit, (mei, score, _) in enumerate(batched):
        alone, alone_score, _ = gradient_ascent(
            None, ConstrainedOutputModel(neurons, unit), config, 3 + unit, shape=SHAPE
        )
        torch.testing.assert_close(mei, alone, rtol=1e-5, atol=1e-5)
        assert abs(score - alone_score) < 1e-4
        if not jitter:
            assert _cos(mei, _placed(neurons.kernels[unit, 0], 2)) >= 0.95


def test_the_callers_model_and_config_are_not_changed():
    neurons = SeparableVideoNeurons(frames=8, size=15)
    model = ConstrainedOutputModel(neurons, 0)
    config = _config()
    before = repr(config)
    movie = torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        responses = model(movie)
    gradient_ascent(None, model, config, 0, shape=SHAPE)
    assert model.model is neurons and dict(model.named_children()) == {"model": neurons}
    assert model.forward_kwargs == {} and repr(config) == before
    with torch.no_grad():
        assert torch.equal(model(movie), responses)
        # no window inside: the caller's wrapper still indexes the model's raw output
        assert torch.equal(responses, neurons(movie)[:, [0]])


def test_wrap_inner_copies_the_wrapper_and_reaches_every_inner_model():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    double = nn.Sequential  # any module builder
    wrappers = [
        ConstrainedOutputModel(a, 1, forward_kwargs={"k": 1}),
        UnitPerElement(a, [0, 2]),
        ClusterContrast(a, [[0], [1, 2]]),
        ContrastiveOutputModel(a, b, 0),
    ]
    for wrapper in wrappers:
        copy = wrap_inner(wrapper, double)
        assert type(copy) is type(wrapper) and copy is not wrapper
        for name in type(wrapper).inner_models:
            inner = getattr(copy, name)
            assert isinstance(inner, nn.Sequential) and inner[0] is getattr(wrapper, name)
            assert getattr(wrapper, name) in (a, b)  # the original still holds its model
        assert [n for n, _ in wrapper.named_children()] == list(type(wrapper).inner_models)
    copy = wrap_inner(wrappers[0], double)
    copy.forward_kwargs["k"] = 2
    assert wrappers[0].forward_kwargs == {"k": 1}
    with pytest.raises(NotAWrapperError, match="Linear does not declare"):
        wrap_inner(a, double)


def _run(model, config, shape=SHAPE):
    return gradient_ascent(None, model, config, 0, shape=shape)


def test_a_model_the_response_cannot_reach_into_is_refused_before_the_first_step():
    neurons = SeparableVideoNeurons(frames=8, size=15)
    config = _config()
    for model in (neurons, EnsembleModel(neurons)):
        with pytest.raises(
            ConfigError,
            match=r"config\['response'\] \(mei\.modules\.TimeWindowResponse\): the response "
            r"must be applied before the unit is selected.*selects no units",
        ):
            _run(model, config)
    already = ConstrainedOutputModel(TimeWindowResponse(neurons, start=-1), 0)
    with pytest.raises(ConfigError, match="already reduces its responses with a TimeWindow"):
        _run(already, config)


def test_a_lab_wrapper_declaring_its_inner_model_is_reached():
    class LabSelection(nn.Module):
        inner_models = ("core",)

        def __init__(self, core, unit):
            super().__init__()
            self.core, self.unit = core, unit

        def forward(self, x):
            return self.core(x)[:, self.unit]

    neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
    mei, _, _ = _run(LabSelection(neurons, 1), _config())
    expected, _, _ = _run(ConstrainedOutputModel(neurons, 1), _config())
    torch.testing.assert_close(mei, expected)


@pytest.mark.parametrize(
    "entry, message",
    [
        (_response(reduce="median"), r"ValueError: reduce must be 'mean' or 'sum'"),
        (_response(time_dim=3), r"time_dim must be 1"),
        (_response(window=3), r"does not accept argument\(s\) \['window'\]"),
        (_response(start=float("nan")), r"argument 'start' must be a finite number"),
        (_response(model=None), r"'model' is not a kwarg here"),
        ({"path": "mei.modules.NoSuchResponse"}, r"does not import"),
        ({"path": "builtins.repr"}, r"built a str, which is not a torch.nn.Module"),
    ],
)
def test_a_bad_response_entry_names_key_and_path(entry, message):
    config = _config(response=entry)
    with pytest.raises(ConfigError, match=r"config\['response'\] \(.*\): .*" + message):
        validate_config(config)


def test_a_response_that_does_not_declare_per_element_work_runs_units_one_by_one(caplog):
    class LabWindow(nn.Module):  # no `elementwise = True`
        def __init__(self, model, start=-1):
            super().__init__()
            self.model, self.start = model, start

        def forward(self, x):
            return self.model(x)[:, self.start :].mean(1)

    import sys

    module = type(sys)("lab_responses")
    module.LabWindow = LabWindow
    sys.modules["lab_responses"] = module
    try:
        config = _config(response={"path": "lab_responses.LabWindow"})
        assert resolve_config(config).batch_blockers() == [
            "response lab_responses.LabWindow does not declare that it acts on each element "
            "on its own (class attribute elementwise = True)"
        ]
        assert resolve_config(_config()).batch_blockers() == []
        neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
        with caplog.at_level(logging.INFO, logger="mei.methods"):
            results = gradient_ascent_units(None, neurons, config, 0, [0, 1], shape=SHAPE)
        assert "optimizing units one by one: response lab_responses.LabWindow" in caplog.text
        for unit, (mei, _, _) in enumerate(results):
            assert _cos(mei, _placed(neurons.kernels[unit, 0], 2)) >= 0.95
    finally:
        del sys.modules["lab_responses"]


def test_a_response_factory_may_build_the_same_kind_of_module_as_the_model():
    """Only an inner model that already is an instance of the response's class is refused: a
    lab's factory function may return an ``nn.Sequential`` around an ``nn.Sequential``."""
    import sys

    def last_frame(model):
        return nn.Sequential(model, TakeLast())

    class TakeLast(nn.Module):
        elementwise = True

        def forward(self, responses):
            return responses[:, -1]

    module = type(sys)("lab_factories")
    module.last_frame = last_frame
    sys.modules["lab_factories"] = module
    try:
        neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
        sequential = nn.Sequential(neurons)
        config = _config(response={"path": "lab_factories.last_frame"})
        mei, _, _ = _run(ConstrainedOutputModel(sequential, 1), config)
        expected, _, _ = _run(ConstrainedOutputModel(neurons, 1), _config())
        torch.testing.assert_close(mei, expected)
    finally:
        del sys.modules["lab_factories"]
