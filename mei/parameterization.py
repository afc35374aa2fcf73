"""Parameterization: what the optimizer changes, and the image it stands for.

``parameterization(params) -> image`` (differentiable) maps the optimized tensor to the input
the transform and the model see; ``parameterization.from_image(image) -> params`` maps back
(the engine uses it for the initial guess and after each postprocessing, so a norm or clip
acts on the image). Both keep the batch as the first dimension, one row per image, so each
element is parameterized on its own. Without a parameterization (the default) the optimizer
changes the pixels themselves.

:class:`Fourier` is lucent's ``fft_image``: the optimizer changes the image's spatial
spectrum, scaled by ``1 / f ** decay_power``, so that a gradient step changes low spatial
frequencies most (a decorrelated parameterization of natural images).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ._components import Component


class Pixel(Component):
    """The pixels themselves (the default; naming it changes nothing)."""

    identity = True

    def __call__(self, params: Tensor) -> Tensor:
        return params

    def from_image(self, image: Tensor) -> Tensor:
        return image


@functools.lru_cache(maxsize=32)
def fourier_scale(
    height: int, width: int, decay_power: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The spectrum's scale ``1 / max(|f|, 1 / max(h, w)) ** decay_power`` over the
    ``rfft2`` frequencies ``(height, width // 2 + 1)``, normalized to a root mean square
    of 1 (so a step of the same size changes the image by about as much as in pixels).
    Cached per size and device, so that a step does not copy it again."""
    freq_y = torch.fft.fftfreq(height, dtype=torch.float64)
    freq_x = torch.fft.rfftfreq(width, dtype=torch.float64)
    freq = torch.sqrt(freq_y[:, None] ** 2 + freq_x[None, :] ** 2)
    scale = 1.0 / freq.clamp(min=1.0 / max(height, width)) ** decay_power
    scale = scale / scale.pow(2).mean().sqrt()
    return scale.to(device=device, dtype=dtype)


class Fourier(Component):
    """The image's spatial spectrum, scaled by ``1 / f ** decay_power`` (lucent's
    ``fft_image``; ``decay_power=0``: the plain orthonormal Fourier basis).

    Parameters are ``(B, ..., H, W // 2 + 1, 2)`` (real and imaginary parts of the
    orthonormal ``rfft2`` of each image over its last two dimensions, divided by the scale);
    images ``(B, C, H, W)`` or movies ``(B, C, T, H, W)`` (every frame alike). The image
    size is taken from the initial guess (:meth:`from_image`).
    """

    def __init__(self, decay_power: float = 1.0, fixed_norm: bool = False):
        if decay_power < 0:
            raise ValueError(f"decay_power must be >= 0, got {decay_power!r}")
        self.decay_power = decay_power
        self.fixed_norm = fixed_norm
        self._size: tuple[int, int] | None = None

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) < 3:
            raise ValueError(f"Fourier expects images (B, C, H, W), got {tuple(shape)}")

    def _scale(self, like: Tensor) -> Tensor:
        assert self._size is not None  # set by from_image
        return fourier_scale(*self._size, self.decay_power, like.device, like.dtype)

    def from_image(self, image: Tensor) -> Tensor:
        """The parameters of ``image``: its scaled spectrum as real and imaginary parts."""
        self.check_shape(image.shape)
        self._size = (image.shape[-2], image.shape[-1])
        spectrum = torch.fft.rfft2(image, norm="ortho") / self._scale(image)
        return torch.view_as_real(spectrum).contiguous()

    def __call__(self, params: Tensor) -> Tensor:
        if self._size is None:
            raise RuntimeError("Fourier: call from_image first (it fixes the image size)")
        scale = self._scale(params)
        spectrum = torch.view_as_complex(params.contiguous()) * scale
        image: Tensor = torch.fft.irfft2(spectrum, s=self._size, norm="ortho")
        if self.fixed_norm and image.requires_grad:
            image.register_hook(functools.partial(_tangent, image.detach()))  # type: ignore[no-untyped-call]
        return image


def _tangent(image: Tensor, grad: Tensor) -> Tensor:
    """``grad`` without its component along ``image``, per element: the part of a step that a
    norm constraint does not undo."""
    flat_image, flat_grad = image.reshape(len(image), -1), grad.reshape(len(grad), -1)
    along = (flat_image * flat_grad).sum(-1, keepdim=True) / (
        (flat_image**2).sum(-1, keepdim=True).clamp(min=1e-30)
    )
    return (flat_grad - along * flat_image).reshape(grad.shape)
