"""Every built-in component fits its slot in :mod:`mei.typing`, by its call signature.

``isinstance`` against a runtime-checkable protocol only checks that ``__call__`` exists; the
signature check below compares parameters, their kinds and types, and the return type, so it
fails when a component's call signature drifts away from its slot.
"""

import inspect
import types
import typing
from typing import Any, Protocol, Union

import pytest
import torch
from torch import Tensor

import mei.typing as slots
from mei import (
    initial,
    modules,
    objectives,
    postprocessing,
    preconditioning,
    regularization,
    stoppers,
    transforms,
)
from mei.domain import State


class _ModelCall(Protocol):
    """:data:`mei.typing.Model` as a protocol, for the model wrappers' ``forward``."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


SLOT_OF_MODULE = {
    initial: slots.InitialGuess,
    transforms: slots.Transform,
    regularization: slots.Regularization,
    preconditioning: slots.Precondition,
    postprocessing: slots.PostProcessing,
    stoppers: slots.Stopper,
    objectives: slots.Objective,
}


def _classes(module):
    return [
        cls
        for cls in vars(module).values()
        if isinstance(cls, type)
        and cls.__module__ == module.__name__
        and callable(cls)
        and "__call__" in dir(cls)
        and Protocol not in cls.__mro__
    ]


CASES = [(cls, slot) for module, slot in SLOT_OF_MODULE.items() for cls in _classes(module)]
MODELS = [modules.ConstrainedOutputModel, modules.EnsembleModel, modules.UnitPerElement]


def _union(tp):
    if typing.get_origin(tp) in (Union, types.UnionType):
        return set(typing.get_args(tp))
    return {tp}


def _accepts(component_type, slot_type) -> bool:
    """Whether a parameter typed ``component_type`` takes every value of ``slot_type``."""
    if component_type is Any:
        return True
    return _union(slot_type) <= _union(component_type)


def _returns(component_type, slot_type) -> bool:
    """Whether a return typed ``component_type`` fits ``slot_type``."""
    if slot_type is Any:
        return True
    return component_type == slot_type


def _hints(function):
    return typing.get_type_hints(function, localns={"State": State})


def mismatches(function, slot) -> list[str]:
    """What keeps ``function`` (unbound ``__call__``) from fitting ``slot.__call__``."""
    problems = []
    slot_sig, slot_hints = inspect.signature(slot.__call__), _hints(slot.__call__)
    sig, hints = inspect.signature(function), _hints(function)
    wanted = list(slot_sig.parameters.values())[1:]  # drop self
    params = list(sig.parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_positional = [p for p in params if p.kind is p.VAR_POSITIONAL]
    by_name = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_keyword = [p for p in params if p.kind is p.VAR_KEYWORD]
    used = set()
    index = 0
    for want in wanted:
        want_type = slot_hints.get(want.name, Any)
        if want.kind is want.POSITIONAL_ONLY:
            if index < len(positional):
                have = positional[index]
            elif var_positional:
                have = var_positional[0]
            else:
                problems.append(f"takes no positional argument {index} ({want.name})")
                continue
            index += 1
        elif want.kind is want.VAR_POSITIONAL:
            if not var_positional:
                problems.append(f"takes no *{want.name}")
                continue
            have = var_positional[0]
        elif want.kind is want.KEYWORD_ONLY:
            have = by_name.get(want.name) or (var_keyword[0] if var_keyword else None)
            if have is None:
                problems.append(f"takes no keyword argument {want.name!r}")
                continue
            if want.default is not want.empty and have.default is have.empty:
                problems.append(f"{want.name!r} needs a default")
        else:
            raise AssertionError(f"slots use positional-only, *args and keyword-only: {want}")
        used.add(have.name)
        if not _accepts(hints.get(have.name, Any), want_type):
            problems.append(f"{have.name!r} is {hints.get(have.name)}, the slot passes {want_type}")
    for p in params:
        if (
            p.name not in used
            and p.default is p.empty
            and p.kind
            in (
                p.POSITIONAL_ONLY,
                p.POSITIONAL_OR_KEYWORD,
                p.KEYWORD_ONLY,
            )
        ):
            problems.append(f"{p.name!r} is required but the slot does not pass it")
    if not _returns(hints.get("return", Any), slot_hints.get("return", Any)):
        problems.append(f"returns {hints.get('return')}, the slot needs {slot_hints['return']}")
    return problems


def test_every_component_module_has_components():
    for module in SLOT_OF_MODULE:
        assert _classes(module), module.__name__


@pytest.mark.parametrize("cls, slot", CASES, ids=[f"{c.__name__}-{s.__name__}" for c, s in CASES])
def test_component_call_signature_fits_its_slot(cls, slot):
    assert mismatches(cls.__call__, slot) == []


@pytest.mark.parametrize("cls", MODELS, ids=[c.__name__ for c in MODELS])
def test_model_wrappers_fit_the_model_slot(cls):
    assert mismatches(cls.forward, _ModelCall) == []


def test_built_components_are_instances_of_the_runtime_checkable_slots():
    built = {
        slots.InitialGuess: [initial.RandomNormal(), initial.FromTensor(torch.zeros(1))],
        slots.Transform: [transforms.Jitter(1), transforms.Compose([transforms.Identity()])],
        slots.Regularization: [regularization.WeightedSum([regularization.LpNorm()])],
        slots.Precondition: [preconditioning.GaussianBlur(1.0)],
        slots.PostProcessing: [postprocessing.ChangeNorm(1.0)],
        slots.Stopper: [stoppers.AnyStopper([stoppers.NumIterations(1)])],
        slots.Objective: [objectives.EvaluationObjective(1)],
    }
    for slot, components in built.items():
        for component in components:
            assert isinstance(component, slot)


class _Drifted:
    def no_step(self, x: Tensor) -> Tensor: ...

    def step_required_keyword(self, x: Tensor, *, i_iteration: int) -> Tensor: ...

    def wrong_step_type(self, x: Tensor, i_iteration: str) -> Tensor: ...

    def extra_required(self, x: Tensor, i_iteration: int, scale: float) -> Tensor: ...

    def wrong_return(self, x: Tensor, i_iteration: int) -> tuple[Tensor, Tensor]: ...

    def fits(self, x: Tensor, i_iteration: int | None = None, scale: float = 1.0) -> Tensor: ...


@pytest.mark.parametrize(
    "name, problem",
    [
        ("no_step", "takes no positional argument 1"),
        ("step_required_keyword", "takes no positional argument 1"),
        ("wrong_step_type", "'i_iteration' is <class 'str'>"),
        ("extra_required", "'scale' is required"),
        ("wrong_return", "returns tuple"),
    ],
)
def test_the_check_catches_a_drifted_signature(name, problem):
    found = mismatches(getattr(_Drifted, name), slots.Transform)
    assert any(problem in p for p in found), found
    assert mismatches(_Drifted.fits, slots.Transform) == []
