"""Model wrappers: select one output unit, average an ensemble, select one unit per element;
check a model's first response."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ModelError


def _identity(x: Tensor) -> Tensor:
    return x


class ConstrainedOutputModel(nn.Module):
    """The response of one output unit: ``target_fn(model(x, **forward_kwargs)[:, constraint])``.

    ``constraint`` indexes the model's second dimension (an int, a slice or a list of units).
    ``forward_kwargs`` are passed to every call and never changed by one; keyword arguments
    given at call time are added to a copy.
    """

    def __init__(
        self,
        model: nn.Module,
        constraint: Any,
        target_fn: Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.constraint = constraint
        self.target_fn = target_fn if target_fn is not None else _identity
        self.forward_kwargs = dict(forward_kwargs) if forward_kwargs else {}

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        merged = {**self.forward_kwargs, **kwargs}
        return self.target_fn(self.model(x, *args, **merged)[:, self.constraint])

    def extra_repr(self) -> str:
        target = "" if self.target_fn is _identity else f", target_fn={self.target_fn!r}"
        return f"constraint={self.constraint!r}{target}, forward_kwargs={self.forward_kwargs!r}"


class EnsembleModel(nn.Module):
    """Averages the outputs of its members (all called with the same arguments)."""

    def __init__(self, *members: nn.Module):
        super().__init__()
        if not members:
            raise ValueError("EnsembleModel needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        outputs = [member(x, *args, **kwargs) for member in self.members]
        for i, output in enumerate(outputs):
            if isinstance(output, Tensor) and not output.dtype.is_floating_point:
                raise ModelError(
                    f"ensemble member {i} ({type(self.members[i]).__name__}) returned a tensor "
                    f"of dtype {output.dtype}; members must return floating-point values to be "
                    "averaged (and ascended)"
                )
        return torch.stack(outputs, dim=0).mean(dim=0)


class UnitPerElement(nn.Module):
    """Element ``b`` of the batch gets unit ``units[b]``: ``model(x)[b, units[b]]``, ``(B,)``.

    This is how a batched run gives every MEI its own neuron. ``target_fn`` (applied to the
    selected responses, elementwise) and ``forward_kwargs`` are as in
    :class:`ConstrainedOutputModel`.
    """

    def __init__(
        self,
        model: nn.Module,
        units: Sequence[int],
        target_fn: Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.units = [int(u) for u in units]
        self.target_fn = target_fn if target_fn is not None else _identity
        self.forward_kwargs = dict(forward_kwargs) if forward_kwargs else {}
        self.register_buffer("_units", torch.tensor(self.units), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if len(x) != len(self.units):
            raise ValueError(f"expected a batch of {len(self.units)} inputs, got {len(x)}")
        output = self.model(x, **self.forward_kwargs)
        units = self._units.to(output.device)
        selected = output[torch.arange(len(x), device=output.device), units]
        return self.target_fn(selected)

    def extra_repr(self) -> str:
        return f"units={self.units!r}"


class FirstCallCheck:
    """``model`` for one run, checked at its first call (the first step) only.

    Its output must be floating point, and for every batch element the gradient of the
    output with respect to the model's input must not be zero everywhere: a model such as
    ``y * 0 + 1`` has a gradient path but no gradient, and ascending it would return the
    initial guess unchanged. The gradient is seen on a view of the input the model gets, so
    transforms (crops, masks) and regularization do not count. Raises
    :class:`~mei.errors.ModelError`; costs one device synchronization, in the first backward
    pass. Later calls go straight to ``model``.
    """

    def __init__(self, model: Callable[[Tensor], Tensor]):
        self.model = model
        self._checked = False

    def __call__(self, x: Tensor) -> Tensor:
        if self._checked:
            return self.model(x)
        self._checked = True
        seen = x.view_as(x) if x.requires_grad else x
        output = self.model(seen)
        if isinstance(output, Tensor) and not output.dtype.is_floating_point:
            raise ModelError(
                f"the model returned a tensor of dtype {output.dtype}; it must return "
                "floating-point values (an integer output has no gradient to ascend)"
            )
        if seen is not x and isinstance(output, Tensor) and output.requires_grad:
            seen.register_hook(_refuse_zero_gradient)  # type: ignore[no-untyped-call]
        return output

    def __repr__(self) -> str:
        return repr(self.model)


def _refuse_zero_gradient(grad: Tensor) -> None:
    zero = ~grad.reshape(len(grad), -1).ne(0).any(dim=1)
    if bool(zero.any()):  # the check's one device synchronization
        elements = zero.nonzero().flatten().tolist()
        raise ModelError(
            "the model's output does not depend on its input: at the first step the gradient "
            f"of its output with respect to its input is zero everywhere for batch element(s) "
            f"{elements} (a constant output such as y * 0 + 1, or a unit silent at the initial "
            "guess); optimizing would return the initial guess unchanged"
        )
