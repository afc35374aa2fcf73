"""A lab's own MEI classes run as they did with the original library (issue 21): their
``step()`` is called each step, stoppers and trackers get the States it returns, the original's
attributes keep their meaning, and ``gradient_ascent(..., mei_class=...)`` makes the MEI with
the lab's class. mei's own class keeps its batched engine.

The lab class below uses what a published subclass of the original's ``MEI`` uses (a
``MEIWithValidation`` whose model returns a training and a validation response, with a State
subclass that carries the validation value): ``i_iteration``, ``_current_input.cloned_data``,
``optimizer.zero_grad()``, ``evaluate()`` returning the model's tuple, ``regularization(
self._transformed_input, i)``, ``_current_input.grad``/``cloned_grad``, ``precondition``,
``postprocessing(self._current_input.data, i)``, ``_transformed = None`` and
``cls_state.from_dict(state)``.
"""

from __future__ import annotations

import pytest
import torch
from models import LinearNeurons, base_config
from torch import nn

from mei.domain import State
from mei.errors import ConfigError, InputError
from mei.legacy.ops import ChangeNorm
from mei.methods import gradient_ascent
from mei.optimization import (
    MEI,
    default_background,
    default_postprocessing,
    default_precondition,
    default_regularization,
    default_transform,
    optimize,
)
from mei.stoppers import NumIterations
from mei.tracking import Tracker

SHAPE = (1, 1, 8, 8)
NORM = 3.0


class StateWithValidation(State):
    """A lab's State: the original's attributes and the validation response."""

    def __init__(self, validation, *args, **kwargs):
        self.validation = validation
        super().__init__(*args, **kwargs)

    def to_dict(self):
        return dict(super().to_dict(), validation=self.validation)

    @classmethod
    def from_dict(cls, state):
        return cls(**state)


class MEIWithValidation(MEI):
    """A lab's subclass in the published style: it overrides ``step()``."""

    cls_state = StateWithValidation

    def step(self):
        state = dict(i_iter=self.i_iteration, input_=self._current_input.cloned_data)
        self.optimizer.zero_grad()
        output = self.evaluate()
        evaluation, validation = output[0], output[1]
        state["evaluation"] = evaluation.item()
        state["validation"] = validation.item()
        reg_term = self.regularization(self._transformed_input, self.i_iteration)
        state["reg_term"] = reg_term.item()
        state["transformed_input"] = self._transformed_input.data.cpu().clone()
        (-evaluation + reg_term).backward()
        if self._current_input.grad is None:
            raise RuntimeError("Gradient did not reach MEI")
        state["grad"] = self._current_input.cloned_grad
        self._current_input.grad = self.precondition(self._current_input.grad, self.i_iteration)
        state["preconditioned_grad"] = self._current_input.cloned_grad
        self.optimizer.step()
        self._current_input.data = self.postprocessing(self._current_input.data, self.i_iteration)
        state["post_processed_input"] = self._current_input.cloned_data
        self._transformed = None
        self.i_iteration += 1
        return self.cls_state.from_dict(state)


class TrainAndValidation(nn.Module):
    """A model that answers with a training and a validation response, as the lab's did: two
    linear neurons ``w . x`` and ``v . x``."""

    def __init__(self):
        super().__init__()
        net = LinearNeurons(n=2, seed=3)
        self.w, self.v = net.weight[0].detach().clone(), net.weight[1].detach().clone()

    def forward(self, x):
        flat = x.flatten(1)
        return flat @ self.w.flatten(), flat @ self.v.flatten()


def optimum(w):
    return NORM * w / w.norm()


class Recorder:
    """A stopper that records what it is given and stops after ``n + 1`` steps."""

    def __init__(self, n):
        self.n, self.states = n, []

    def __call__(self, state):
        self.states.append(state)
        return state.i_iter == self.n, f"seen {state.i_iter}"


def test_a_lab_subclass_overriding_step_runs_its_step_and_finds_the_optimum():
    model = TrainAndValidation()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    mei = MEIWithValidation(model, x, torch.optim.SGD([x], lr=0.5), postprocessing=ChangeNorm(NORM))
    stopper = Recorder(40)
    tracker = Tracker(validation=lambda state: state.validation)
    score, result = optimize(mei, stopper, tracker)
    # its step() ran every step: its States (with the validation) reached stopper and tracker
    assert [s.i_iter for s in stopper.states] == list(range(41))
    assert all(type(s) is StateWithValidation for s in stopper.states)
    assert stopper.states[-1].stopper_output == "seen 40"
    assert tracker.log["validation"]["times"] == list(range(41))
    # the known answer: norm * w / |w|; the score is the last step's training response,
    # the validation that of the validation neuron
    assert torch.allclose(result, optimum(model.w), atol=1e-5)
    assert score == stopper.states[-1].evaluation
    before = stopper.states[-1].input_
    assert score == pytest.approx(float(before.flatten() @ model.w.flatten()), rel=1e-5)
    assert stopper.states[-1].validation == pytest.approx(
        float(before.flatten() @ model.v.flatten()), rel=1e-5
    )
    assert mei.i_iteration == mei.i_iter == 41


