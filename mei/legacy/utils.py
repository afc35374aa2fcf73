"""Helpers of the original library's legacy code: ``varargin``, ``Compose`` and ``Combine``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def varargin(f: F) -> F:
    """Let ``f`` be called with keyword arguments it does not declare; they are dropped.

    A function that already takes ``**kwargs`` is called unchanged. Positional arguments are
    always passed on as given. Useful for operations called as ``op(x, iteration=i)`` by
    optimizers that may pass more keywords in the future.
    """
    parameters = inspect.signature(f).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return f
    accepted = frozenset(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )

    @functools.wraps(f)
    def call(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **{k: v for k, v in kwargs.items() if k in accepted})

    return call  # type: ignore[return-value]  # same call signature as f


class Compose:
    """Apply ``operations`` one after the other: each gets the previous one's output as its
    positional argument and all keyword arguments of the call. No operations: returns None."""

    def __init__(self, operations: Sequence[Callable[..., Any]]):
        self.operations = operations

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        if not self.operations:
            return None
        out = x
        for op in self.operations:
            out = op(out, **kwargs)
        return out

    def __getitem__(self, item: Any) -> Any:
        return self.operations[item]

    def __repr__(self) -> str:
        return f"Compose(operations={self.operations!r})"


class Combine:
    """Apply each of ``operations`` to the same arguments and reduce their stacked results
    with ``combine_op`` (default: ``torch.sum``, e.g. to add regularizers). No operations:
    returns None."""

    def __init__(
        self,
        operations: Sequence[Callable[..., Any]],
        combine_op: Callable[[Tensor], Any] = torch.sum,
    ):
        self.operations = operations
        self.combine_op = combine_op

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.operations:
            return None
        return self.combine_op(torch.stack([op(*args, **kwargs) for op in self.operations]))

    def __getitem__(self, item: Any) -> Any:
        return self.operations[item]

    def __repr__(self) -> str:
        return f"Combine(operations={self.operations!r}, combine_op={self.combine_op!r})"
