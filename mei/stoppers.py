"""Stoppers decide, after each step, whether an MEI is done.

A stopper is called once per step and per MEI with that MEI's :class:`~mei.domain.State` and
returns ``(stop, output)``; ``output`` is stored as ``state.stopper_output``. Stoppers may keep
state (the engine makes a fresh one for every MEI of every run). Reading ``state.evaluation``
copies a value from the device: a stopper that reads only ``i_iter`` costs nothing.

The built-in stoppers also have a batched form (``batched(stoppers)``, see
:class:`~mei.typing.BatchedStopper`) that decides for the whole batch in one call and makes
the same decisions; the engine uses it when every element's stopper has one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from ._batched import NumIterationsBatch, combined
from .domain import State
from .import_helpers import import_path
from .typing import BatchedStopper, Stopper


class OptimizationStopper(ABC):
    """Base class of stoppers: ``__call__(current_state) -> (stop, output)``."""

    @abstractmethod
    def __call__(self, current_state: State) -> tuple[bool, Any]:
        """Return whether to stop after this step, and anything worth recording."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class NumIterations(OptimizationStopper):
    """Stop at the step whose index ``i_iter`` is ``num_iterations``: ``num_iterations + 1``
    steps, as the original library counted.

    Method rows stored by labs name this stopper, and DataJoint promises that a key
    recomputes to the same row, so it keeps the original's count. :class:`MaxSteps` runs
    exactly the number of steps asked.
    """

    def __init__(self, num_iterations: int):
        if int(num_iterations) != num_iterations or num_iterations < 0:
            raise ValueError(
                f"num_iterations must be a non-negative integer, got {num_iterations!r}"
            )
        self.num_iterations = int(num_iterations)

    def __call__(self, current_state: State) -> tuple[bool, Any]:
        return current_state.i_iter >= self.num_iterations, None

    @property
    def steps(self) -> int:
        """How many steps a run takes."""
        return self.num_iterations + 1

    @classmethod
    def batched(cls, stoppers: Sequence[NumIterations]) -> BatchedStopper:
        return NumIterationsBatch([s.num_iterations for s in stoppers])


class MaxSteps(OptimizationStopper):
    """Stop after exactly ``steps`` steps (the last has ``i_iter == steps - 1``)."""

    def __init__(self, steps: int):
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.steps = int(steps)

    def __call__(self, current_state: State) -> tuple[bool, Any]:
        return current_state.i_iter + 1 >= self.steps, None

    @classmethod
    def batched(cls, stoppers: Sequence[MaxSteps]) -> BatchedStopper:
        return NumIterationsBatch([s.steps - 1 for s in stoppers])


class EarlyStopping(OptimizationStopper):
    """Stop when the evaluation has not improved by more than ``min_delta`` for ``patience``
    consecutive steps, or after ``max_iter`` steps (if given).

    Reads the evaluation every step (one device synchronization per step on a GPU).
    The output is the best evaluation so far.
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0, max_iter: int | None = None):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        if max_iter is not None and max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
        self.patience = patience
        self.min_delta = min_delta
        self.max_iter = max_iter
        self._best = -math.inf
        self._since_best = 0

    def __call__(self, current_state: State) -> tuple[bool, Any]:
        evaluation = current_state.evaluation
        if evaluation > self._best + self.min_delta:
            self._best = evaluation
            self._since_best = 0
        else:
            self._since_best += 1
        stop = self._since_best >= self.patience
        if self.max_iter is not None and current_state.i_iter + 1 >= self.max_iter:
            stop = True
        return stop, self._best


class LossEarlyStopping(OptimizationStopper):
    """open-retina's ``EarlyStopper(max_iterations, patience, min_delta)``: stop when the loss
    has risen above its lowest value by more than ``min_delta`` at ``patience`` steps since that
    lowest value, or after ``max_iterations`` steps (if given).

    The loss of a step is what it minimized, ``reg_term - evaluation`` at the input before
    the step (open-retina's ``-objective + regularization``, in float32 as there). A step
    whose loss is below the lowest so far is the new lowest and resets the count; a loss
    more than ``min_delta`` above the lowest adds one; a loss in between (within
    ``min_delta`` of the lowest, or equal to it) changes nothing. Each MEI of a batch has its
    own stopper, so each stops as a run of its own would. The output is the lowest loss so
    far. Reads the evaluation every step (one device synchronization per step on a GPU).
    """

    def __init__(
        self, max_iterations: int | None = None, patience: int = 1, min_delta: float = 0.0
    ):
        if max_iterations is not None and (
            isinstance(max_iterations, bool)
            or int(max_iterations) != max_iterations
            or max_iterations < 1
        ):
            raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
        if isinstance(patience, bool) or int(patience) != patience or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.max_iterations = None if max_iterations is None else int(max_iterations)
        self.patience = int(patience)
        self.min_delta = min_delta
        self._lowest = math.inf
        self._count = 0

    @staticmethod
    def loss(current_state: State) -> float:
        """The step's loss ``reg_term - evaluation``, rounded to float32 as open-retina's."""
        reg_term = current_state.reg_term
        loss = torch.tensor(-float(current_state.evaluation), dtype=torch.float32)
        if reg_term:
            loss = loss + torch.tensor(float(reg_term), dtype=torch.float32)
        return float(loss)

    def __call__(self, current_state: State) -> tuple[bool, Any]:
        loss = self.loss(current_state)
        stop = False
        if loss < self._lowest:
            self._lowest = loss
            self._count = 0
        elif loss > self._lowest + self.min_delta:
            self._count += 1
            stop = self._count >= self.patience
        if self.max_iterations is not None and current_state.i_iter + 1 >= self.max_iterations:
            stop = True
        return stop, self._lowest


class AnyStopper(OptimizationStopper):
    """Stop as soon as any of several stoppers says so; output is the list of their outputs.

    ``stoppers`` are stopper objects or config entries ``{"path": ..., "kwargs": {...}}``.
    Every stopper is called at every step, so each keeps its own state up to date.
    """

    def __init__(self, stoppers: Sequence[Stopper | dict[str, Any]]):
        if not stoppers:
            raise ValueError("stoppers must name at least one stopper, got an empty list")
        self.stoppers: list[Stopper] = [
            import_path(s["path"], s.get("kwargs")) if isinstance(s, dict) else s for s in stoppers
        ]

    def __call__(self, current_state: State) -> tuple[bool, Any]:
        results = [stopper(current_state) for stopper in self.stoppers]
        return any(stop for stop, _ in results), [output for _, output in results]

    @classmethod
    def batched(cls, stoppers: Sequence[AnyStopper]) -> BatchedStopper | None:
        return combined(stoppers, every=False)


class AllStoppers(AnyStopper):
    """Stop once every one of several stoppers says so (each is asked at every step)."""

    def __call__(self, current_state: State) -> tuple[bool, Any]:
        results = [stopper(current_state) for stopper in self.stoppers]
        return all(stop for stop, _ in results), [output for _, output in results]

    @classmethod
    def batched(cls, stoppers: Sequence[AnyStopper]) -> BatchedStopper | None:
        return combined(stoppers, every=True)
