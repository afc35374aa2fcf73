"""Postprocessing: project the input after each step, ``(x, i_iteration) -> Tensor``.

Runs without gradient. Every operation acts on each batch element separately: element ``b``'s
norm is ``b``'s own, whatever else is in the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._components import Component, expand_like, per_element


class ChangeNorm(Component):
    """Rescale each element to L2 norm ``norm``."""

    def __init__(self, norm: float):
        if norm < 0:
            raise ValueError(f"norm must be >= 0, got {norm!r}")
        self.norm = norm

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        x_norm = torch.linalg.vector_norm(per_element(x), dim=-1)
        return x * expand_like(self.norm / x_norm.clamp(min=1e-12), x)


class ClipRange(Component):
    """Clip values to ``[x_min, x_max]``."""

    def __init__(self, x_min: float, x_max: float):
        if x_max < x_min:
            raise ValueError(f"x_max must be >= x_min, got x_min={x_min!r}, x_max={x_max!r}")
        self.x_min = x_min
        self.x_max = x_max

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        return torch.clamp(x, self.x_min, self.x_max)


class ChangeStd(Component):
    """Rescale each element to standard deviation ``std`` (the mean is scaled along)."""

    def __init__(self, std: float):
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.std = std

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        x_std = per_element(x).std(dim=-1)
        return x * expand_like(self.std / x_std.clamp(min=1e-12), x)


class PNormConstraint(Component):
    """Scale down each element whose p-norm exceeds ``norm_value`` to exactly that norm."""

    def __init__(self, norm_value: float, p: float = 1):
        if norm_value < 0:
            raise ValueError(f"norm_value must be >= 0, got {norm_value!r}")
        if p <= 0:
            raise ValueError(f"p must be positive, got {p!r}")
        self.norm_value = norm_value
        self.p = p

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        x_norm = torch.linalg.vector_norm(per_element(x), ord=self.p, dim=-1)
        scale = torch.where(
            x_norm > self.norm_value, self.norm_value / (x_norm + 1e-12), torch.ones_like(x_norm)
        )
        return x * expand_like(scale, x)


class PNormConstraintAndClip(PNormConstraint):
    """:class:`PNormConstraint`, then clip values to ``[min_pixel_value, max_pixel_value]``.

    When the range contains 0, clipping only shrinks values, so the norm bound still holds.
    """

    def __init__(
        self,
        norm_value: float = 30.0,
        p: float = 1,
        max_pixel_value: float = 1.0,
        min_pixel_value: float = -1.0,
    ):
        super().__init__(norm_value, p)
        if max_pixel_value < min_pixel_value:
            raise ValueError(
                f"max_pixel_value must be >= min_pixel_value, got {max_pixel_value!r} < "
                f"{min_pixel_value!r}"
            )
        self.max_pixel_value = float(max_pixel_value)
        self.min_pixel_value = float(min_pixel_value)

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        x = super().__call__(x, i_iteration)
        return torch.clamp(x, self.min_pixel_value, self.max_pixel_value)
