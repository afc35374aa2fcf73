"""Random backgrounds for transparent MEIs (the original library's ``mei.background_helper``).

Draws come from numpy's global generator, as in the original.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def rfft2d_freqs(h: int, w: int) -> Array:
    """Frequency magnitudes ``sqrt(fx**2 + fy**2)`` of a 2-d real FFT of an ``h`` x ``w``
    image (cycles per pixel), shape ``(h, w // 2 + 1)``; for odd ``w`` one more column."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + (2 if w % 2 == 1 else 1)]
    result: Array = np.sqrt(fx * fx + fy * fy)
    return result


def _expit(x: Array) -> Array:
    try:
        from scipy.special import expit
    except ImportError:
        result: Array = 1.0 / (1.0 + np.exp(-x))
        return result
    from_scipy: Array = expit(x)
    return from_scipy


def bg_gen(sd: float = 1, decay_power: float = 1, norm_method: int = 0) -> Array:
    """A random 72 x 128 background with a ``1 / f ** decay_power`` spectrum.

    Random complex spectrum (real and imaginary parts normal with standard deviation
    ``sd``), scaled by ``sqrt(h * w) / max(f, 1 / 128) ** decay_power``, brought back with
    numpy's ``irfft`` over the last axis. ``norm_method``: 0 as is; 1 ``2 * img - 1`` divided
    by ``max(1, max |.|)``, mapped back to [0, 1]; 2 the logistic sigmoid.
    """
    if norm_method not in (0, 1, 2):
        raise ValueError(f"norm_method must be 0, 1 or 2, got {norm_method!r}")
    h, w = 72, 128
    freqs = rfft2d_freqs(h, w)
    fh, fw = freqs.shape
    spectrum_var = sd * np.random.normal(0, 1, (2, fh, fw))
    spectrum = spectrum_var[0] + spectrum_var[1] * 1j
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
    scale *= np.sqrt(w * h)
    img: Array = np.fft.irfft(spectrum * scale)
    if norm_method == 1:
        x = 2 * img - 1
        normed: Array = x / max(1, max(abs(x).flatten()))
        return normed / 2 + 0.5
    if norm_method == 2:
        return _expit(img)
    return img


def bg_wn(mean: float, std: float, shape: Sequence[int] = (72, 128)) -> Array:
    """Gaussian white noise of ``shape`` (float64), scaled so that its largest absolute
    value is 2.12."""
    bg: Array = np.random.normal(mean, std, shape)
    flat = bg.flatten()
    rang = max(flat.max(), abs(flat.min()))
    result: Array = bg / rang * 2.12
    return result


def bg_nat_img(
    dataloaders: Mapping[str, Mapping[Any, Iterable[Any]]],
    dataset_name: Any,
    tiers: Sequence[str] = ("train", "test", "validation"),
) -> Array:
    """All images of ``dataset_name`` in ``dataloaders[tier]`` for each of ``tiers``, each
    batch's first item squeezed, stacked as one numpy array.

    The original took no arguments and read ``dataloaders`` and ``dataset_name`` from
    globals it never defined (and indexed ``dataloaders["tier"]``); pass them here.
    """
    images = []
    for tier in tiers:
        for batch in dataloaders[tier][dataset_name]:
            images.append(batch[0].squeeze().cpu().data.numpy())
    stacked: Array = np.vstack(images)
    return stacked
