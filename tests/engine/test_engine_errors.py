"""Bad configs and bad models fail early with errors that name what is wrong."""

import copy
import re

import pytest
import torch
from models import LinearNeurons, base_config

from mei.config import resolve_config
from mei.errors import ComponentError, ConfigError, ModelError, NonFiniteError
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from mei.optimization import MEI, optimize
from mei.stoppers import NumIterations
from mei.tracking import Tracker

SHAPE = (1, 1, 8, 8)
MODEL = ConstrainedOutputModel(LinearNeurons(), 0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"stoper": {"path": "mei.stoppers.NumIterations"}}, r"unknown key\(s\) \['stoper'\]"),
        ({"stopper": None}, r"missing required key\(s\) \['stopper'\]"),
        (
            {"initial": {"path": "mei.initial.NoSuchThing"}},
            r"config\['initial'\] \(mei.initial.NoSuchThing\): does not import.*no attribute 'NoSuchThing'",
        ),
        (
            {"initial": {"path": "no_such_module.Thing"}},
            r"config\['initial'\].*cannot import module 'no_such_module'",
        ),
        (
            {"initial": {"path": "custom_components.not_callable"}},
            r"config\['initial'\].*int object is not callable",
        ),
        (
            {"optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1, "momentun": 0.9}}},
            r"config\['optimizer'\] \(torch.optim.SGD\): does not accept argument\(s\) \['momentun'\]",
        ),
        (
            {"optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": -1.0}}},
            r"config\['optimizer'\] \(torch.optim.SGD\): ValueError: Invalid learning rate: "
            r"-1\.0 \(kwargs given: lr=-1\.0\)$",
        ),
        (
            {"stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": -1}}},
            r"config\['stopper'\].*num_iterations must be a non-negative integer, got -1",
        ),
        (
            {"stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {}}},
            r"config\['stopper'\].*TypeError",
        ),
        ({"stopper": "mei.stoppers.NumIterations"}, r"config\['stopper'\]: expected an entry"),
        (
            {"stopper": {"path": "mei.stoppers.NumIterations", "kwarg": {}}},
            r"unknown entry field\(s\) \['kwarg'\]",
        ),
        (
            {
                "objectives": [
                    {"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}},
                    {"path": "mei.objectives.Nope"},
                ]
            },
            r"config\['objectives\[1\]'\] \(mei.objectives.Nope\)",
        ),
        ({"device": "tpu:0"}, r"config\['device'\]"),
        ({"device": "cuda:7"}, r"config\['device'\]: 'cuda:7'"),
        (
            {"transform": {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": -1}}},
            r"config\['transform'\].*max_jitter must be",
        ),
    ],
)
def test_bad_config_raises_config_error_naming_key_and_path(change, match):
    config = base_config(**change)
    if change.get("stopper", 1) is None:
        del config["stopper"]
    snapshot = copy.deepcopy(config)
    with pytest.raises(ConfigError, match=match):
        gradient_ascent(None, MODEL, config, 0, shape=SHAPE)
    assert config == snapshot
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "slot",
    [
        "initial",
        "optimizer",
        "stopper",
        "response",
        "parameterization",
        "transform",
        "regularization",
        "precondition",
        "postprocessing",
        "background",
        "objectives",
    ],
)
def test_a_constructor_refusing_its_kwargs_is_named_with_them_for_every_slot(slot):
    entry = {"path": "custom_components.RefusesItsKwargs", "kwargs": {"level": -2, "name": "v1"}}
    config = base_config(**{slot: [entry] if slot == "objectives" else entry})
    key = "objectives[0]" if slot == "objectives" else slot
    expected = (
        rf"config\['{re.escape(key)}'\] \(custom_components.RefusesItsKwargs\): ValueError: "
        r"level must be positive, got -2 \(kwargs given: level=-2, name='v1'\)$"
    )
    with pytest.raises(ConfigError, match=expected):
        resolve_config(config)
    entry["kwargs"] = {}
    with pytest.raises(ConfigError, match=r"got 1 \(no kwargs given\)$"):
        resolve_config(config)


def test_model_with_wrong_output_shape():
    with pytest.raises(
        ModelError, match=r"one value per input, shape \(1,\) or \(1, 1\), got \(1, 4\)"
    ):
        gradient_ascent(None, LinearNeurons(), base_config(), 0, shape=SHAPE)


def test_model_whose_output_does_not_depend_on_input():
    def constant(x):
        return torch.ones(len(x), requires_grad=False)

    with pytest.raises(ModelError, match="does not depend on its input"):
        gradient_ascent(None, constant, base_config(), 0, shape=SHAPE)


def test_nan_evaluation_stops_with_an_error():
    def explodes(x):
        return (x.sum(dim=(1, 2, 3)) * float("inf")) - float("inf")

    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        gradient_ascent(None, explodes, base_config(postprocessing=None), 0, shape=SHAPE)


def test_component_returning_wrong_thing_is_named():
    config = base_config(
        postprocessing={"path": "mei.transforms.RandomCrop", "kwargs": {"height": 4, "width": 4}}
    )
    with pytest.raises(
        ComponentError,
        match=r"postprocessing must return a tensor of the input's shape \(1, 1, 8, 8\), got shape \(1, 1, 4, 4\)",
    ):
        gradient_ascent(None, MODEL, config, 0, shape=SHAPE)


def test_stopper_returning_a_bool_is_named():
    config = base_config(stopper={"path": "custom_components.ReturnsBool"})
    with pytest.raises(ComponentError, match=r"must return \(stop, output\)"):
        gradient_ascent(None, MODEL, config, 0, shape=SHAPE)


def test_resolve_checks_everything_before_the_first_step():
    method = resolve_config(
        base_config(
            objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 2}}]
        )
    )
    assert method.device == torch.device("cpu")
    assert method.stopper.path == "mei.stoppers.NumIterations"
    assert method.batchable
    assert not resolve_config(base_config(optimizer={"path": "torch.optim.LBFGS"})).batchable


