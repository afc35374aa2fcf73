"""Preconditioning: reshape the gradient before the optimizer step, ``(grad, i) -> Tensor``.

Smoothing the gradient (GaussianBlur, FourierSmoothing) steers the optimization toward smooth
images without penalizing them; TemporalBlur does the same along the time axis of movies
``(B, C, T, H, W)`` (spatial ones act on every frame alike). All operations act on each batch
element separately.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._components import Component, expand_like, per_element, require_movie


@functools.lru_cache(maxsize=64)
def _gaussian_window(
    sigma: float, truncate: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Normalized 1-d Gaussian window of half-size ``max(round(sigma * truncate), 1)``,
    cached per device so that a step does not copy it again."""
    halfsize = max(int(round(sigma * truncate)), 1)
    n = torch.arange(-halfsize, halfsize + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (n / sigma) ** 2)
    return (window / window.sum()).to(device=device, dtype=dtype)


def _check_window(truncate: float, pad_mode: str) -> None:
    """The arguments a blur's window and padding take."""
    if truncate <= 0:
        raise ValueError(f"truncate must be positive, got {truncate!r}")
    if pad_mode not in ("reflect", "replicate", "constant", "circular"):
        raise ValueError(
            f"pad_mode must be 'reflect', 'replicate', 'constant' or 'circular', got {pad_mode!r}"
        )


def gaussian_blur(
    x: Tensor,
    sigma: float | Sequence[float],
    truncate: float = 4.0,
    pad_mode: str = "reflect",
) -> Tensor:
    """Blur the last two dimensions of ``x`` (e.g. ``(B, C, H, W)``) with a Gaussian.

    ``sigma`` is one standard deviation or ``(sigma_y, sigma_x)``; the window is cut after
    ``truncate`` standard deviations. The kernel sums to one, so a constant image stays
    constant and (with reflect padding) the mean is kept.
    """
    sigma_y, sigma_x = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    if sigma_y <= 0 or sigma_x <= 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    shape = x.shape
    h, w = shape[-2:]
    flat = x.reshape(-1, 1, h, w)
    for dim, s in ((-2, sigma_y), (-1, sigma_x)):
        window = _gaussian_window(float(s), float(truncate), x.device, x.dtype)
        size = shape[dim]
        half = len(window) // 2
        if pad_mode == "reflect" and half >= size:  # reflect padding needs half < size
            window = window[half - (size - 1) : half + size]
            window = window / window.sum()
            half = size - 1
        if half == 0:
            continue
        kernel = window.view(1, 1, -1, 1) if dim == -2 else window.view(1, 1, 1, -1)
        pad = (0, 0, half, half) if dim == -2 else (half, half, 0, 0)
        flat = F.conv2d(F.pad(flat, pad, mode=pad_mode), kernel)
    return flat.reshape(shape)


class GaussianBlur(Component):
    """Blur the gradient with a Gaussian of standard deviation ``sigma`` (or ``(y, x)``).

    ``decay_factor``: sigma changes each step as ``sigma + decay_factor * (i_iteration - 1)``
    (the original library's schedule; use a negative factor to sharpen over time); once that
    reaches zero the gradient is left unblurred. ``pad_mode``: 'reflect' (default),
    'replicate', 'constant' or 'circular'.
    """

    def __init__(
        self,
        sigma: float | Sequence[float],
        decay_factor: float | None = None,
        truncate: float = 4,
        pad_mode: str = "reflect",
    ):
        sigmas = tuple(sigma) if isinstance(sigma, (tuple, list)) else (sigma, sigma)
        if len(sigmas) != 2 or any(s <= 0 for s in sigmas):
            raise ValueError(f"sigma must be positive (one value or (y, x)), got {sigma!r}")
        _check_window(truncate, pad_mode)
        self.sigma = sigma
        self.decay_factor = decay_factor
        self.truncate = truncate
        self.pad_mode = pad_mode
        self._sigmas = sigmas

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        sigmas = self._sigmas
        if self.decay_factor is not None:
            i = 0 if i_iteration is None else i_iteration
            sigma_y, sigma_x = (s + self.decay_factor * (i - 1) for s in sigmas)
            sigmas = (sigma_y, sigma_x)
            if min(sigmas) <= 0:
                return x
        return gaussian_blur(x, sigmas, self.truncate, self.pad_mode)


def temporal_blur(
    x: Tensor,
    sigma: float,
    truncate: float = 4.0,
    pad_mode: str = "replicate",
    kernel_size: int | None = None,
) -> Tensor:
    """Blur movies ``(B, C, T, H, W)`` along time (dimension 2) with a Gaussian of standard
    deviation ``sigma`` frames, cut after ``truncate`` standard deviations. The kernel sums
    to one: a movie constant in time stays as it is.

    ``kernel_size``: instead, a window of exactly that many frames (any size, even ones too),
    open-retina's temporal Gaussian low-pass: taps at ``k - kernel_size // 2`` for ``k`` in
    ``range(kernel_size)``, padded as a ``padding="same"`` convolution (``(kernel_size - 1) //
    2`` frames before, the rest after); with ``pad_mode="constant"`` (zeros) this gives
    open-retina's ``TemporalGaussianLowPassFilterProcessor`` numbers."""
    require_movie("temporal_blur", x.shape)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    frames = x.shape[2]
    if kernel_size is not None:
        window = _sized_window(float(sigma), int(kernel_size), x.device, x.dtype)
        before = (kernel_size - 1) // 2
        after = kernel_size - 1 - before
        if pad_mode == "reflect" and max(before, after) >= frames:
            raise ValueError(
                f"reflect padding of a {kernel_size}-frame kernel needs more than "
                f"{max(before, after)} frames, the movie has {frames}"
            )
    else:
        window = _gaussian_window(float(sigma), float(truncate), x.device, x.dtype)
        half = len(window) // 2
        if pad_mode == "reflect" and half >= frames:  # reflect padding needs half < frames
            window = window[half - (frames - 1) : half + frames]
            window = window / window.sum()
            half = frames - 1
        before = after = half
    if before == after == 0:  # a window of one tap: 1 after normalizing
        return x
    series = x.movedim(2, -1)  # (B, C, H, W, T)
    flat = series.reshape(-1, 1, frames)
    padded = F.pad(flat, (before, after), mode=pad_mode)
    blurred = F.conv1d(padded, window.view(1, 1, -1))
    return blurred.reshape(series.shape).movedim(-1, 2)


