"""A model of realistic size for benchmarks: 4 conv layers of 64 channels and a point readout
per neuron (each neuron reads the core's features at one learned position)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PointReadout(nn.Module):
    def __init__(self, channels: int, n_neurons: int):
        super().__init__()
        self.grid = nn.Parameter(torch.rand(1, n_neurons, 1, 2) * 1.6 - 0.8)
        self.features = nn.Parameter(torch.randn(channels, n_neurons) / channels**0.5)
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = self.grid.expand(len(features), -1, -1, -1)
        sampled = F.grid_sample(features, grid, align_corners=True)[..., 0]  # (B, C, N)
        return (sampled * self.features).sum(1) + self.bias


class ConvCoreReadout(nn.Module):
    """``(B, 1, 36, 64) -> (B, n_neurons)`` firing rates."""

    def __init__(self, n_neurons: int = 1000, channels: int = 64, layers: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        convs, in_channels = [], 1
        for i in range(layers):
            kernel = 9 if i == 0 else 3
            convs += [nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2), nn.ELU()]
            in_channels = channels
        self.core = nn.Sequential(*convs)
        self.readout = PointReadout(channels, n_neurons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.readout(self.core(x))) + 1


class LinearReadout(nn.Module):
    """A near-free model: ``(B, 1, 36, 64) -> (B, n_neurons)``, one linear readout per neuron.

    The framework's cost dominates: what an engine adds per step shows up undiluted.
    """

    def __init__(self, n_neurons: int = 1000, shape: tuple[int, ...] = (1, 36, 64), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        size = 1
        for s in shape:
            size *= s
        self.weight = nn.Parameter(torch.randn(n_neurons, size, generator=g) / size**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T
