"""A V1-like model with known ground truth, built in code (nothing is downloaded).

Every neuron is linear-nonlinear: it takes the dot product of the image with its own filter
and passes it through a nonlinearity. The filters are Gabors (orientation-selective "simple
cells") and differences of Gaussians (center-surround cells, ON and OFF). Under a fixed input
norm the most exciting input of such a neuron is its filter scaled to that norm, so an MEI
method can be checked by the correlation of each MEI with its neuron's filter
(:func:`correlation`). :mod:`mei.demo` uses this model; ``mei generate`` can use it too::

    mei generate mei.zoo.v1_model --config method.json --units 0-3

Shapes: filters are ``(N, C, H, W)``; the model maps images ``(B, C, H, W)`` to ``(B, N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CenterSurroundParameters",
    "FilterBankModel",
    "GaborParameters",
    "center_surround",
    "correlation",
    "gabor",
    "v1_filters",
    "v1_model",
]

NONLINEARITIES = ("softplus", "elu", "exp", "identity")


def _grid(size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pixel coordinates ``(y, x)`` of an ``(H, W)`` image, in float64."""
    height, width = size
    ys = torch.arange(height, dtype=torch.float64)
    xs = torch.arange(width, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return grid_y, grid_x


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"size must be (height, width) with positive sizes, got {tuple(size)}")
    return int(size[0]), int(size[1])


def gabor(
    size: Sequence[int],
    *,
    center: Sequence[float],
    sigma: float,
    orientation: float,
    frequency: float,
    phase: float = 0.0,
    aspect: float = 1.0,
) -> Tensor:
    """A Gabor filter ``(H, W)`` in float32, scaled to unit L2 norm.

    ``center`` is ``(y, x)`` in pixels, ``sigma`` the envelope's width in pixels along the
    carrier, ``aspect`` the ratio of the envelope's width across the carrier to ``sigma``'s,
    ``orientation`` the carrier's direction in radians, ``frequency`` in cycles per pixel,
    ``phase`` in radians (0: even, symmetric; pi/2: odd).
    """
    size = _check_size(size)
    if sigma <= 0 or aspect <= 0:
        raise ValueError(f"sigma and aspect must be positive, got sigma={sigma}, aspect={aspect}")
    if not 0 < frequency <= 0.5:
        raise ValueError(f"frequency must be in (0, 0.5] cycles per pixel, got {frequency}")
    y, x = _grid(size)
    dy, dx = y - center[0], x - center[1]
    along = dx * math.cos(orientation) + dy * math.sin(orientation)
    across = -dx * math.sin(orientation) + dy * math.cos(orientation)
    envelope = torch.exp(-(along**2 + (across / aspect) ** 2) / (2 * sigma**2))
    carrier = torch.cos(2 * math.pi * frequency * along + phase)
    return _unit_norm(envelope * carrier)


def center_surround(
    size: Sequence[int],
    *,
    center: Sequence[float],
    sigma_center: float,
    sigma_surround: float,
    polarity: int = 1,
) -> Tensor:
    """A difference of Gaussians ``(H, W)`` in float32, zero mean, scaled to unit L2 norm.

    ``polarity=1`` is an ON cell (bright center, dark surround), ``-1`` an OFF cell. The two
    Gaussians have equal volume, so a uniform image does not drive the cell.
    """
    size = _check_size(size)
    if not 0 < sigma_center < sigma_surround:
        raise ValueError(
            f"need 0 < sigma_center < sigma_surround, got {sigma_center}, {sigma_surround}"
        )
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be 1 (ON) or -1 (OFF), got {polarity!r}")
    y, x = _grid(size)
    radius2 = (y - center[0]) ** 2 + (x - center[1]) ** 2
    inner = torch.exp(-radius2 / (2 * sigma_center**2))
    outer = torch.exp(-radius2 / (2 * sigma_surround**2))
    dog = inner / inner.sum() - outer / outer.sum()
    return _unit_norm(polarity * dog)


def _unit_norm(x: Tensor) -> Tensor:
    scaled: Tensor = x / torch.linalg.vector_norm(x)  # torch types `/` as Any
    return scaled.to(torch.float32)


@dataclass(frozen=True)
class GaborParameters:
    """The parameters of one Gabor neuron (see :func:`gabor`)."""

    center: tuple[float, float]
    sigma: float
    orientation: float
    frequency: float
    phase: float
    aspect: float

    kind = "gabor"

    def filter(self, size: Sequence[int]) -> Tensor:
        return gabor(size, **asdict(self))


@dataclass(frozen=True)
class CenterSurroundParameters:
    """The parameters of one center-surround neuron (see :func:`center_surround`)."""

    center: tuple[float, float]
    sigma_center: float
    sigma_surround: float
    polarity: int

    kind = "center-surround"

    def filter(self, size: Sequence[int]) -> Tensor:
        return center_surround(size, **asdict(self))


