"""The pluggable slots of an MEI optimization, each named once.

Components satisfy these structurally: any callable with the right signature fits. Tensors are
batches, ``(B, C, H, W)`` for images or ``(B, C, T, H, W)`` for movies; element ``b`` of every
batch is one independent MEI. ``i_iteration`` is the 0-based step index.

Pipeline of one step::

    (params -> parameterization ->) input -> transform -> model -> (evaluation - regularization) -> backward
          -> precondition(grad) -> optimizer.step -> postprocess(input) -> stopper -> tracker
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .domain import State, StepRecord

__all__ = [
    "Background",
    "BatchedObjective",
    "BatchedStopper",
    "Dataloaders",
    "InitialGuess",
    "Model",
    "Objective",
    "OptimizerFactory",
    "Parameterization",
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
class Parameterization(Protocol):
    """What the optimizer changes: ``parameterization(params) -> image``, differentiable,
    and ``from_image(image) -> params`` back (for the initial guess and after postprocessing).
    The batch stays the first dimension. Without one, the optimizer changes the image."""

    def __call__(self, params: Tensor, /) -> Tensor: ...

    def from_image(self, image: Tensor, /) -> Tensor: ...


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
class Background(Protocol):
    """What a transparent MEI is composed over: ``(x, i_iteration) -> Tensor`` (the original
    library's ``background``, used with ``transparency``)."""

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


class BatchedStopper(Protocol):
    """The batched form of a batch's stoppers: decides for all elements in one call.

    A stopper class opts in with a classmethod ``batched(stoppers) -> BatchedStopper | None``
    defined in the class itself (a subclass does not inherit it: it may behave differently),
    given the run's stoppers, one per element, all of that class; ``None`` means "use the
    per-element calls". Without it the engine calls each element's stopper with its
    :class:`~mei.domain.State`, as the original library did. Both must decide the same.

    ``reads(i_iteration)`` names the :class:`~mei.domain.StepRecord` attributes the call at
    that step will read (an empty collection: nothing, so nothing is kept or copied).
    ``__call__(record, elements)`` is called once per step with the still-running elements
    (indices into the batch, ascending) and returns the elements that stop and either
    ``None`` (every output is ``None``) or one output per element of ``elements``.
    """

    def reads(self, i_iteration: int, /) -> Collection[str]: ...

    def __call__(
        self, record: StepRecord, elements: Sequence[int], /
    ) -> tuple[Sequence[int], Sequence[Any] | None]: ...


class BatchedObjective(Protocol):
    """The batched form of a batch's objectives of one name: values for all elements at once.

    Opt-in as for :class:`BatchedStopper`: a classmethod ``batched(objectives)`` defined in
    the objective's class. ``__call__(record, elements)`` returns ``None`` when nothing is
    recorded at this step, or one value per element of ``elements`` (``None`` values are not
    logged), exactly what the per-element calls would have returned.
    """

    def reads(self, i_iteration: int, /) -> Collection[str]: ...

    def __call__(self, record: StepRecord, elements: Sequence[int], /) -> Sequence[Any] | None: ...


OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""Called as ``optimizer(params=[input], **kwargs)``; returns a ``torch.optim.Optimizer``."""

Model = Callable[[Tensor], Tensor]
"""Maps inputs ``(B, ...)`` to one response per element, ``(B,)`` or ``(B, 1)``."""

Dataloaders = Mapping[str, Mapping[str, Iterable[Any]] | Iterable[Any]] | None
"""NNFabrik-style ``{"train": {data_key: DataLoader, ...}, ...}``."""
