"""On a GPU a step must not wait for the device: no value read on the host, no tensor copied
from the host, no operator whose output size depends on values (a boolean mask, ``nonzero``)
except on the steps where something is due. A small model's step on a GPU is bound by the
host; one such wait per step drains the queue of kernels every step.

These tests run on the CPU, where nothing waits, and watch the calls that would: torch's
function mode sees the Python calls that read values or move tensors (``.item()``,
``bool()``, ``.tolist()``, ``.cpu()``, ``.to(...)``, indexing with a list) and its dispatch
mode the operators
(``_local_scalar_dense``, which every read of a value ends in, ``nonzero``, indexing with a
boolean mask). Due are: the first step (its zero-gradient check, the blur windows and masks
made on the device once), every ``check_every`` (25) steps the finite check, the steps an
objective records, and the end (final scores, results copied back).

Random transforms such as Jitter are left out on purpose: they draw their shifts from
per-element generators on the host and read those numbers there (no device involved).
"""

from __future__ import annotations

import collections

import pytest
import torch
from models import SmallConvNet, TwoStimulusNeuron, base_config
from step_watch import StepCounter
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from mei.legacy import ops
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel

SHAPE = (1, 1, 16, 16)
STEPS = 30  # NumIterations(30): 31 steps, numbered 1 to 31 below
CHECKS = {25}  # check_every=25
READING_CALLS = {
    "item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "to",
}  # fmt: skip
WAITING_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select"}


class _Reads:
    """What was read or moved, by step (step ``n``: from the ``n``-th step's start to the
    next one's; 0: before the first)."""

    def __init__(self, monkeypatch) -> None:
        self._counter = StepCounter(monkeypatch)
        self.by_step: dict[int, list[str]] = collections.defaultdict(list)

    @property
    def step(self) -> int:
        return self._counter.step

    def steps(self) -> set[int]:
        return set(self.by_step)


class _Calls(TorchFunctionMode):
    def __init__(self, reads: _Reads):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READING_CALLS or (name == "__getitem__" and _from_a_list(args[1])):
            self.reads.by_step[self.reads.step].append(name)
        return func(*args, **(kwargs or {}))


