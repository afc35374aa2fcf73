"""Batched forms of stoppers and objectives give exactly what the per-element calls give.

Each run is compared with a twin run whose components have the same logic but no batched form
(``per_element_twins``): same MEIs, same scores, same tracker logs, same stop steps.
"""

import per_element_twins as twins
import pytest
import torch
from custom_components import EvaluationThreshold
from models import SmallConvNet, base_config

from mei import objectives, stoppers
from mei._components import batched_form
from mei.methods import gradient_ascent_units
from mei.modules import UnitPerElement
from mei.optimization import MEI, optimize
from mei.postprocessing import ChangeNorm
from mei.regularization import TotalVariation
from mei.tracking import Tracker

SHAPE = (1, 1, 16, 16)
OBJECTIVES = (
    ("EvaluationObjective", 3),
    ("RegularizationObjective", 4),
    ("PostProcessedInputObjective", 5),
    ("GradientObjective", 7),
)


def _objectives(module):
    return [
        {"path": f"{module}.{name}", "kwargs": {"interval": interval}}
        for name, interval in OBJECTIVES
    ]


def _assert_same_logs(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["times"] == b[name]["times"], name
        for x, y in zip(a[name]["values"], b[name]["values"], strict=True):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), name
            else:
                assert x == y and type(x) is type(y), name


def _assert_same_results(fast, slow):
    assert len(fast) == len(slow)
    for (mei, score, log), (mei2, score2, log2) in zip(fast, slow, strict=True):
        assert torch.equal(mei, mei2)
        assert score == score2
        # the objectives are renamed by path; compare them in order
        assert len(log) == len(log2)
        for key, key2 in zip(log, log2, strict=True):
            _assert_same_logs({"o": log[key]}, {"o": log2[key2]})


def _units(config, units=(0, 3, 5, 3), seeds=(1, 2, 3, 4)):
    return gradient_ascent_units(
        None, SmallConvNet(), config, list(seeds), list(units), shape=SHAPE
    )


def test_built_in_stopper_and_objectives_match_their_per_element_twins():
    common = dict(
        optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.05}},
        transform={"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}},
        regularization={"path": "mei.regularization.TotalVariation", "kwargs": {"weight": 0.01}},
        precondition={"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.0}},
    )
    fast = _units(
        base_config(
            **common,
            stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 23}},
            objectives=_objectives("mei.objectives"),
        )
    )
    slow = _units(
        base_config(
            **common,
            stopper={"path": "per_element_twins.NumIterations", "kwargs": {"num_iterations": 23}},
            objectives=_objectives("per_element_twins"),
        )
    )
    _assert_same_results(fast, slow)
    times = fast[0][2]["mei.objectives.PostProcessedInputObjective"]["times"]
    assert times == [0, 5, 10, 15, 20]


