"""Per-element random integers made on the device from a counter (``"rng": "device"``).

Element ``b`` of a run has a key made from its seed; the numbers of a draw are a hash of the
key, the number of draws made so far and the position in the draw. Everything is integer
arithmetic on tensors that stay on the device: no generator state on the host, nothing read
back, so a step that draws can be captured as a CUDA graph (the draw counter is a device
tensor that the step itself advances), and an element gets the same numbers on any device,
in a batch or alone. Imports only torch.

The hash is a 32-bit integer mixer (xor-shift and multiply rounds) computed in int64 with
every product below 2**63, so no tensor operation overflows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
# odd multipliers below 2**31: a product of a 32-bit value with one stays below 2**63
_M1, _M2, _M3 = 0x7FEB352D, 0x5BD1E995, 0x2C1B3C6D
_GOLDEN = 0x1E3779B9  # spreads consecutive counters


def hash32(x: Tensor) -> Tensor:
    """A 32-bit mix of the int64 values ``x`` (each in ``[0, 2**32)``), elementwise."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK
    x = x ^ (x >> 13)
    x = (x * _M3) & _MASK
    return x ^ (x >> 16)


def element_key(seed: int) -> int:
    """Element key of ``seed`` (any Python int), in ``[0, 2**32)``."""
    low = torch.tensor([seed & _MASK, (seed >> 32) & _MASK], dtype=torch.int64)
    mixed = hash32(low)
    return int(hash32(mixed[:1] ^ ((mixed[1:] * _GOLDEN) & _MASK))[0])


class CounterStreams:
    """One stream of random integers per batch element, on ``device``.

    ``raw(n)`` gives ``(B, n)`` integers in ``[0, 2**32)`` and advances the stream; ``ints(low,
    high, n)`` the same folded into ``[low, high]``. Element ``b``'s values depend on its
    seed and on the number of draws before only.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        keys = [element_key(s) for s in self.seeds]
        self.keys = torch.tensor(keys, dtype=torch.int64, device=self.device)
        self.counter = torch.zeros((), dtype=torch.int64, device=self.device)

    def __len__(self) -> int:
        return len(self.seeds)

    def raw(self, n: int = 1) -> Tensor:
        """``(B, n)`` int64 in ``[0, 2**32)``, made on the device (one draw)."""
        position = _positions(n, self.device)  # (n,)
        step = hash32((self.counter * _GOLDEN + position) & _MASK)  # (n,)
        values = hash32(self.keys[:, None] ^ step[None, :])  # (B, n)
        self.counter.add_(1)
        return values

    def ints(self, low: int, high: int, n: int = 1) -> Tensor:
        """``(B, n)`` int64 in ``[low, high]``, made on the device (one draw)."""
        if high < low:
            raise ValueError(f"need low <= high, got {low}, {high}")
        return fold(self.raw(n), low, high)

    def __repr__(self) -> str:
        return f"CounterStreams(seeds={self.seeds}, device={str(self.device)!r})"


def fold(values: Tensor, low: int, high: int) -> Tensor:
    """32-bit ``values`` folded into ``[low, high]`` (a bias below ``(high - low) / 2**32``)."""
    return values % (high - low + 1) + low


@functools.lru_cache(maxsize=16)
def _positions(n: int, device: torch.device) -> Tensor:
    return torch.arange(n, dtype=torch.int64, device=device)