def _from_a_list(index):
    """Whether an index holds a Python list (made into an index tensor on the host, then
    copied to the device)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, list) for part in parts)


class _Ops(TorchDispatchMode):
    def __init__(self, reads: _Reads):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        masked = name in ("aten.index", "aten.index_put") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        )
        if name in WAITING_OPS or masked:
            self.reads.by_step[self.reads.step].append(name)
        return func(*args, **(kwargs or {}))


def _watched(run, monkeypatch):
    """``run()`` with every read and move recorded by step."""
    reads = _Reads(monkeypatch)
    with _Calls(reads), _Ops(reads):
        run()
    return reads


def _units(monkeypatch, **changes):
    config = base_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
        **changes,
    )
    return _watched(
        lambda: gradient_ascent_units(None, SmallConvNet(), config, [1, 2], [0, 3], shape=SHAPE),
        monkeypatch,
    )


def _due(*objective_steps):
    return {0, 1, STEPS + 1} | CHECKS | set(objective_steps)


MASK = (torch.arange(256).reshape(16, 16) % 3 == 0).long()
COMPONENTS = {
    "GaussianBlur": {"precondition": ("mei.preconditioning.GaussianBlur", {"sigma": 1.0})},
    "FourierSmoothing": {"precondition": ("mei.preconditioning.FourierSmoothing", {"freq_exp": 1})},
    "MultiplyBy": {"precondition": ("mei.preconditioning.MultiplyBy", {"const": 0.5})},
    "DivideByMeanOfAbsolute": {"precondition": ("mei.preconditioning.DivideByMeanOfAbsolute", {})},
    "ClipRange": {"postprocessing": ("mei.postprocessing.ClipRange", {"x_min": -1, "x_max": 1})},
    "ChangeStd": {"postprocessing": ("mei.postprocessing.ChangeStd", {"std": 1.0})},
    "PNormConstraint": {"postprocessing": ("mei.postprocessing.PNormConstraint", {"norm_value": 3})},
    "ChannelNormClip": {"postprocessing": ("mei.postprocessing.ChannelNormClip", {"norm": 3.0})},
    "TotalVariation": {"regularization": ("mei.regularization.TotalVariation", {"weight": 0.1})},
    "LpNorm": {"regularization": ("mei.regularization.LpNorm", {"weight": 0.1})},
    "L2ToReference": {
        "regularization": (
            "mei.regularization.L2ToReference", {"reference": torch.ones(1, 16, 16)},
        ),
    },
    "Resize": {"transform": ("mei.transforms.Resize", {"scale_factor": 1.0})},
    "ChangeRange": {"transform": ("mei.transforms.ChangeRange", {"x_min": -1, "x_max": 1})},
    "Fourier": {"parameterization": ("mei.parameterization.Fourier", {})},
    "legacy GaussianBlur": {"precondition": ("mei.legacy.ops.GaussianBlur", {"sigma": 1.0})},
    "legacy GaussianBlurforRing": {
        "precondition": (
            "mei.legacy.ops.GaussianBlurforRing", {"sigma": 1.0, "key": None, "ring_mask": MASK},
        ),
    },
    "legacy GaussianBlurforSurround": {
        "precondition": (
            "mei.legacy.ops.GaussianBlurforSurround",
            {"sigma": 1.0, "key": None, "center_mask": MASK},
        ),
    },
    "legacy FourierSmoothing": {
        "precondition": ("mei.legacy.ops.FourierSmoothing", {"freq_exp": 1}),
    },
    "legacy ChangeNorm": {"postprocessing": ("mei.legacy.ops.ChangeNorm", {"norm": 3.0})},
    "legacy ChangeStd": {"postprocessing": ("mei.legacy.ops.ChangeStd", {"std": 1.0})},
    "legacy BoxContrast": {"regularization": ("mei.legacy.ops.BoxContrast", {"weight": 0.1})},
    "legacy BoxContrastPixelL2": {
        "regularization": ("mei.legacy.ops.BoxContrastPixelL2", {"weight": 0.1}),
    },
    "legacy TotalVariation": {
        "regularization": ("mei.legacy.ops.TotalVariation", {"weight": 0.1}),
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_a_step_of_a_built_in_component_waits_for_nothing(name, monkeypatch):
    changes = {
        slot: {"path": path, "kwargs": kwargs} for slot, (path, kwargs) in COMPONENTS[name].items()
    }
    reads = _units(monkeypatch, **changes)
    assert reads.steps() <= _due(), {s: r for s, r in reads.by_step.items() if s not in _due()}
    assert 1 in reads.steps() and STEPS + 1 in reads.steps()  # the watch sees the due ones


def test_objectives_read_on_the_steps_they_record_only(monkeypatch):
    objectives = [
        {"path": f"mei.objectives.{name}", "kwargs": {"interval": 7}}
        for name in ("EvaluationObjective", "PostProcessedInputObjective", "GradientObjective")
    ]
    reads = _units(monkeypatch, objectives=objectives)
    recorded = {i + 1 for i in range(0, STEPS + 1, 7)}  # steps 0, 7, ... are the 1st, 8th, ...
    assert recorded <= reads.steps() <= _due(*recorded)


def test_a_single_mei_with_maxsteps_and_the_original_ops_waits_for_nothing(monkeypatch):
    config = base_config(
        stopper={"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": STEPS + 1}},
        precondition={"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1.0}},
        postprocessing={"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 3.0}},
    )
    model = ConstrainedOutputModel(SmallConvNet(), 2)
    reads = _watched(lambda: gradient_ascent(None, model, config, 3, shape=SHAPE), monkeypatch)
    assert 1 in reads.steps() and reads.steps() <= _due()


@pytest.mark.parametrize("constraint", [2, -1, [1, 4], slice(1, 3)])
def test_a_single_mei_with_a_target_fn_waits_for_nothing(constraint, monkeypatch):
    config = base_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
    )
    model = ConstrainedOutputModel(SmallConvNet(), constraint, target_fn=torch.mean)
    reads = _watched(lambda: gradient_ascent(None, model, config, 3, shape=SHAPE), monkeypatch)
    assert 1 in reads.steps() and reads.steps() <= _due()


def test_a_batch_with_a_target_fn_waits_for_nothing(monkeypatch):
    config = base_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
    )
    reads = _watched(
        lambda: gradient_ascent_units(
            None, SmallConvNet(), config, [1, 2, 3], [0, 3, 5], shape=SHAPE, target_fn=torch.sum
        ),
        monkeypatch,
    )
    assert 1 in reads.steps() and reads.steps() <= _due()


def test_diverse_meis_with_the_original_similarity_wait_for_nothing(monkeypatch):
    config = base_config(
        n_meis=3,
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
        regularization={"path": "mei.legacy.ops.Similarity", "kwargs": {"weight": 0.5}},
    )
    model = ConstrainedOutputModel(TwoStimulusNeuron(), 0, target_fn=torch.mean)
    reads = _watched(
        lambda: gradient_ascent(None, model, config, 0, shape=(1, 1, 15, 15)), monkeypatch
    )
    assert 1 in reads.steps() and reads.steps() <= _due()


def test_a_transparent_mei_copies_only_its_background_per_step(monkeypatch):
    """The background is drawn on the host every step (by Python's or numpy's generator, as
    in the original) and copied to the device: that one copy, nothing else."""
    config = base_config(
        transparency=True,
        transparency_weight=0.5,
        background={
            "path": "mei.legacy.ops.WhiteNoiseBackground",
            "kwargs": {"mean": 0.0, "std": 1.0, "shape": [16, 16]},
        },
        regularization={"path": "mei.legacy.ops.RegTransparency", "kwargs": {"weight": 0.1}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
    )
    model = ConstrainedOutputModel(SmallConvNet(), 1)
    reads = _watched(lambda: gradient_ascent(None, model, config, 5, shape=SHAPE), monkeypatch)
    assert set(range(1, STEPS + 2)) <= reads.steps()
    for step in set(range(2, STEPS + 1)) - _due():
        assert reads.by_step[step] == ["to"], step


def test_the_watch_sees_a_component_that_reads_every_step(monkeypatch):
    """The watch itself: a regularization that reads its value with ``.item()`` every step,
    as the original library's loop did, shows on every step."""
    reads = _units(
        monkeypatch,
        regularization={"path": "custom_components.ItemReadingPenalty", "kwargs": {}},
    )
    assert reads.steps() == set(range(STEPS + 2))


def test_similarity_takes_the_pairs_above_the_diagonal_in_the_original_order():
    for n in range(2, 7):
        rows, cols = ops._pairs(n, torch.device("cpu"))
        upper = torch.triu(torch.ones(n, n), diagonal=1) == 1
        expected = upper.nonzero()
        assert torch.equal(torch.stack([rows, cols], dim=1), expected)
        values = torch.randn(n, n)
        assert torch.equal(values[rows, cols], values[upper])


def test_device_copies_follow_a_replaced_mask_and_are_not_pickled():
    import pickle

    blur = ops.GaussianBlurforCenter(1.0, None, center_mask=MASK)
    x = torch.randn(1, 1, 16, 16)
    before = blur(x)
    blur.center_mask = 1 - MASK
    after = blur(x)
    assert torch.equal(after, ops.GaussianBlurforSurround(1.0, None, center_mask=MASK)(x))
    assert not torch.equal(before, after)
    assert "_device_copies" in vars(blur)
    assert "_device_copies" not in vars(pickle.loads(pickle.dumps(blur)))
