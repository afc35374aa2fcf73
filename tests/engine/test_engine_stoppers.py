"""Stoppers, objectives, the tracker and State, including the seed's custom stopper."""

import pytest
import torch
from models import LinearNeurons, base_config

from mei.domain import State
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from mei.stoppers import AnyStopper, EarlyStopping, MaxSteps, NumIterations
from mei.tracking import Tracker

MODEL = ConstrainedOutputModel(LinearNeurons(), 0)


def _state(i, evaluation=0.0):
    t = torch.zeros(1, 1, 2, 2)
    return State(i, evaluation, 0.0, t, t, t, t, t)


def test_seed_custom_stopper_by_path_stops_at_threshold():
    config = base_config(
        stopper={"path": "custom_components.EvaluationThreshold", "kwargs": {"threshold": 5.0}},
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.01}},
        postprocessing=None,
        objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
    )
    _, score, output = gradient_ascent(None, MODEL, config, 0, shape=(1, 1, 8, 8))
    values = output["mei.objectives.EvaluationObjective"]["values"]
    assert values[-1] > 5.0 and all(v <= 5.0 for v in values[:-1])
    assert score > 5.0


def test_early_stopping_waits_patience_steps_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    decisions = [stopper(_state(i, e))[0] for i, e in enumerate([1.0, 2.0, 2.05, 2.1, 3.0])]
    assert decisions == [False, False, False, True, False]
    assert EarlyStopping(patience=5, max_iter=3)(_state(2, 1.0))[0]
    with pytest.raises(ValueError, match="patience must be >= 1, got 0"):
        EarlyStopping(patience=0)


def test_any_stopper_combines_and_builds_from_entries():
    stopper = AnyStopper(
        [
            {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 3}},
            EarlyStopping(patience=100),
        ]
    )
    assert [stopper(_state(i, i))[0] for i in range(4)] == [False, False, False, True]
    assert "NumIterations(num_iterations=3)" in repr(stopper)
    # the original library's count: NumIterations(n) stops at the step with i_iter == n
    assert NumIterations(4)(_state(4))[0] and not NumIterations(4)(_state(3))[0]
    assert NumIterations(0)(_state(0))[0] and NumIterations(0).steps == 1
    assert MaxSteps(4)(_state(3))[0] and not MaxSteps(4)(_state(2))[0]
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        MaxSteps(0)


def test_tracker_logs_only_non_none():
    tracker = Tracker(a=lambda s: s.i_iter if s.i_iter % 2 else None)
    for i in range(5):
        tracker.track(_state(i))
    assert tracker.log == {"a": {"times": [1, 3], "values": [1, 3]}}


def test_state_has_the_seed_attributes_and_reg_term_defaults_to_zero():
    captured = []

    def spy(state):
        captured.append(state)
        return state.i_iter >= 1, "out"

    import custom_components

    custom_components.spy = spy
    try:
        config = base_config(stopper={"path": "custom_components.spy_factory"})
        custom_components.spy_factory = lambda: spy
        gradient_ascent(None, MODEL, config, 0, shape=(1, 1, 8, 8))
    finally:
        del custom_components.spy, custom_components.spy_factory
    state = captured[-1]
    assert state.i_iter == 1
    assert isinstance(state.evaluation, float) and state.reg_term == 0.0
    for name in (
        "input_",
        "transformed_input",
        "post_processed_input",
        "grad",
        "preconditioned_grad",
    ):
        assert (
            getattr(state, name).shape == (1, 1, 8, 8) and getattr(state, name).device.type == "cpu"
        )
    assert state.stopper_output == "out"
    assert not torch.equal(state.input_, state.post_processed_input)
    # grad is the gradient of the minimized loss -(evaluation - reg_term), as in the original
    assert torch.allclose(state.grad, -MODEL.model.weight[0:1].detach())