def test_gradient_ascent_makes_the_mei_with_the_lab_class():
    model = TrainAndValidation()
    config = base_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 60}},
        postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": NORM}},
        objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 20}}],
    )
    result, score, log = gradient_ascent(
        None, model, config, 5, shape=SHAPE, mei_class=MEIWithValidation
    )
    assert result.shape == SHAPE and isinstance(score, float)
    assert torch.allclose(result, optimum(model.w), atol=1e-5)
    assert log["mei.objectives.EvaluationObjective"]["times"] == [0, 20, 40, 60]
    # the start is the seed's, as for mei's own class: one step of the lab class from the
    # same start gives the first step of mei's run with the first neuron alone
    first = gradient_ascent(
        None,
        lambda x: model(x)[0],
        base_config(
            stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 0}},
            postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": NORM}},
        ),
        5,
        shape=SHAPE,
    )
    lab_first = gradient_ascent(
        None,
        model,
        base_config(
            stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 0}},
            postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": NORM}},
        ),
        5,
        shape=SHAPE,
        mei_class=MEIWithValidation,
    )
    assert torch.equal(first[0], lab_first[0]) and first[1] == lab_first[1]


def test_a_subclass_changing_nothing_but_evaluate_gives_the_engines_numbers():
    class SameEvaluate(MEI):  # overrides evaluate: stepped through the original's step()
        calls = 0

        def evaluate(self):
            type(self).calls += 1
            return super().evaluate()

    config = base_config(
        transform={"path": "mei.legacy.ops.Jitter", "kwargs": {"max_jitter": 2}},
        precondition={"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1.0}},
        regularization={"path": "mei.regularization.TotalVariation", "kwargs": {"weight": 0.1}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}},
    )
    model = lambda x: LinearNeurons(n=1, seed=2)(x)[:, 0]  # noqa: E731
    engine = gradient_ascent(None, model, config, 7, shape=SHAPE)
    lab = gradient_ascent(None, model, config, 7, shape=SHAPE, mei_class=SameEvaluate)
    assert SameEvaluate.calls == 2 * 21  # the original's step evaluated twice
    assert torch.equal(engine[0], lab[0])
    assert engine[1] == lab[1]


def test_a_subclass_overriding_evaluate_changes_what_is_ascended():
    class Minimizing(MEI):
        def evaluate(self):
            return -super().evaluate()

    w = LinearNeurons(n=1, seed=4).weight.detach()[0]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    mei = Minimizing(
        lambda t: t.flatten(1) @ w.flatten(),
        x,
        torch.optim.SGD([x], lr=0.5),
        postprocessing=ChangeNorm(NORM),
    )
    score, result = optimize(mei, NumIterations(60), Tracker())
    assert torch.allclose(result, -optimum(w), atol=1e-5)
    assert score == pytest.approx(-float(result.flatten() @ w.flatten()), rel=1e-4)


def test_any_object_with_a_step_is_stepped_as_in_the_original():
    class Counter:
        def __init__(self):
            self.i = 0

        def step(self):
            values = dict(
                i_iter=self.i,
                evaluation=float(self.i),
                reg_term=0.0,
                input_=torch.zeros(1),
                transformed_input=torch.zeros(1),
                post_processed_input=torch.full((1,), float(self.i)),
                grad=torch.zeros(1),
                preconditioned_grad=torch.zeros(1),
            )
            self.i += 1
            return State.from_dict(values)

    tracker = Tracker(i=lambda state: state.i_iter)
    score, result = optimize(Counter(), NumIterations(4), tracker)
    assert score == 4.0 and torch.equal(result, torch.full((1,), 4.0))
    assert tracker.log["i"]["values"] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="one stopper and one tracker, got 2 and 2"):
        optimize(Counter(), [NumIterations(1)] * 2, [Tracker(), Tracker()])


def test_mei_stores_the_originals_defaults_and_they_change_no_number():
    x = torch.randn(SHAPE)
    model = LinearNeurons(n=1)
    plain = MEI(model, x, torch.optim.SGD([x], lr=0.1))
    assert plain.transform is default_transform
    assert plain.regularization is default_regularization
    assert plain.precondition is default_precondition
    assert plain.postprocessing is default_postprocessing
    assert plain.background is default_background
    assert isinstance(plain.initial.tensor, torch.Tensor) and plain.i_iteration == 0
    assert MEI._engine_steps  # mei's own class runs the batched engine

    def run(**components):
        start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
        mei = MEI(model, start, torch.optim.SGD([start], lr=0.1), **components)
        return optimize(mei, NumIterations(10), Tracker())

    without = run()
    with_defaults = run(
        transform=default_transform,
        regularization=default_regularization,
        precondition=default_precondition,
        postprocessing=default_postprocessing,
    )
    assert torch.equal(without[1], with_defaults[1]) and without[0] == with_defaults[0]


def test_the_lab_class_path_refuses_what_it_cannot_run():
    config = base_config(
        parameterization={"path": "mei.parameterization.Fourier", "kwargs": {}},
    )
    with pytest.raises(ConfigError, match=r"config\['parameterization'\].*mei_class"):
        gradient_ascent(
            None, TrainAndValidation(), config, 0, shape=SHAPE, mei_class=MEIWithValidation
        )
    from mei.config import resolve_config
    from mei.methods import run_batch

    with pytest.raises(InputError, match="one MEI at a time.*got 2 seeds"):
        run_batch(
            resolve_config(base_config()),
            TrainAndValidation(),
            SHAPE,
            [0, 1],
            mei_class=MEIWithValidation,
        )