@functools.lru_cache(maxsize=64)
def _sized_window(sigma: float, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """open-retina's temporal window: ``size`` taps ``exp(-k**2 / (2 sigma**2))`` at ``k =
    0 - size // 2, ..., size - 1 - size // 2``, normalized, computed in float32 as there."""
    taps = torch.arange(size).float() - size // 2
    window = torch.exp(-(taps**2) / (2 * sigma**2))
    return (window / window.sum()).to(device=device, dtype=dtype)


class TemporalBlur(Component):
    """Blur along time: a Gaussian low-pass of ``sigma`` frames on movies ``(B, C, T, H, W)``
    (see :func:`temporal_blur`). As a precondition it smooths the gradient; the same object
    fits the ``postprocessing`` and ``transform`` slots to low-pass the movie itself.
    ``pad_mode``: 'replicate' (default), 'reflect', 'constant' (zeros) or 'circular'.
    ``kernel_size``: a window of exactly that many frames instead of one cut after
    ``truncate`` standard deviations; ``TemporalBlur(sigma, kernel_size=k,
    pad_mode="constant")`` is open-retina's ``TemporalGaussianLowPassFilterProcessor(sigma,
    k)``. Images are refused before the first step."""

    def __init__(
        self,
        sigma: float,
        truncate: float = 4,
        pad_mode: str = "replicate",
        kernel_size: int | None = None,
    ):
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        _check_window(truncate, pad_mode)
        if kernel_size is not None and (
            isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size < 1
        ):
            raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
        self.sigma = sigma
        self.truncate = truncate
        self.pad_mode = pad_mode
        if kernel_size is not None:  # the repr of rows without it stays as it was
            self.kernel_size = int(kernel_size)
        self._kernel_size = None if kernel_size is None else int(kernel_size)

    def check_shape(self, shape: Sequence[int]) -> None:
        require_movie(type(self).__name__, shape)
        size = self._kernel_size
        if size is not None and self.pad_mode == "reflect" and (size // 2) >= shape[2]:
            raise ValueError(
                f"TemporalBlur: reflect padding of a {size}-frame kernel needs more than "
                f"{size // 2} frames, the movies have {shape[2]}"
            )

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        self.check_shape(x.shape)
        return temporal_blur(x, self.sigma, self.truncate, self.pad_mode, self._kernel_size)


def fourier_smoothing(x: Tensor, freq_exp: float) -> Tensor:
    """Scale the spatial frequencies ``f`` of ``x`` by ``(1 - sqrt(2) * |f|) ** freq_exp``.

    ``|f|`` is in cycles per pixel, so the mask is 1 at the mean (kept) and falls to 0 at the
    highest frequency.
    """
    h, w = x.shape[-2:]
    mask = _smoothing_mask(h, w, freq_exp, x.device, x.dtype)
    smoothed: Tensor = torch.fft.irfft2(torch.fft.rfft2(x) * mask, s=(h, w))
    return smoothed


@functools.lru_cache(maxsize=32)
def _smoothing_mask(
    h: int, w: int, freq_exp: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """:func:`fourier_smoothing`'s mask over the ``rfft2`` frequencies, made on ``device``
    once per size (not again every step)."""
    freq_y = torch.fft.fftfreq(h, device=device)
    freq_x = torch.fft.rfftfreq(w, device=device)
    norm_freq = torch.sqrt(freq_y[:, None] ** 2 + freq_x[None, :] ** 2) * 2**0.5
    mask = (1 - norm_freq).clamp(min=0) ** freq_exp
    return mask.to(dtype)


class FourierSmoothing(Component):
    """Smooth in the frequency domain (see :func:`fourier_smoothing`); larger ``freq_exp``
    smooths more."""

    def __init__(self, freq_exp: float):
        if freq_exp < 0:
            raise ValueError(f"freq_exp must be >= 0, got {freq_exp!r}")
        self.freq_exp = freq_exp

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        return fourier_smoothing(x, self.freq_exp)


class MultiplyBy(Component):
    """Multiply by ``const``; with ``decay_factor``, by ``const + decay_factor * (i - 1)``."""

    def __init__(self, const: float, decay_factor: float | None = None):
        self.const = const
        self.decay_factor = decay_factor

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        if self.decay_factor is None:
            return self.const * x
        i = 0 if i_iteration is None else i_iteration
        return (self.const + self.decay_factor * (i - 1)) * x


class DivideByMeanOfAbsolute(Component):
    """Divide each element by the mean of its absolute values (a per-element step size)."""

    def __init__(self, eps: float = 1e-12):
        self.eps = eps

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        return x / expand_like(per_element(x).abs().mean(-1) + self.eps, x)
