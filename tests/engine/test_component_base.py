"""Every built-in transform, regularization, preconditioner and postprocessor through the
shared checks of :mod:`component_base`.

:func:`test_every_component_has_a_case` fails for a component whose class has no case here.
``mei.legacy.ops`` re-implements the original library's operations with its whole-batch
semantics; they are checked in ``test_legacy_ops.py``.
"""

import inspect

import pytest
from component_base import (
    Case,
    ComponentTester,
    DifferentiableComponentTester,
    pytest_generate_tests,  # noqa: F401  (parametrizes the test classes below)
)

from mei import postprocessing, preconditioning, regularization, transforms
from mei.import_helpers import resolve_path

TRANSFORMS = [
    Case("mei.transforms.Identity"),
    Case("mei.transforms.Jitter", {"max_jitter": 1}),
    Case("mei.transforms.Jitter", {"max_jitter": [2, 1]}, name="Jitter-yx"),
    Case("mei.transforms.RandomCrop", {"height": 3, "width": 4}),
    Case("mei.transforms.Resize", {"scale_factor": 0.5}),
    Case(
        "mei.transforms.Resize",
        {"scale_factor": 2.0, "resize_method": "nearest"},
        name="Resize-nearest",
    ),
    Case("mei.transforms.GrayscaleToRGB"),
    Case("mei.transforms.ChangeRange", {"x_min": -1.0, "x_max": 2.0}),
    Case(
        "mei.transforms.Compose",
        {
            "transforms": [
                {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}},
                {"path": "mei.transforms.ChangeRange", "kwargs": {"x_min": 0.0, "x_max": 1.0}},
            ]
        },
    ),
]
REGULARIZATIONS = [
    Case("mei.regularization.TotalVariation", {"weight": 0.5}),
    Case("mei.regularization.TotalVariation", {"isotropic": True}, name="TotalVariation-iso"),
    Case(
        "mei.regularization.TotalVariation",
        {"weight": 0.5, "temporal_weight": 2.0},
        four_d="raises",
        error=r"acts on the time axis of movies \(B, C, T, H, W\), got inputs of shape \(\d+, 1, \d+, \d+\)",
        name="TotalVariation-time",
    ),
    Case("mei.regularization.LpNorm", {"weight": 0.5, "p": 6}),
    Case("mei.regularization.Diversity", {"weight": 2.0, "group": 1}),
    Case("mei.regularization.L2ToReference", {"reference": [0.5, -1.0, 0.0, 2.0, 1.0, -0.5]}),
    Case(
        "mei.regularization.WeightedSum",
        {
            "regularizations": [
                {"path": "mei.regularization.LpNorm", "kwargs": {"p": 2}, "weight": 2.0},
                {"path": "mei.regularization.TotalVariation"},
            ]
        },
    ),
    Case(
        "mei.regularization.RangePenalty",
        {"min_max_values": [[-0.3, 0.4]], "max_norm": 1.0, "factor": 0.5},
    ),
]
PRECONDITIONERS = [
    Case("mei.preconditioning.GaussianBlur", {"sigma": 1.0}),
    Case(
        "mei.preconditioning.GaussianBlur",
        {"sigma": [1.5, 0.7], "decay_factor": -0.1, "pad_mode": "replicate"},
        name="GaussianBlur-decay",
    ),
    Case("mei.preconditioning.FourierSmoothing", {"freq_exp": 2.0}),
    Case(
        "mei.preconditioning.TemporalBlur",
        {"sigma": 1.0},
        four_d="raises",
        error=r"TemporalBlur acts on the time axis of movies \(B, C, T, H, W\), got inputs",
    ),
    Case(
        "mei.preconditioning.TemporalBlur",
        {"sigma": 2.5, "pad_mode": "reflect"},
        four_d="raises",
        error=r"TemporalBlur acts on the time axis of movies",
        name="TemporalBlur-reflect",
    ),
    Case("mei.preconditioning.MultiplyBy", {"const": 2.0, "decay_factor": 0.1}),
    Case("mei.preconditioning.DivideByMeanOfAbsolute"),
    Case(
        "mei.preconditioning.TemporalBlur",
        {"sigma": 0.5, "kernel_size": 4, "pad_mode": "constant"},
        four_d="raises",
        error=r"TemporalBlur acts on the time axis of movies",
        name="TemporalBlur-kernel-size",
    ),
]
POSTPROCESSORS = [
    Case("mei.postprocessing.ChannelNormClip", {"norm": 2.0, "x_min": [-0.4], "x_max": [0.5]}),
    Case(
        "mei.postprocessing.ChannelNormClip",
        {"norm": [3.0], "x_min": -0.5, "x_max": 0.6, "exact": True},
        name="ChannelNormClip-exact",
    ),
    Case("mei.postprocessing.ChangeNorm", {"norm": 2.0}),
    Case("mei.postprocessing.ClipRange", {"x_min": -0.5, "x_max": 0.5}),
    Case("mei.postprocessing.ChangeStd", {"std": 0.5}),
    Case("mei.postprocessing.PNormConstraint", {"norm_value": 1.0, "p": 2}),
    Case(
        "mei.postprocessing.PNormConstraintAndClip",
        {"norm_value": 2.0, "p": 2, "max_pixel_value": 0.5, "min_pixel_value": -0.5},
    ),
]
ALL = TRANSFORMS + REGULARIZATIONS + PRECONDITIONERS + POSTPROCESSORS


class TestTransforms(DifferentiableComponentTester):
    CASES = TRANSFORMS


class TestRegularizations(DifferentiableComponentTester):
    CASES = REGULARIZATIONS


class TestPreconditioners(ComponentTester):
    CASES = PRECONDITIONERS


class TestPostprocessors(ComponentTester):
    CASES = POSTPROCESSORS


@pytest.mark.parametrize("module", [transforms, regularization, preconditioning, postprocessing])
def test_every_component_has_a_case(module):
    """A new component without a case here fails, so it cannot skip the shared checks."""
    covered = {resolve_path(case.path) for case in ALL}
    public = getattr(module, "__all__", None) or [n for n in vars(module) if not n[0] == "_"]
    components = [
        obj
        for name in public
        if inspect.isclass(obj := getattr(module, name))
        and obj.__module__.startswith("mei.")
        and obj.__module__ not in ("mei._components", "mei.typing")
    ]
    assert components
    assert [c.__name__ for c in components if c not in covered] == []
