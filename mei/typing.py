"""The pluggable slots of an MEI optimization, each named once.

Components satisfy these structurally: any callable with the right signature fits. Tensors are
batches, ``(B, C, H, W)`` for images or ``(B, C, T, H, W)`` for movies; element ``b`` of every
batch is one independent MEI. ``i_iteration`` is the 0-based step index.

Pipeline of one step::

    input -> transform -> model -> (evaluation - regularization) -> backward
          -> precondition(grad) -> optimizer.step -> postprocess(input) -> stopper -> tracker
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    from .domain import State


@runtime_checkable
class InitialGuess(Protocol):
    """Draws the starting input: ``initial(*shape, generator=g) -> Tensor`` of ``shape``.

    Components written for the original library take only ``*shape``; the engine then seeds
    torch's global generator around the call instead.
    """

    def __call__(self, *shape: int, generator: Any = None) -> Tensor: ...


class Transform(Protocol):
    """What the model sees: ``transform(x, i_iteration) -> Tensor``; differentiable."""

    def __call__(self, x: Tensor, i_iteration: int) -> Tensor: ...


class Regularization(Protocol):
    """Penalty subtracted from the evaluation: ``(x, i_iteration) -> Tensor`` of shape ``(B,)``.

    ``x`` is the transformed input. A 0-d tensor is accepted for a batch of one.
    """

    def __call__(self, x: Tensor, i_iteration: int) -> Tensor: ...


class Precondition(Protocol):
    """Reshapes the gradient before the optimizer step: ``(grad, i_iteration) -> Tensor``."""

    def __call__(self, grad: Tensor, i_iteration: int) -> Tensor: ...


class PostProcessing(Protocol):
    """Projects the input after the step (no gradient): ``(x, i_iteration) -> Tensor``."""

    def __call__(self, x: Tensor, i_iteration: int) -> Tensor: ...


class Stopper(Protocol):
    """Decides, once per step and per MEI, whether to stop: ``(state) -> (stop, output)``."""

    def __call__(self, current_state: State) -> tuple[bool, Any]: ...


class Objective(Protocol):
    """A tracked quantity (not the maximized one): ``(state) -> value or None``.

    ``None`` means "nothing to record at this step".
    """

    def __call__(self, current_state: State) -> Any: ...


OptimizerFactory = Callable[..., Any]
"""Called as ``optimizer(params=[input], **kwargs)``; returns a ``torch.optim.Optimizer``."""

Model = Callable[[Tensor], Tensor]
"""Maps inputs ``(B, ...)`` to one response per element, ``(B,)`` or ``(B, 1)``."""

Dataloaders = dict[str, dict[str, Iterable]] | None
"""NNFabrik-style ``{"train": {data_key: DataLoader, ...}, ...}``."""
