"""Each row of a batch shifted (Jitter) or cropped (RandomCrop) at its own offset, for the
whole batch at once.

The original shifts one image by ``(dy, dx)`` as: reflect-pad ``dy`` rows on one side and
``dx`` columns on one side, then take the image-sized window. A batch whose rows have their
own offsets did that row by row: per step, B pads forward and B backward. Here the batch is
padded once by the largest offsets on both sides and each row's window is gathered at its
place: the same values (a window of a reflection is the same reflection, whatever else was
padded), one pad and one gather per step. A crop is such a window without the padding.
Imports only torch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_one(x: Tensor, dy: int, dx: int) -> Tensor:
    """``x`` (``(..., H, W)``, one image or a batch) shifted by ``(dy, dx)`` pixels, the
    uncovered border filled by reflection: the original library's Jitter."""
    h, w = x.shape[-2:]
    pad_y = (dy, 0) if dy >= 0 else (0, -dy)
    pad_x = (dx, 0) if dx >= 0 else (0, -dx)
    padded = F.pad(x.unsqueeze(0) if x.dim() == 3 else x, (*pad_x, *pad_y), mode="reflect")
    padded = padded.squeeze(0) if x.dim() == 3 else padded
    ys = slice(0, h) if dy > 0 else slice(-dy, None)
    xs = slice(0, w) if dx > 0 else slice(-dx, None)
    return padded[..., ys, xs]


def shift_rows(x: Tensor, dys: Sequence[int], dxs: Sequence[int]) -> Tensor:
    """Row ``b`` of ``x`` (``(B, ..., H, W)``) shifted by ``(dys[b], dxs[b])`` as
    :func:`shift_one` shifts it, bitwise, forward and backward."""
    h, w = x.shape[-2:]
    my, mx = max(abs(d) for d in dys), max(abs(d) for d in dxs)
    if my >= h or mx >= w or x.dim() < 3:  # reflection needs pad < size: row by row, as the
        each = x.unbind()  # original failed (views: their gradient is one stack)
        return torch.stack([shift_one(each[b], dys[b], dxs[b]) for b in range(len(each))])
    flat = x.reshape(x.shape[0], -1, h, w)  # reflect padding of the last two dims of a 4-d
    padded = F.pad(flat, (mx, mx, my, my), mode="reflect")
    # row b's window starts at (my - dys[b], mx - dxs[b]) of the padded rows
    tops, lefts = [my - dy for dy in dys], [mx - dx for dx in dxs]
    return _windows(padded, tops, lefts, h, w).reshape(x.shape)


def crop_rows(
    x: Tensor, tops: Sequence[int], lefts: Sequence[int], height: int, width: int
) -> Tensor:
    """Row ``b`` of ``x`` (``(B, ..., H, W)``) cropped to ``x[b, ..., tops[b]:tops[b] + height,
    lefts[b]:lefts[b] + width]``, bitwise, forward and backward (the crops must fit)."""
    h, w = x.shape[-2:]
    fits = all(0 <= t <= h - height for t in tops) and all(0 <= s <= w - width for s in lefts)
    if not fits or x.dim() < 3:
        each = x.unbind()  # as sliced row by row
        return torch.stack(
            [
                each[b][..., t : t + height, s : s + width]
                for b, (t, s) in enumerate(zip(tops, lefts, strict=True))
            ]
        )
    flat = x.reshape(x.shape[0], -1, h, w)
    cropped = _windows(flat, tops, lefts, height, width)
    return cropped.reshape(*x.shape[:-2], height, width)


def shift_rows_at(x: Tensor, dys: Tensor, dxs: Tensor, max_y: int, max_x: int) -> Tensor:
    """:func:`shift_rows` with the offsets as device tensors ``(B,)`` of at most ``max_y``,
    ``max_x`` in size (each smaller than the image's side): nothing is read on the host."""
    h, w = x.shape[-2:]
    if max_y >= h or max_x >= w or x.dim() < 3:
        raise ValueError(
            f"offsets of up to ({max_y}, {max_x}) pixels do not fit inputs of shape "
            f"{tuple(x.shape)}: reflection needs offsets smaller than the image"
        )
    flat = x.reshape(x.shape[0], -1, h, w)
    padded = F.pad(flat, (max_x, max_x, max_y, max_y), mode="reflect")
    starts = torch.stack((max_y - dys, max_x - dxs))
    return _gather(padded, starts, h, w).reshape(x.shape)


def crop_rows_at(x: Tensor, tops: Tensor, lefts: Tensor, height: int, width: int) -> Tensor:
    """:func:`crop_rows` with the corners as device tensors ``(B,)`` (the crops must fit)."""
    h, w = x.shape[-2:]
    flat = x.reshape(x.shape[0], -1, h, w)
    cropped = _gather(flat, torch.stack((tops, lefts)), height, width)
    return cropped.reshape(*x.shape[:-2], height, width)


def _windows(
    x: Tensor, tops: Sequence[int], lefts: Sequence[int], height: int, width: int
) -> Tensor:
    """``x[b, :, tops[b]:tops[b] + height, lefts[b]:lefts[b] + width]`` of a 4-d ``x`` for
    every ``b``, in one gather."""
    starts = torch.tensor([list(tops), list(lefts)])
    if x.device.type == "cuda":  # no wait for the device: copied from pinned memory
        starts = starts.pin_memory().to(x.device, non_blocking=True)
    else:
        starts = starts.to(x.device)
    return _gather(x, starts, height, width)


def _gather(x: Tensor, starts: Tensor, height: int, width: int) -> Tensor:
    """The windows of :func:`_windows` at ``starts`` ``(2, B)`` (tops, lefts) on the device."""
    along_y = starts[0][:, None] + _arange(height, x.device)  # (B, height)
    along_x = starts[1][:, None] + _arange(width, x.device)  # (B, width)
    rows = _arange(x.shape[0], x.device)[:, None, None, None]
    channels = _arange(x.shape[1], x.device)[None, :, None, None]
    return x[rows, channels, along_y[:, None, :, None], along_x[:, None, None, :]]


@functools.lru_cache(maxsize=64)
def _arange(n: int, device: torch.device) -> Tensor:
    return torch.arange(n, device=device)
