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

:class:`PhaseFourier` is MaCo's (Fel et al. 2023, magnitude-constrained optimization): the
image's magnitude spectrum is fixed (a ``1 / f`` power law, or the lab's images' spectrum from
:func:`magnitude_spectrum`) and only its phase is optimized; it also keeps MaCo's attribution
map, where the gradient accumulated over the optimization (returned in the run's output).

A parameterization may keep something for the run's output: the engine puts what its
``outputs() -> {name: tensor with one row per input row}`` returns after the last step into
each element's output (``{name: {"times": [the element's last step], "values": [its rows]}}``),
and calls its ``stop_rows(rows)`` when elements of a batched run stop before the others.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


def _self_conjugate(width: int) -> list[int]:
    """The ``rfft`` columns whose values are their own mirror's conjugates: 0, and ``W / 2``
    for an even width."""
    return [0, width // 2] if width % 2 == 0 else [0]


def _hermitian_weights(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """How often each ``rfft2`` bin occurs in the full spectrum (1 or 2): ``sum(w * |X|**2)``
    is an image's squared norm (Parseval, orthonormal transform)."""
    weights = torch.full((height, width // 2 + 1), 2.0, dtype=dtype, device=device)
    weights[:, _self_conjugate(width)] = 1.0
    return weights


def power_law_magnitude(height: int, width: int, decay_power: float = 1.0) -> Tensor:
    """The magnitude spectrum ``1 / |f| ** decay_power`` over the ``rfft2`` frequencies
    ``(height, width // 2 + 1)`` (lowest frequency ``1 / max(height, width)``), without the
    mean (the zero frequency is 0), scaled so that an image with it has a pixel standard
    deviation of 1 (float64)."""
    freq_y = torch.fft.fftfreq(height, dtype=torch.float64)
    freq_x = torch.fft.rfftfreq(width, dtype=torch.float64)
    freq = torch.sqrt(freq_y[:, None] ** 2 + freq_x[None, :] ** 2)
    magnitude = 1.0 / freq.clamp(min=1.0 / max(height, width)) ** decay_power
    magnitude[0, 0] = 0.0
    weights = _hermitian_weights(height, width, magnitude.device, magnitude.dtype)
    norm = (weights * magnitude**2).sum().sqrt()
    scaled: Tensor = magnitude * (height * width) ** 0.5 / norm
    return scaled


def magnitude_spectrum(source: Any, remove_mean: bool = True) -> Tensor:
    """The mean magnitude spectrum of a lab's images, per channel, ``(C, H, W // 2 + 1)``
    (orthonormal ``rfft2`` over the last two dimensions; movies: over every frame), for
    :class:`PhaseFourier`'s ``magnitude`` (``.tolist()`` it into a method config).

    ``source``: images ``(N, C, H, W)`` or movies ``(N, C, T, H, W)``; or dataloaders
    (``{"train": {data_key: loader}}``, a loader, or any iterable of batches), whose
    batches' inputs are read (a tensor, the first element of a tuple, or the
    ``"inputs"``/``"images"`` field). ``remove_mean``: subtract each image's mean first (the
    zero frequency is then 0: MEIs of zero mean).
    """
    total: Tensor | None = None
    count = 0
    for batch in _image_batches(source):
        if batch.dim() not in (4, 5):
            raise ValueError(
                f"magnitude_spectrum needs images (N, C, H, W) or movies (N, C, T, H, W), got "
                f"{tuple(batch.shape)}"
            )
        images = batch.detach().to(torch.float64)
        if remove_mean:
            images = images - images.mean(dim=(-2, -1), keepdim=True)
        magnitude = torch.fft.rfft2(images, norm="ortho").abs()
        flat = magnitude.transpose(0, 1).reshape(magnitude.shape[1], -1, *magnitude.shape[-2:])
        summed = flat.sum(dim=1)
        if total is not None and summed.shape != total.shape:
            raise ValueError(
                f"the images change shape: {tuple(batch.shape)} after spectra {tuple(total.shape)}"
            )
        total = summed if total is None else total + summed
        count += flat.shape[1]
    if total is None:
        raise ValueError("magnitude_spectrum got no images")
    return (total / count).to(torch.float32)


def _image_batches(source: Any) -> Iterable[Tensor]:
    if isinstance(source, Tensor):
        yield source
        return
    if isinstance(source, Mapping):
        tier = source.get("train", next(iter(source.values()), None))
        loaders = tier.values() if isinstance(tier, Mapping) else [tier]
        for loader in loaders:
            yield from _image_batches(loader)
        return
    for batch in source:
        if hasattr(batch, "_asdict"):
            batch = batch._asdict()
        if isinstance(batch, Mapping):
            batch = next((batch[k] for k in ("inputs", "images") if k in batch), None)
        elif isinstance(batch, (tuple, list)):
            batch = batch[0] if batch else None
        if not isinstance(batch, Tensor):
            raise ValueError(
                "magnitude_spectrum reads the inputs of each batch (a tensor, the first "
                f"element of a tuple or the 'inputs'/'images' field), got {type(batch).__name__}"
            )
        yield batch


ATTRIBUTIONS = ("gradient", "gradient_x_input")


class PhaseFourier(Component):
    """MaCo's parameterization: the image's magnitude spectrum is fixed, the optimizer changes
    only its phase (Fel et al. 2023, "Unlocking feature visualization for deeper networks with
    magnitude constrained optimization").

    Parameters are phases ``(B, ..., H, W // 2 + 1)`` (radians) of the orthonormal ``rfft2``
    of each image over its last two dimensions; images ``(B, C, H, W)`` or movies
    ``(B, C, T, H, W)`` (the spectrum of every frame has the magnitude). The magnitude is

    - ``magnitude``: given, ``(H, W // 2 + 1)`` or per channel ``(C, H, W // 2 + 1)`` (a
      tensor or nested lists, e.g. :func:`magnitude_spectrum` of the lab's images), or
    - ``None``: the power law ``1 / |f| ** decay_power`` of natural images
      (:func:`power_law_magnitude`: zero mean, pixel standard deviation 1).

    ``norm``: scale the magnitude so that each element's image has this L2 norm. Since the
    magnitude is fixed, so is the image's norm: postprocessing acts on the image and only the
    phase of its result is kept (:meth:`from_image`). The zero frequency and the other
    frequencies that are their own mirror (the Nyquist row and column) are real: their phase
    is 0, so that every image has exactly the fixed magnitude spectrum.

    ``attribution``: MaCo's attribution map, the absolute gradient of the step's loss with
    respect to the image, summed over the steps (``"gradient"``, as the paper and its
    authors' code); ``"gradient_x_input"`` sums ``|gradient * image|``; ``None`` keeps none.
    The run's output holds it under ``"attribution"`` (:meth:`outputs`).
    """

    def __init__(
        self,
        decay_power: float = 1.0,
        magnitude: Any = None,
        norm: float | None = None,
        attribution: str | None = "gradient",
    ):
        if decay_power < 0:
            raise ValueError(f"decay_power must be >= 0, got {decay_power!r}")
        if norm is not None and not norm > 0:
            raise ValueError(f"norm must be positive, got {norm!r}")
        if attribution is not None and attribution not in ATTRIBUTIONS:
            raise ValueError(
                f"attribution must be one of {ATTRIBUTIONS} or None, got {attribution!r}"
            )
        self.decay_power = decay_power
        self.magnitude = magnitude
        self.norm = norm
        self.attribution = attribution
        self._given = None if magnitude is None else self._checked_magnitude(magnitude)
        self._size: tuple[int, int] | None = None
        self._shape: tuple[int, ...] | None = None
        self._magnitude: Tensor | None = None
        self._sum: Tensor | None = None
        self._active: Tensor | None = None

    def __repr__(self) -> str:
        shown = self.magnitude
        if shown is not None:
            shown = f"<magnitude {tuple(self._given.shape)}>" if self._given is not None else shown
        return (
            f"PhaseFourier(decay_power={self.decay_power!r}, magnitude={shown}, "
            f"norm={self.norm!r}, attribution={self.attribution!r})"
        )

    @staticmethod
    def _checked_magnitude(magnitude: Any) -> Tensor:
        try:
            given = torch.as_tensor(magnitude, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"magnitude must be a tensor or nested lists of numbers: {e}"
            ) from None
        if given.dim() not in (2, 3):
            raise ValueError(
                "magnitude must be (H, W // 2 + 1) or (C, H, W // 2 + 1), got shape "
                f"{tuple(given.shape)}"
            )
        if not bool(torch.isfinite(given).all()) or bool((given < 0).any()):
            raise ValueError("magnitude must be finite and >= 0")
        if not bool((given > 0).any()):
            raise ValueError("magnitude is zero everywhere: every image would be blank")
        return given

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) not in (4, 5):
            raise ValueError(
                f"PhaseFourier expects images (B, C, H, W) or movies (B, C, T, H, W), got "
                f"{tuple(shape)}"
            )
        if self._given is None:
            return
        height, width, channels = shape[-2], shape[-1], shape[1]
        expected = (height, width // 2 + 1)
        given = tuple(self._given.shape)
        if given[-2:] != expected or (len(given) == 3 and given[0] not in (1, channels)):
            raise ValueError(
                f"magnitude {given} does not fit inputs {tuple(shape)}: expected {expected} "
                f"or ({channels}, *{expected}) (rfft2 of {height} x {width})"
            )
        mirror = self._given.roll(-1, dims=-2).flip(-2)  # row k -> row -k
        columns = _self_conjugate(width)
        if not torch.allclose(
            self._given[..., columns], mirror[..., columns], rtol=1e-5, atol=1e-8
        ):
            raise ValueError(
                "magnitude is not the spectrum of real images: its columns "
                f"{columns} must be symmetric (row k equal to row -k)"
            )

    def _fixed_magnitude(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """The magnitude, shaped to broadcast against the parameters of inputs ``shape``,
        on ``like``'s device (made once per run)."""
        cached = self._magnitude
        if cached is not None and cached.device == like.device and cached.dtype == like.dtype:
            return cached
        height, width = shape[-2], shape[-1]
        if self._given is not None:
            magnitude = self._given
        else:
            magnitude = power_law_magnitude(height, width, float(self.decay_power))
        if magnitude.dim() == 2:
            magnitude = magnitude[None]
        # (1, C or 1, [1,] H, W // 2 + 1)
        magnitude = magnitude.reshape(
            1, magnitude.shape[0], *([1] * (len(shape) - 4)), *magnitude.shape[-2:]
        )
        if self.norm is not None:
            # an element's squared norm: every channel and frame has the spectrum (Parseval)
            weights = _hermitian_weights(height, width, magnitude.device, magnitude.dtype)
            repeats = (shape[1] // magnitude.shape[1]) * (shape[2] if len(shape) == 5 else 1)
            energy = (weights * magnitude**2).sum() * repeats
            magnitude = magnitude * (self.norm / energy.sqrt())
        self._magnitude = magnitude.to(device=like.device, dtype=like.dtype)
        return self._magnitude

    def from_image(self, image: Tensor) -> Tensor:
        """The phase of ``image``'s spectrum (its magnitude is replaced by the fixed one)."""
        self.check_shape(image.shape)
        if self._shape is None or tuple(image.shape[1:]) != self._shape[1:]:
            self._magnitude = None
        self._size = (image.shape[-2], image.shape[-1])
        self._shape = tuple(image.shape)
        return torch.angle(torch.fft.rfft2(image, norm="ortho")).contiguous()

    def _phase(self, params: Tensor) -> Tensor:
        """The phase, odd in the columns that are their own mirror (so they stay real)."""
        assert self._size is not None
        columns = _self_conjugate(self._size[1])
        own = params[..., columns]
        mirrored = own.roll(-1, dims=-2).flip(-2)  # row k -> row -k
        odd = (own - mirrored) / 2
        if len(columns) == 1:
            return torch.cat((odd, params[..., 1:]), dim=-1)
        return torch.cat((odd[..., :1], params[..., 1:-1], odd[..., 1:]), dim=-1)

    def __call__(self, params: Tensor) -> Tensor:
        if self._size is None or self._shape is None:
            raise RuntimeError("PhaseFourier: call from_image first (it fixes the image size)")
        magnitude = self._fixed_magnitude(self._shape, params)
        phase = self._phase(params)
        spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        image: Tensor = torch.fft.irfft2(spectrum, s=self._size, norm="ortho")
        if self.attribution is not None and image.requires_grad:
            image.register_hook(functools.partial(self._accumulate, image.detach()))  # type: ignore[no-untyped-call]
        return image

    def _accumulate(self, image: Tensor, grad: Tensor) -> None:
        if self._sum is None or self._sum.shape != grad.shape or self._sum.device != grad.device:
            self._sum = torch.zeros_like(grad)
            self._active = torch.ones(
                (len(grad),) + (1,) * (grad.dim() - 1), dtype=grad.dtype, device=grad.device
            )
        assert self._active is not None  # made with the sum
        seen = grad if self.attribution == "gradient" else grad * image
        self._sum.add_(seen.abs() * self._active)

    def stop_rows(self, rows: Sequence[int]) -> None:
        """Rows ``rows`` stopped (the engine keeps their images): their attribution stops
        growing too, as their own run's would."""
        if self._active is not None and rows:
            self._active[list(rows)] = 0.0

    def outputs(self) -> dict[str, Tensor]:
        """``{"attribution": (B, C, [T,] H, W)}``, the summed absolute gradients (empty before
        the first backward pass, or with ``attribution=None``)."""
        if self.attribution is None or self._sum is None:
            return {}
        return {"attribution": self._sum.detach().clone()}