def v1_filters(
    n_gabors: int = 24,
    n_center_surround: int = 8,
    size: int | Sequence[int] = 32,
    seed: int = 0,
) -> tuple[Tensor, list[GaborParameters | CenterSurroundParameters]]:
    """Random but reproducible V1-like filters ``(N, 1, H, W)`` and their parameters.

    The first ``n_gabors`` neurons are Gabors (orientations spread over 180 degrees, 2 to 5
    cycles per envelope, random phase), the rest center-surround cells, alternating ON and OFF.
    Centers stay away from the border so no filter is cut off. Every filter has unit norm.
    """
    size = _check_size((size, size) if isinstance(size, int) else size)
    if n_gabors < 0 or n_center_surround < 0 or n_gabors + n_center_surround == 0:
        raise ValueError(
            f"need at least one neuron, got n_gabors={n_gabors}, "
            f"n_center_surround={n_center_surround}"
        )
    generator = torch.Generator().manual_seed(int(seed))

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()

    height, width = size
    extent = min(height, width)
    parameters: list[GaborParameters | CenterSurroundParameters] = []
    for i in range(n_gabors):
        sigma = uniform(0.09, 0.13) * extent
        margin = 2 * sigma
        parameters.append(
            GaborParameters(
                center=(
                    uniform(margin, height - 1 - margin),
                    uniform(margin, width - 1 - margin),
                ),
                sigma=sigma,
                orientation=math.pi * (i + uniform(0.0, 1.0)) / max(n_gabors, 1),
                frequency=min(0.5, uniform(0.35, 0.6) / sigma),
                phase=uniform(0.0, 2 * math.pi),
                aspect=uniform(0.8, 1.4),
            )
        )
    for i in range(n_center_surround):
        sigma_center = uniform(0.04, 0.07) * extent
        margin = 3 * sigma_center
        parameters.append(
            CenterSurroundParameters(
                center=(
                    uniform(margin, height - 1 - margin),
                    uniform(margin, width - 1 - margin),
                ),
                sigma_center=sigma_center,
                sigma_surround=sigma_center * uniform(2.0, 3.0),
                polarity=1 if i % 2 == 0 else -1,
            )
        )
    filters = torch.stack([p.filter(size) for p in parameters]).unsqueeze(1)
    return filters, parameters


class FilterBankModel(nn.Module):
    """Linear-nonlinear neurons: ``response[:, n] = f(gain * <filters[n], x> + bias)``.

    ``filters`` is ``(N, C, H, W)``; inputs ``(B, C, H, W)`` give responses ``(B, N)``.
    ``nonlinearity`` is one of ``"softplus"``, ``"elu"`` (shifted by 1 to stay positive),
    ``"exp"`` or ``"identity"``; all are increasing, so each neuron's MEI under a fixed norm is
    its filter scaled to that norm. ``input_shape`` is ``(1, C, H, W)``.
    """

    def __init__(
        self,
        filters: Tensor,
        *,
        nonlinearity: str = "softplus",
        gain: float = 1.0,
        bias: float = 0.0,
    ):
        super().__init__()
        if not isinstance(filters, Tensor) or filters.dim() != 4:
            got = tuple(filters.shape) if isinstance(filters, Tensor) else type(filters).__name__
            raise ValueError(f"filters must be a tensor (N, C, H, W), got {got}")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        self.filters = nn.Parameter(filters.detach().clone().to(torch.float32))
        self.nonlinearity = nonlinearity
        self.gain = float(gain)
        self.bias = float(bias)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The shape of one input, ``(1, C, H, W)``."""
        return (1, *self.filters.shape[1:])

    @property
    def n_neurons(self) -> int:
        return self.filters.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.filters.shape[1:]):
            raise ValueError(
                f"expected inputs (B, {', '.join(map(str, self.filters.shape[1:]))}), "
                f"got {tuple(x.shape)}"
            )
        drive = self.gain * x.flatten(1) @ self.filters.flatten(1).T + self.bias
        if self.nonlinearity == "softplus":
            return F.softplus(drive)
        if self.nonlinearity == "elu":
            return F.elu(drive) + 1
        if self.nonlinearity == "exp":
            return torch.exp(drive)
        return drive

    def extra_repr(self) -> str:
        n, c, h, w = self.filters.shape
        return (
            f"n_neurons={n}, input_shape=(1, {c}, {h}, {w}), "
            f"nonlinearity={self.nonlinearity!r}, gain={self.gain}, bias={self.bias}"
        )


def v1_model(
    n_gabors: int = 24,
    n_center_surround: int = 8,
    size: int = 32,
    seed: int = 0,
    *,
    noise: float = 0.0,
    noise_seed: int = 0,
    nonlinearity: str = "softplus",
    gain: float = 0.5,
    bias: float = -1.0,
) -> FilterBankModel:
    """The bundled V1-like model: :func:`v1_filters` neurons behind ``nonlinearity``.

    ``noise > 0`` adds Gaussian noise (relative to each filter's unit norm, drawn from
    ``noise_seed``) to the filters, as if the model had been fitted to data: several such
    models with different ``noise_seed`` make an ensemble whose average is close to the
    ground truth. The ground truth is ``v1_filters(n_gabors, n_center_surround, size, seed)``.
    """
    filters, _ = v1_filters(n_gabors, n_center_surround, size, seed)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if noise > 0:
        generator = torch.Generator().manual_seed(int(noise_seed))
        pixels = filters[0].numel()
        perturbation = torch.randn(filters.shape, generator=generator) / math.sqrt(pixels)
        filters = filters + noise * perturbation
    return FilterBankModel(filters, nonlinearity=nonlinearity, gain=gain, bias=bias)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of images: ``(B, ...)`` and ``(B, ...)`` -> ``(B,)``."""
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"a and b must be batches (B, ...) of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    a = a.detach().flatten(1).to(torch.float64)
    b = b.detach().flatten(1).to(torch.float64)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    result: Tensor = (a * b).sum(dim=1) / denominator.clamp(min=1e-30)
    return result
