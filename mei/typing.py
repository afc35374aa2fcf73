"""The pluggable slots of an MEI optimization, each named once.

Components satisfy these structurally: any callable with the right signature fits. Tensors are
batches, ``(B, C, H, W)`` for images or ``(B, C, T, H, W)`` for movies; element ``b`` of every
batch is one independent MEI. ``i_iteration`` is the 0-based step index.

Pipeline of one step::

    input -> transform -> model -> (evaluation - regularization) -> backward
          -> precondition(grad) -> optimizer.step -> postprocess(input) -> stopper -> tracker
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .domain import State

__all__ = [
    "Dataloaders",
    "InitialGuess",
    "Model",
    "Objective",
    "OptimizerFactory",
    "PostProcessing",
    "Precondition",
    "Regularization",
    "Stopper",
    "Transform",
]


@runtime_checkable
class InitialGuess(Protocol):
    """Draws the starting input: ``initial(*shape, generator=g) -> Tensor`` of ``shape``.

    Components written for the original library take only ``*shape``; the engine then seeds
    torch's global generator around the call instead.
    """

    def __call__(self, *shape: int, generator: torch.Generator | None = None) -> Tensor: ...


@runtime_checkable
class Transform(Protocol):
    """What the model sees: ``transform(x, i_iteration) -> Tensor``; differentiable.

    The engine always passes the step; the built-in components also accept ``None`` (the
    original library's default) when called by hand.
    """

    def __call__(self, x: Tensor, i_iteration: int, /) -> Tensor: ...


@runtime_checkable
class Regularization(Protocol):
    """Penalty subtracted from the evaluation: ``(x, i_iteration) -> Tensor`` of shape ``(B,)``.

    ``x`` is the transformed input. A 0-d tensor is accepted for a batch of one.
    """

    def __call__(self, x: Tensor, i_iteration: int, /) -> Tensor: ...


@runtime_checkable
class Precondition(Protocol):
    """Reshapes the gradient before the optimizer step: ``(grad, i_iteration) -> Tensor``."""

    def __call__(self, grad: Tensor, i_iteration: int, /) -> Tensor: ...


@runtime_checkable
class PostProcessing(Protocol):
    """Projects the input after the step (no gradient): ``(x, i_iteration) -> Tensor``."""

    def __call__(self, x: Tensor, i_iteration: int, /) -> Tensor: ...


@runtime_checkable
class Stopper(Protocol):
    """Decides, once per step and per MEI, whether to stop: ``(state) -> (stop, output)``."""

    def __call__(self, current_state: State, /) -> tuple[bool, Any]: ...


@runtime_checkable
class Objective(Protocol):
    """A tracked quantity (not the maximized one): ``(state) -> value or None``.

    ``None`` means "nothing to record at this step".
    """

    def __call__(self, current_state: State, /) -> Any: ...


OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""Called as ``optimizer(params=[input], **kwargs)``; returns a ``torch.optim.Optimizer``."""

Model = Callable[[Tensor], Tensor]
"""Maps inputs ``(B, ...)`` to one response per element, ``(B,)`` or ``(B, 1)``."""

Dataloaders = Mapping[str, Mapping[str, Iterable[Any]] | Iterable[Any]] | None
"""NNFabrik-style ``{"train": {data_key: DataLoader, ...}, ...}``."""
