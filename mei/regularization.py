"""Regularization: penalties subtracted from the evaluation, ``(x, i_iteration) -> (B,)``.

Every regularizer returns one value per batch element (of the transformed input), so that a
batched run penalizes each MEI exactly as a run of its own would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from ._components import (
    Component,
    all_capturable,
    build,
    check_shape,
    per_element,
    require_movie,
    use_group,
)
from .typing import Regularization


def total_variation(
    x: Tensor, isotropic: bool = False, eps: float = 1e-8, temporal_weight: float = 0.0
) -> Tensor:
    """Total variation of each image in ``(B, C, H, W)`` (or movie ``(B, C, T, H, W)``: of
    every frame, summed), ``(B,)``.

    Anisotropic: sum of ``|x[i+1, j] - x[i, j]| + |x[i, j+1] - x[i, j]|``. Isotropic: sum of
    ``sqrt(dy**2 + dx**2)`` over the pixels where both neighbours exist. ``temporal_weight``
    (movies only) adds that weight times the sum of ``|x[t+1] - x[t]|`` over time.
    """
    dy = x[..., 1:, :] - x[..., :-1, :]
    dx = x[..., :, 1:] - x[..., :, :-1]
    if isotropic:
        tv = per_element(torch.sqrt(dy[..., :, :-1] ** 2 + dx[..., :-1, :] ** 2 + eps)).sum(-1)
    else:
        tv = per_element(dy.abs()).sum(-1) + per_element(dx.abs()).sum(-1)
    if temporal_weight:
        require_movie("total_variation(temporal_weight=...)", x.shape)
        dt = x[:, :, 1:] - x[:, :, :-1]
        tv = tv + temporal_weight * per_element(dt.abs()).sum(-1)
    return tv


class TotalVariation(Component):
    """``weight`` times the total variation of each image (of each frame of a movie):
    penalizes edges and noise. ``temporal_weight`` (movies ``(B, C, T, H, W)`` only) adds
    the variation over time with that weight, relative to the spatial terms."""

    def __init__(self, weight: float = 1.0, isotropic: bool = False, temporal_weight: float = 0.0):
        if temporal_weight < 0:
            raise ValueError(f"temporal_weight must be >= 0, got {temporal_weight!r}")
        self.weight = weight
        self.isotropic = isotropic
        self.temporal_weight = temporal_weight

    def check_shape(self, shape: Sequence[int]) -> None:
        if self.temporal_weight:
            require_movie("TotalVariation(temporal_weight=...)", shape)

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        tv = total_variation(x, self.isotropic, temporal_weight=self.temporal_weight)
        return self.weight * tv


class LpNorm(Component):
    """``weight`` times the p-norm of each image (p=6 punishes a few large pixels)."""

    def __init__(self, weight: float = 1.0, p: float = 6):
        if p <= 0:
            raise ValueError(f"p must be positive, got {p!r}")
        self.weight = weight
        self.p = p

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        norms = torch.linalg.vector_norm(per_element(x), ord=self.p, dim=-1)
        result: Tensor = self.weight * norms  # torch types float * Tensor as Any
        return result


class L2ToReference(Component):
    """``weight`` times the squared distance of each image to a reference image.

    ``reference``: a tensor (or nested list) broadcastable to one input, or the path of a file
    written with ``torch.save``.
    """

    def __init__(self, reference: Any, weight: float = 1.0):
        tensor: Tensor
        if isinstance(reference, (str, Path)):
            self.reference = str(reference)
            tensor = torch.load(reference, map_location="cpu", weights_only=True)
        else:
            tensor = torch.as_tensor(reference)
            self.reference = f"<{tuple(tensor.shape)} tensor>"
        self._tensor = tensor.detach().float()
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.weight = weight

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        reference = self._copies.get((x.device, x.dtype))
        if reference is None:  # copied once per device, not every step
            reference = self._copies[(x.device, x.dtype)] = self._tensor.to(x.device, x.dtype)
        return self.weight * per_element((x - reference) ** 2).sum(-1)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_copies": {}}  # device copies are made where it is used


class WeightedSum(Component):
    """Sum of several regularizers, each with a weight.

    ``regularizations``: objects or config entries ``{"path", "kwargs", "weight"}`` (weight
    defaults to 1); ``weights`` optionally gives the weights as a separate list.
    """

    def __init__(
        self,
        regularizations: Sequence[Regularization | dict[str, Any]],
        weights: Sequence[float] | None = None,
    ):
        if not regularizations:
            raise ValueError("regularizations must not be empty")
        if weights is None:
            weights = [
                r.get("weight", 1.0) if isinstance(r, dict) else 1.0 for r in regularizations
            ]
        if len(weights) != len(regularizations):
            raise ValueError(
                f"got {len(weights)} weights for {len(regularizations)} regularizations"
            )
        specs = [
            {k: v for k, v in r.items() if k != "weight"} if isinstance(r, dict) else r
            for r in regularizations
        ]
        self.regularizations: list[Regularization] = [build(r) for r in specs]
        self.weights = [float(w) for w in weights]

    def check_shape(self, shape: Sequence[int]) -> None:
        for regularization in self.regularizations:
            check_shape(regularization, shape)

    def use_group(self, group: int) -> None:
        for regularization in self.regularizations:
            use_group(regularization, group)

    @property
    def capturable(self) -> bool | str:
        return all_capturable(self.regularizations)

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        step = cast(int, i_iteration)  # None (a call by hand) is passed on as it is
        terms = (w * r(x, step) for w, r in zip(self.weights, self.regularizations, strict=True))
        return cast(Tensor, sum(terms))  # never the start value 0: there is at least one term


def diversity(x: Tensor, group: int) -> Tensor:
    """The mean squared cosine similarity between the images of each group of ``group``
    consecutive rows of ``x``, one value per group, ``(len(x) // group,)``: 0 when the
    images are orthogonal, 1 when they are all the same pattern (or its negative)."""
    if group < 2:
        return x.new_zeros(len(x) // max(group, 1))
    if len(x) % group:
        raise ValueError(f"{len(x)} input rows do not split into groups of {group}")
    rows = torch.nn.functional.normalize(x.reshape(len(x) // group, group, -1), dim=-1, eps=1e-12)
    cosines = rows @ rows.transpose(1, 2)  # (B, group, group)
    off_diagonal = ~torch.eye(group, dtype=torch.bool, device=x.device)
    return (cosines[:, off_diagonal] ** 2).mean(-1)


class Diversity(Component):
    """``weight`` times the similarity of the several MEIs of one element (``n_meis``; see
    :func:`diversity`): pushes them apart, so a neuron with several preferred stimuli shows
    them all (lucent's diversity objective, on the transformed inputs). The engine tells the
    component the group size; called by hand it treats the whole batch as one group, or
    ``group`` rows per element when given."""

    def __init__(self, weight: float = 1.0, group: int | None = None):
        if group is not None and group < 1:
            raise ValueError(f"group must be a positive int, got {group!r}")
        self.weight = weight
        self.group = group

    def use_group(self, group: int) -> None:
        self.group = group

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        group = self.group if self.group is not None else len(x)
        return self.weight * diversity(x, group)


def range_penalty(
    x: Tensor,
    min_max_values: Sequence[tuple[float | None, float | None]],
    max_norm: float | None = None,
) -> Tensor:
    """How far each element of ``x`` ``(B, C, ...)`` lies outside its ranges, ``(B,)``.

    Channel ``c`` adds ``sum(relu(low - x[:, c])) + sum(relu(x[:, c] - high))`` for its pair
    ``min_max_values[c] = (low, high)`` (``None``: that side unbounded; channels past the list
    are free); ``max_norm`` adds ``relu(||x_b|| - max_norm)``, the L2 norm of the element.
    open-retina's ``RangeRegularizationLoss`` computes the same sums over the whole batch
    (it optimizes one stimulus at a time): for a batch of one they are the same number.
    """
    if len(min_max_values) > x.shape[1]:
        raise ValueError(
            f"min_max_values lists {len(min_max_values)} channels, the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)})"
        )
    loss = x.new_zeros(len(x))
    for c, (low, high) in enumerate(min_max_values):
        channel = per_element(x[:, c])
        if low is not None:
            loss = loss + torch.relu(low - channel).sum(-1)
        if high is not None:
            loss = loss + torch.relu(channel - high).sum(-1)
    if max_norm is not None:
        loss = loss + torch.relu(torch.linalg.vector_norm(per_element(x), dim=-1) - max_norm)
    return loss


class RangePenalty(Component):
    """``factor`` times :func:`range_penalty`: a soft range per channel and a soft norm
    budget, open-retina's ``RangeRegularizationLoss(min_max_values, max_norm, factor)`` with
    its arguments, per element. Unlike a clip (``ChannelNormClip``) it lets the steps leave
    the range and pulls them back through the gradient.

    ``min_max_values``: one ``(low, high)`` pair per channel, from channel 0 (either may be
    ``None``); e.g. Hoefling et al. (2024)'s green/UV ranges ``[[-0.654, 6.269], [-0.913,
    6.269]]``. ``max_norm``: the L2 norm of each element above which it is penalized.
    """

    def __init__(
        self,
        min_max_values: Sequence[Sequence[float | None]],
        max_norm: float | None = None,
        factor: float = 1.0,
    ):
        pairs: list[tuple[float | None, float | None]] = []
        for c, pair in enumerate(min_max_values):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"min_max_values[{c}] must be a pair (low, high), got {pair!r}")
            low, high = (None if v is None else float(v) for v in pair)
            if low is not None and high is not None and high < low:
                raise ValueError(f"min_max_values[{c}]: high must be >= low, got {pair!r}")
            pairs.append((low, high))
        if max_norm is not None and max_norm < 0:
            raise ValueError(f"max_norm must be >= 0, got {max_norm!r}")
        self.min_max_values = min_max_values
        self.max_norm = max_norm
        self.factor = factor
        self._pairs = pairs

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) < 2 or len(self._pairs) > shape[1]:
            raise ValueError(
                f"RangePenalty has ranges for {len(self._pairs)} channels, the input has shape "
                f"{tuple(shape)}"
            )

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        return self.factor * range_penalty(x, self._pairs, self.max_norm)