def test_needs_shape_or_dataloaders():
    with pytest.raises(ValueError, match="shape="):
        gradient_ascent(None, MODEL, base_config(), 0)


class _SpikesOnce:
    """Responses ``x.sum()`` per element, plus ``value`` for element ``element`` at call
    ``call`` only (a constant: the gradient stays finite, so the inputs do too)."""

    def __init__(self, element: int, call: int, value: float):
        self.element, self.call, self.value, self.calls = element, call, value, 0

    def __call__(self, x):
        bump = torch.zeros(len(x))
        if self.calls == self.call:
            bump[self.element] = self.value
        self.calls += 1
        return x.sum(dim=(1, 2, 3)) + bump


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_single_non_finite_evaluation_is_reported_with_its_element(value):
    # the check runs every 25 steps: a step that was non-finite once and finite afterwards
    # is still reported, for the element it happened to
    x = torch.zeros(3, 1, 4, 4, requires_grad=True)
    mei = MEI(_SpikesOnce(element=1, call=7, value=value), x, torch.optim.SGD([x], lr=0.1))
    with pytest.raises(NonFiniteError, match=r"batch element\(s\) \[1\], by step 24"):
        optimize(mei, [NumIterations(40) for _ in range(3)], [Tracker() for _ in range(3)])


def test_large_finite_evaluations_are_not_reported():
    # 3e38 per step is finite in float32; their sum over the steps must not count as infinite
    def huge(x):
        return x.sum(dim=(1, 2, 3)) * 0 + 3e38

    x = torch.zeros(2, 1, 4, 4, requires_grad=True)
    mei = MEI(huge, x, torch.optim.SGD([x], lr=0.1))
    scores, _ = optimize(mei, [NumIterations(60) for _ in range(2)], [Tracker() for _ in range(2)])
    assert scores == [pytest.approx(3e38, rel=1e-6)] * 2
