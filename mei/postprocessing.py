"""Postprocessing: project the input after each step, ``(x, i_iteration) -> Tensor``.

Images ``(B, C, H, W)`` and movies ``(B, C, T, H, W)`` alike; ChannelNormClip sets a norm
budget and a value range per channel.

Runs without gradient. Every operation acts on each batch element separately: element ``b``'s
norm is ``b``'s own, whatever else is in the batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, cast

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
        # norm / x_norm as torch computes it (reciprocal, then times norm), in place
        scale = x_norm.clamp_(min=1e-12).reciprocal_().mul_(self.norm)
        return x * expand_like(scale, x)


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


def _per_channel(value: Any, name: str) -> list[float | None] | float | None:
    """A bound or norm given once for all channels or as a list with one entry per channel."""
    if value is None or isinstance(value, numbers.Real):
        return None if value is None else float(value)
    if isinstance(value, (list, tuple)) and value:
        entries = [None if v is None else float(v) for v in value]
        return entries
    raise ValueError(f"{name} must be a number, None or a list with one per channel, got {value!r}")


class ChannelNormClip(Component):
    """A norm budget and a clip range per channel, for stimuli such as UV/green or RGB.

    ``norm``: one number (the L2 norm of the whole element, all channels jointly, as in
    open-retina's ``ChangeNormJointlyClipRangeSeparately``), a list with one budget per
    channel, or ``None`` (no norm). ``x_min``/``x_max``: one bound for all channels or a list
    with one per channel (``None``: unbounded). Each element is first rescaled to its norm,
    then clipped channel by channel: the ranges hold exactly, and when each contains 0 the
    norm stays within the budget (clipping only shrinks it). ``exact=True``: the scale is
    chosen (by bisection) so that the norm *after* clipping equals the budget, where the
    ranges can hold it. For Hoefling et al. (2024)'s mouse retina stimuli:
    ``ChannelNormClip(norm=5.0, x_min=[-0.654, -0.913], x_max=[6.269, 6.269])``.
    Acts on images ``(B, C, H, W)`` and movies ``(B, C, T, H, W)``; the lists must have
    one entry per channel (checked before the first step).
    """

    #: ``exact``: the scale is searched up to ``exp(_RANGE)`` times the unclipped one, in
    #: ``_STEPS`` halvings (to a relative ``_RANGE * 2**-_STEPS``)
    _RANGE = 30.0
    _STEPS = 48

    def __init__(
        self,
        norm: float | Sequence[float] | None = None,
        x_min: float | Sequence[float | None] | None = None,
        x_max: float | Sequence[float | None] | None = None,
        exact: bool = False,
    ):
        norms, lows, highs = (
            _per_channel(norm, "norm"),
            _per_channel(x_min, "x_min"),
            _per_channel(x_max, "x_max"),
        )
        if isinstance(norms, list) and any(n is None for n in norms):
            raise ValueError(f"norm must not hold None entries, got {norm!r}")
        for n in norms if isinstance(norms, list) else [norms]:
            if n is not None and n < 0:
                raise ValueError(f"norm must be >= 0, got {norm!r}")
        lengths = {len(v) for v in (norms, lows, highs) if isinstance(v, list)}
        if len(lengths) > 1:
            raise ValueError(
                f"norm, x_min and x_max list different numbers of channels: {sorted(lengths)}"
            )
        self._channels = lengths.pop() if lengths else None
        for c in range(self._channels or 1):
            low, high = _entry(lows, c), _entry(highs, c)
            if low is not None and high is not None and high < low:
                raise ValueError(f"x_max must be >= x_min, got {low!r} > {high!r} (channel {c})")
        if exact and norms is None:
            raise ValueError("exact=True needs a norm to meet")
        self.norm = norm
        self.x_min = x_min
        self.x_max = x_max
        self.exact = exact
        self._norms, self._lows, self._highs = norms, lows, highs

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) < 3:
            raise ValueError(f"ChannelNormClip expects (B, C, ...) inputs, got {tuple(shape)}")
        if self._channels is not None and shape[1] != self._channels:
            raise ValueError(
                f"ChannelNormClip has settings for {self._channels} channels, the input has "
                f"{shape[1]} (shape {tuple(shape)})"
            )

    def _bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds ``(1, C, 1)`` (infinite where unbounded)."""
        channels = x.shape[1]

        def column(values: Any, fill: float) -> Tensor:
            entries = [_entry(values, c) for c in range(channels)]
            filled = [fill if v is None else v for v in entries]
            return torch.tensor(filled, dtype=x.dtype, device=x.device).view(1, channels, 1)

        return column(self._lows, -math.inf), column(self._highs, math.inf)

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        self.check_shape(x.shape)
        flat = x.reshape(len(x), x.shape[1], -1)  # (B, C, N)
        low, high = self._bounds(x)
        if self._norms is None:
            return torch.maximum(torch.minimum(flat, high), low).reshape(x.shape)
        joint = not isinstance(self._norms, list)
        budget = torch.tensor(
            [self._norms] if joint else self._norms, dtype=x.dtype, device=x.device
        ).view(1, -1, 1)

        def norms(values: Tensor) -> Tensor:
            squares = (values**2).sum(dim=-1, keepdim=True)  # (B, C, 1)
            return (squares.sum(dim=1, keepdim=True) if joint else squares).sqrt()

        def clipped(scale: Tensor) -> Tensor:
            return torch.maximum(torch.minimum(flat * scale, high), low)

        scale = budget / norms(flat).clamp(min=1e-12)
        if self.exact:
            scale = self._exact_scale(scale, budget, norms, clipped)
        return clipped(scale).reshape(x.shape)

    def _exact_scale(
        self,
        start: Tensor,
        budget: Tensor,
        norms: Callable[[Tensor], Tensor],
        clipped: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """The scale ``s`` with ``norm(clip(s * x)) == budget``, per element (and channel).

        The clipped norm grows with ``s`` when the ranges contain 0, and ``start`` (the
        unclipped solution) is a lower bound; the search halves ``[log start, log start +
        _RANGE]`` a fixed number of times (no device synchronization). Where the ranges
        cannot hold the budget, the top of the interval (the saturated stimulus) is kept.
        """
        low = start.log()
        high = low + self._RANGE
        for _ in range(self._STEPS):
            middle = (low + high) / 2
            under = norms(clipped(middle.exp())) < budget
            low = torch.where(under, middle, low)
            high = torch.where(under, high, middle)
        return high.exp()


def _entry(values: Any, channel: int) -> float | None:
    """Channel ``channel``'s entry of a per-channel setting."""
    if isinstance(values, list):
        entry: float | None = values[channel]
        return entry
    return cast(float | None, values)
