"""Objectives: quantities *tracked* during optimization (not the maximized quantity).

The maximized quantity is always the model's evaluation minus the regularization term. An
objective looks at a :class:`~mei.domain.State` and returns a value to record, or ``None`` for
"nothing at this step". The :class:`~mei.tracking.Tracker` logs the values per objective.

The built-in objectives also have a batched form (``batched(objectives)``, see
:class:`~mei.typing.BatchedObjective`): on the steps between intervals it costs one modulo
for the whole batch, and on the others it copies the field once for the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ._batched import IntervalBatch
from .domain import State
from .typing import BatchedObjective


class Objective(ABC):
    """Base class: ``__call__(current_state) -> value or None``.

    As in the original library, a subclass may implement only ``compute(current_state)``:
    it is then computed at every step.
    """

    def __call__(self, current_state: State) -> Any:
        return self.compute(current_state)

    @abstractmethod
    def compute(self, current_state: State) -> Any:
        """The value to record for ``current_state`` (``None``: nothing to record)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class RegularIntervalObjective(Objective):
    """Records ``compute(state)`` every ``interval`` steps (at steps 0, interval, 2*interval...)."""

    def __init__(self, interval: int):
        if int(interval) != interval or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        self.interval = int(interval)

    def __call__(self, current_state: State) -> Any:
        if current_state.i_iter % self.interval == 0:
            return self.compute(current_state)
        return None

    @abstractmethod
    def compute(self, current_state: State) -> Any: ...


class EvaluationObjective(RegularIntervalObjective):
    """The model's evaluation (a float)."""

    def compute(self, current_state: State) -> float:
        return current_state.evaluation

    @classmethod
    def batched(cls, objectives: Sequence[EvaluationObjective]) -> BatchedObjective:
        return IntervalBatch(objectives, "evaluation")


class RegularizationObjective(RegularIntervalObjective):
    """The regularization term (a float)."""

    def compute(self, current_state: State) -> float:
        return current_state.reg_term

    @classmethod
    def batched(cls, objectives: Sequence[RegularizationObjective]) -> BatchedObjective:
        return IntervalBatch(objectives, "reg_term")


class PostProcessedInputObjective(RegularIntervalObjective):
    """The input after the step (a CPU tensor)."""

    def compute(self, current_state: State) -> Any:
        return current_state.post_processed_input

    @classmethod
    def batched(cls, objectives: Sequence[PostProcessedInputObjective]) -> BatchedObjective:
        return IntervalBatch(objectives, "post_processed_input")


class GradientObjective(RegularIntervalObjective):
    """The gradient before preconditioning (a CPU tensor)."""

    def compute(self, current_state: State) -> Any:
        return current_state.grad

    @classmethod
    def batched(cls, objectives: Sequence[GradientObjective]) -> BatchedObjective:
        return IntervalBatch(objectives, "grad")