@pytest.mark.parametrize("combiner", ["AnyStopper", "AllStoppers"])
def test_combined_stoppers_match_their_per_element_twins(combiner):
    def config(module, stopper_module):
        inner = [
            {"path": f"{stopper_module}.NumIterations", "kwargs": {"num_iterations": 9}},
            {"path": f"{stopper_module}.NumIterations", "kwargs": {"num_iterations": 14}},
        ]
        return base_config(
            stopper={"path": f"{module}.{combiner}", "kwargs": {"stoppers": inner}},
            objectives=[
                {"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}},
                {"path": "per_element_twins.stopper_output_objective"},
            ],
        )

    fast = _units(config("mei.stoppers", "mei.stoppers"))
    slow = _units(config("per_element_twins", "per_element_twins"))
    _assert_same_results(fast, slow)
    stops = 9 if combiner == "AnyStopper" else 14
    log = fast[0][2]["per_element_twins.stopper_output_objective"]
    assert log["times"][-1] == stops - stops % 2  # NumIterations(n) stops at step n
    assert log["values"][0] == [None, None]  # the batched outputs reach per-element objectives


def _run_optimize(make_stopper, make_objective, limits, threshold=None):
    """Elements stopping at different steps: ``optimize`` with one stopper per element."""
    model = SmallConvNet().requires_grad_(False)
    units = [0, 1, 2, 4]
    starts = [torch.randn(*SHAPE, generator=torch.Generator().manual_seed(s)) for s in units]
    x = torch.cat(starts).requires_grad_(True)
    mei = MEI(
        UnitPerElement(model, units),
        x,
        torch.optim.SGD([x], lr=0.2),
        regularization=TotalVariation(weight=0.01),
        postprocessing=ChangeNorm(3.0),
    )
    if threshold is None:
        stoppers_ = [make_stopper(n) for n in limits]
    else:
        stoppers_ = [
            stoppers.AnyStopper([make_stopper(n), EvaluationThreshold(threshold)]) for n in limits
        ]
    trackers = [
        Tracker(
            evaluation=make_objective("EvaluationObjective", 2),
            reg=make_objective("RegularizationObjective", 3),
            post=make_objective("PostProcessedInputObjective", 4),
            grad=make_objective("GradientObjective", 1),
        )
        for _ in limits
    ]
    scores, inputs = optimize(mei, stoppers_, trackers)
    return scores, inputs, [t.log for t in trackers]


@pytest.mark.parametrize("threshold", [None, 1.05], ids=["num-iterations", "with-custom-stopper"])
def test_elements_stopping_at_different_steps_match_the_per_element_path(threshold):
    limits = [3, 11, 7, 11]
    fast = _run_optimize(
        stoppers.NumIterations,
        lambda name, n: getattr(objectives, name)(n),
        limits,
        threshold,
    )
    slow = _run_optimize(
        twins.NumIterations, lambda name, n: getattr(twins, name)(n), limits, threshold
    )
    assert fast[0] == slow[0]
    assert torch.equal(fast[1], slow[1])
    stop_steps = []
    for log, log2 in zip(fast[2], slow[2], strict=True):
        _assert_same_logs(log, log2)
        stop_steps.append(log["grad"]["times"][-1] + 1)
    if threshold is None:  # NumIterations(n): n + 1 steps, as the original library ran
        assert stop_steps == [n + 1 for n in limits]
    else:  # the custom stopper stopped some elements early
        assert any(s < n + 1 for s, n in zip(stop_steps, limits, strict=True))


def test_custom_per_element_stopper_with_batched_objectives_matches():
    def config(module):
        return base_config(
            stopper={
                "path": "mei.stoppers.AnyStopper",
                "kwargs": {
                    "stoppers": [
                        {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 40}},
                        {
                            "path": "custom_components.EvaluationThreshold",
                            "kwargs": {"threshold": 1.05},
                        },
                    ]
                },
            },
            objectives=_objectives(module),
        )

    fast, slow = _units(config("mei.objectives")), _units(config("per_element_twins"))
    _assert_same_results(fast, slow)
    lengths = {len(log["mei.objectives.GradientObjective"]["times"]) for _, _, log in fast}
    assert len(lengths) > 1, "the elements should stop at different steps"


def test_a_subclass_or_a_mix_of_classes_has_no_batched_form():
    assert batched_form([stoppers.NumIterations(3), stoppers.NumIterations(5)]) is not None
    assert batched_form([twins.NumIterations(3)]) is None
    assert batched_form([stoppers.NumIterations(3), twins.NumIterations(3)]) is None
    assert batched_form([stoppers.AnyStopper([stoppers.EarlyStopping()])]) is None
    assert batched_form([objectives.EvaluationObjective(1)]) is not None


def test_a_step_keeps_only_what_is_asked():
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    mei = MEI(lambda t: t.flatten(1).sum(1), x, torch.optim.SGD([x], lr=0.1), group=1)
    record = mei.record_step(keep=("grad",))
    assert record.input_ is None and record.post_processed_input is None
    assert record.transformed_input is None and record.preconditioned_grad is None
    assert torch.equal(record.element("grad", 1), -torch.ones(1, 1, 4, 4))
    assert record.element("evaluation", 0) == pytest.approx(float(record.evaluation[0]))
    with pytest.raises(RuntimeError, match="did not keep 'input_'"):
        record.element("input_", 0)
    full = mei.record_step()
    assert full.dropped == frozenset() and full.input_ is not None
