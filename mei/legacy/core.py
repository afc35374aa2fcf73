"""The original library's legacy optimization loop, :func:`gradient_ascent`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, optim

from .exceptions import FeatureVisException

Op = Callable[..., Any]


def gradient_ascent(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    transform: Op | None = None,
    regularization: Op | None = None,
    gradient_f: Op | None = None,
    post_update: Op | None = None,
    optim_name: str = "SGD",
    step_size: float = 0.1,
    optim_kwargs: Mapping[str, Any] | None = None,
    num_iterations: int = 1000,
    save_iters: int | None = None,
    print_iters: int = 100,
) -> tuple[Tensor | list[Tensor], list[float], list[float]]:
    """Maximize ``f(transform(x)) - regularization(transform(x))`` by gradient ascent on ``x``.

    Each of ``num_iterations`` steps (``i`` from 1): transform, evaluate ``f`` (a scalar),
    subtract the regularization, back-propagate, replace the gradient by
    ``gradient_f(grad, iteration=i)``, take an ``optim_name`` ('SGD' or 'Adam') step of
    ``step_size`` (``optim_kwargs`` go to the optimizer), then set ``x`` to
    ``post_update(x, iteration=i)`` without gradient. Every ``print_iters`` steps a line is
    printed. The operations are called with ``iteration=`` (use ``varargin`` or ``**kwargs``).

    ``x`` must be float32; it is copied, not changed. Returns ``(opt_x, fevals, reg_terms)``:
    the final ``x`` (or, with ``save_iters``, the list of copies taken every ``save_iters``
    steps), the evaluations of ``f`` at every step plus one at the final ``x`` (transformed
    with ``iteration=num_iterations + 1``), and the regularization terms likewise (empty
    without a regularization).
    """
    if x.dtype != torch.float32:
        raise ValueError("x must be of torch.float32 dtype")
    x = x.detach().clone()
    x.requires_grad_()
    kwargs = dict(optim_kwargs or {})
    optimizer: optim.Optimizer
    if optim_name == "SGD":
        optimizer = optim.SGD([x], lr=step_size, **kwargs)
    elif optim_name == "Adam":
        optimizer = optim.Adam([x], lr=step_size, **kwargs)
    else:
        raise ValueError("Expected optim_name to be 'SGD' or 'Adam'")

    fevals: list[float] = []
    reg_terms: list[float] = []
    saved_xs: list[Tensor] = []
    i = 0
    for i in range(1, num_iterations + 1):
        if x.grad is not None:
            x.grad.zero_()
        transformed = x if transform is None else transform(x, iteration=i)
        feval = f(transformed)
        fevals.append(feval.item())
        reg_term: Any = 0
        if regularization is not None:
            reg_term = regularization(transformed, iteration=i)
            reg_terms.append(reg_term.item())
        (-feval + reg_term).backward()
        if x.grad is None:
            raise FeatureVisException("Gradient did not reach x.")
        if gradient_f is not None:
            x.grad = gradient_f(x.grad, iteration=i)
        assert x.grad is not None
        if (torch.abs(x.grad) < 1e-9).all():
            warnings.warn("Gradient for x is all zero", stacklevel=2)
        optimizer.step()
        if post_update is not None:
            with torch.no_grad():
                x[:] = post_update(x, iteration=i)  # in place: the optimizer holds x
        if i % print_iters == 0:
            reg_value = reg_term if regularization is None else reg_term.item()
            print(
                f"Iter {i}: f(x) = {feval.item():.2f}, reg(x) = {reg_value:.2f}, "
                f"std(x) = {x.std().item():.2f}"
            )
        if save_iters is not None and i % save_iters == 0:
            saved_xs.append(x.detach().clone())

    with torch.no_grad():
        transformed = x if transform is None else transform(x, iteration=i + 1)
        fevals.append(f(transformed).item())
        if regularization is not None:
            reg_terms.append(regularization(transformed, iteration=i + 1).item())
    print(f"Final f(x) = {fevals[-1]:.2f}")
    opt_x: Tensor | list[Tensor] = x.detach().clone() if save_iters is None else saved_xs
    return opt_x, fevals, reg_terms
