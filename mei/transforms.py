"""Transforms: what the model sees of the input, ``transform(x, i_iteration) -> Tensor``.

Transforms are differentiable and act on batches of images ``(B, C, H, W)`` or movies
``(B, C, T, H, W)`` (spatial transforms act on every frame alike); random ones (Jitter,
RandomCrop) draw each element's randomness from that element's own seeded generator. A
transform may define ``final(x, i_iteration)``, the deterministic version used to score the finished MEI
(Jitter: no shift; RandomCrop: the center crop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ._components import Component, PerElementRandom, all_capturable, build, check_shape
from ._counter_rng import fold
from ._shift import crop_rows, crop_rows_at, shift_one, shift_rows, shift_rows_at
from .typing import Transform

if TYPE_CHECKING:
    from ._counter_rng import CounterStreams


def _pair(value: Any, name: str) -> tuple[int, int]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or any(int(v) != v or v < 0 for v in values):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return int(values[0]), int(values[1])


def final_transform(transform: Transform, x: Tensor, i_iteration: int) -> Tensor:
    """Apply ``transform`` deterministically: its ``final`` if it has one, else itself."""
    final = getattr(transform, "final", None)
    if final is None:
        return transform(x, i_iteration)
    result: Tensor = final(x, i_iteration)
    return result


class Identity(Component):
    """Returns the input as it is."""

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        return x


def jitter(x: Tensor, shift_y: int, shift_x: int) -> Tensor:
    """Shift one image ``(C, H, W)`` or batch by ``(shift_y, shift_x)`` pixels, filling the
    uncovered border by reflection (the original library's Jitter)."""
    return shift_one(x, shift_y, shift_x)


class Jitter(PerElementRandom):
    """Shift each image by a random offset of up to ``max_jitter`` pixels (int or (y, x))."""

    def __init__(self, max_jitter: int | tuple[int, int]):
        self.max_jitter = max_jitter
        self._max = _pair(max_jitter, "max_jitter")

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        my, mx = self._max
        drawn = self._draw_on_device(len(x), 2)
        if drawn is not None:  # "rng": "device"
            dys, dxs = fold(drawn[:, 0], -my, my), fold(drawn[:, 1], -mx, mx)
            return shift_rows_at(x, dys, dxs, my, mx)
        ys = self._draw_ints(len(x), -my, my)
        xs = self._draw_ints(len(x), -mx, mx)
        return shift_rows(x, ys, xs)  # the whole batch in one pad and one gather

    def final(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        return x


class RandomCrop(PerElementRandom):
    """Take a random ``height x width`` crop of each image."""

    def __init__(self, height: int, width: int):
        _pair((height, width), "height/width")
        self.height, self.width = int(height), int(width)

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        h, w = x.shape[-2:]
        if h < self.height or w < self.width:
            raise ValueError(f"cannot crop {self.height}x{self.width} from an {h}x{w} input")
        drawn = self._draw_on_device(len(x), 2)
        if drawn is not None:  # "rng": "device"
            top, left = fold(drawn[:, 0], 0, h - self.height), fold(drawn[:, 1], 0, w - self.width)
            return crop_rows_at(x, top, left, self.height, self.width)
        tops = self._draw_ints(len(x), 0, h - self.height)
        lefts = self._draw_ints(len(x), 0, w - self.width)
        return crop_rows(x, tops, lefts, self.height, self.width)  # one gather

    def final(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        h, w = x.shape[-2:]
        t, s = (h - self.height) // 2, (w - self.width) // 2
        return x[..., t : t + self.height, s : s + self.width]


class Resize(Component):
    """Rescale images by ``scale_factor`` (new size = round(scale_factor * old size)).

    ``resize_method``: ``"bilinear"`` (default), ``"nearest"``, ``"bicubic"``, ``"area"``.
    Movies ``(B, C, T, H, W)`` are resized frame by frame (the time axis is kept).
    """

    def __init__(self, scale_factor: float, resize_method: str = "bilinear"):
        if scale_factor <= 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor!r}")
        if resize_method not in ("bilinear", "nearest", "bicubic", "area"):
            raise ValueError(
                "resize_method must be 'bilinear', 'nearest', 'bicubic' or 'area', "
                f"got {resize_method!r}"
            )
        self.scale_factor = scale_factor
        self.resize_method = resize_method

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        if x.dim() < 4:
            raise ValueError(
                f"Resize expects (B, C, H, W) or (B, C, T, H, W), got {tuple(x.shape)}"
            )
        size = tuple(int(round(s * self.scale_factor)) for s in x.shape[-2:])
        align = False if self.resize_method in ("bilinear", "bicubic") else None
        frames = x.reshape(len(x), -1, *x.shape[-2:])  # every frame of every channel alike
        resized = F.interpolate(frames, size=size, mode=self.resize_method, align_corners=align)
        return resized.reshape(*x.shape[:-2], *size)


class GrayscaleToRGB(Component):
    """Repeat the single channel of ``(B, 1, H, W)`` images (or ``(B, 1, T, H, W)`` movies)
    three times."""

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        if x.dim() not in (4, 5) or x.shape[1] != 1:
            raise ValueError(
                f"GrayscaleToRGB expects (B, 1, H, W) or (B, 1, T, H, W), got {tuple(x.shape)}"
            )
        return x.expand(-1, 3, *([-1] * (x.dim() - 2)))


class ChangeRange(Component):
    """Squash values into ``(x_min, x_max)``: ``sigmoid(x) * (x_max - x_min) + x_min``."""

    def __init__(self, x_min: float, x_max: float):
        if not x_max > x_min:
            raise ValueError(f"x_max must be greater than x_min, got {x_min!r}, {x_max!r}")
        self.x_min = x_min
        self.x_max = x_max

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        return torch.sigmoid(x) * (self.x_max - self.x_min) + self.x_min


class Compose(Component):
    """Apply several transforms in order; each is an object or a ``{"path", "kwargs"}`` entry."""

    def __init__(self, transforms: Sequence[Transform | dict[str, Any]]):
        self.transforms: list[Transform] = [build(t) for t in transforms]

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        step = cast(int, i_iteration)  # None (a call by hand) is passed on as it is
        for transform in self.transforms:
            x = transform(x, step)
        return x

    def check_shape(self, shape: Sequence[int]) -> None:
        for transform in self.transforms:
            check_shape(transform, shape)  # each part sees the input (a bound is enough)

    def reseed(self, seeds: Sequence[int]) -> None:
        for transform in self.transforms:
            if hasattr(transform, "reseed"):
                transform.reseed(seeds)

    def use_streams(self, streams: CounterStreams) -> None:
        for transform in self.transforms:
            if hasattr(transform, "use_streams"):
                transform.use_streams(streams)

    @property
    def capturable(self) -> bool | str:
        return all_capturable(self.transforms)

    def final(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        step = cast(int, i_iteration)  # None (a call by hand) is passed on as it is
        for transform in self.transforms:
            x = final_transform(transform, x, step)
        return x
