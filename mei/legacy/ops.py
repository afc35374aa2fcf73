"""The operations of the original library's ``mei.legacy.ops`` (sinzlab/mei at 51f2d13).

Method configs stored in lab databases name these classes (``mei.legacy.ops.GaussianBlur``,
``mei.legacy.ops.ChangeNorm``, ...) with the original keyword arguments; each class here takes
the same arguments and computes the same numbers as the original, on the whole batch as the
original did: on CPU float32 the result is bitwise the original's for the same input (the same
arithmetic in the same order). Where the original was broken, the class docstring says what
is fixed.

Every operation is a :class:`LegacyOp`, called as ``op(x, iteration=i)`` or ``op(x, i)``;
unknown keyword arguments are ignored (the original's ``@varargin``). For the batched engine,
:meth:`LegacyOp.for_elements` gives a copy that draws its random numbers from given generators,
either for the whole batch (one MEI) or for each row (one MEI per row, each row getting
bitwise what a run of that row alone gets).

Importing this module imports nothing beyond torch and numpy; ``nnfabrik`` (natural image
backgrounds) and the lab's MEI table (masked blurs) are imported only when used.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import os
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._shift import crop_rows, shift_one, shift_rows
from .exceptions import MissingMaskSource, NotElementwise

#: Where the masked blurs ask DataJoint 0.14 to download fetched MEIs (the original's default).
fetch_download_path = os.environ.get("FETCH_DOWNLOAD_PATH", "/data/fetched_from_attach")

_Op = TypeVar("_Op", bound="LegacyOp")


class LegacyOp:
    """Base of the legacy operations.

    ``op(x, iteration=None, **ignored)`` acts on the whole batch ``x`` as the original did:
    random operations draw one set of numbers for the batch from torch's global generator,
    regularizers return the original's scalar.

    Class attributes for the engine:

    - ``elementwise``: the op draws no random numbers and row ``b`` of its result depends on
      row ``b`` of the input only: applying it to a batch equals applying it to each row and
      stacking, up to the rounding of batched kernels (torch may sum, convolve or vectorize a
      batch in another order than a single row: on CPU measured up to 1 ulp, e.g. float32
      GaussianBlur, float64 ChangeRange and ChangeStd). :meth:`for_elements` returns the op.
    - ``per_row``: :meth:`for_elements` accepts one generator per row. ``False`` for ops whose
      result couples the rows; those raise :class:`~mei.legacy.exceptions.NotElementwise`.
    """

    elementwise: ClassVar[bool] = False
    per_row: ClassVar[bool] = True
    #: checked to read nothing on the host and to do the same work every step (see
    #: :mod:`mei.capture`); a ``decay_factor`` still makes the work change with the step
    _capturable: ClassVar[bool] = False
    #: regularizers: a row's result is 0-d, and per-row results are stacked to shape (B,)
    _scalar: ClassVar[bool] = False

    _args: dict[str, Any]
    _generators: list[torch.Generator] | None = None

    def __new__(cls: type[_Op], *args: Any, **kwargs: Any) -> _Op:
        self = super().__new__(cls)
        # Record the constructor arguments (defaults included) for the repr. A copy or unpickle
        # calls __new__ without arguments and then restores the recorded ones.
        self._args = {}
        if cls.__init__ is object.__init__:
            return self
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind_partial(None, *args, **kwargs)
        except TypeError:  # __init__ raises the same error with its own message
            return self
        bound.apply_defaults()
        named = list(signature.parameters)[1:]
        self._args = {k: bound.arguments[k] for k in named if k in bound.arguments}
        return self

    def __call__(self, x: Tensor, iteration: int | None = None, **ignored: Any) -> Tensor:
        generators = self._generators
        if generators is None:
            return self._forward(x, iteration, None)
        if len(generators) == 1:
            return self._forward(x, iteration, generators[0])
        if len(x) != len(generators):
            raise ValueError(
                f"{type(self).__name__} was prepared for {len(generators)} elements "
                f"(one per row) but got a batch of {len(x)}"
            )
        return self._forward_rows(x, iteration, generators)

    def _forward_rows(
        self, x: Tensor, iteration: int | None, generators: Sequence[torch.Generator]
    ) -> Tensor:
        """Row ``b`` as :meth:`_forward` computes it alone with ``generators[b]``."""
        # the rows as views whose backward is one concatenation (a row taken as x[b : b + 1]
        # has a backward that writes a whole batch of zeros: B of them per step)
        rows = [
            self._forward(row, iteration, g)
            for row, g in zip(torch.split(x, 1), generators, strict=True)
        ]
        return torch.stack(rows) if self._scalar else torch.cat(rows)

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        """The original's computation on ``x``; random numbers come from ``generator``
        (``None``: torch's global generator)."""
        raise NotImplementedError

    def for_elements(self, generators: Sequence[torch.Generator]) -> LegacyOp:
        """A copy drawing its random numbers from ``generators``, with the original's calls.

        One generator: the whole batch is one element (one run, possibly several rows), as
        ``__call__`` but drawing from ``generators[0]``. One generator per row (more than one):
        row ``b`` gets bitwise what a call on that row alone with ``generators[b]`` gets;
        regularizers then return shape ``(B,)``. Elementwise ops return themselves.
        """
        generators = list(generators)
        if not generators:
            raise ValueError("for_elements needs at least one generator")
        if self.elementwise:
            return self
        if len(generators) > 1 and not self.per_row:
            raise NotElementwise(
                f"{type(self).__name__} couples the rows of a batch and cannot act on each row "
                "separately; optimize these MEIs one at a time"
            )
        clone = copy.copy(self)
        clone._generators = generators
        return clone

    @property
    def capturable(self) -> bool | str:
        """``True`` if a step with this op can be captured as a CUDA graph, else why not."""
        if not self._capturable:
            return (
                "the original's op draws its random numbers or copies data from the host, or "
                "has not been checked to read nothing there"
            )
        decay = self._args.get("decay_factor")
        if decay is not None:
            return f"it changes with the step number (decay_factor={decay!r})"
        return True

    def __getstate__(self) -> dict[str, Any]:
        # copies on a device (see _on_device) are made again where the op is used
        return {k: v for k, v in self.__dict__.items() if k != "_device_copies"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._args.items())
        return f"{type(self).__name__}({args})"


def _pair(value: Any) -> tuple[Any, Any]:
    """``(value, value)``, or ``value`` as a tuple if it is a pair already. The original took
    tuples only; a list (as a config stored in a database may hold) counts as a pair too."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, list):
        return tuple(value)
    return (value, value)


def _iteration(iteration: int | None, name: str) -> int:
    if iteration is None:
        raise TypeError(f"{name} with a decay_factor needs the iteration: call it as op(x, i)")
    return iteration


def _per_row(x: Tensor) -> Tensor:
    return x.reshape(len(x), -1)


def _like_rows(values: Tensor, x: Tensor) -> Tensor:
    return values.view(len(x), *[1] * (x.dim() - 1))


def _on_device(
    op: LegacyOp,
    tensor: Tensor,
    device: torch.device,
    dtype: torch.dtype | None = None,
    derive: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``tensor`` (one of ``op``'s own, on the host), or what ``derive`` makes of it there, on
    ``device`` as ``dtype``: copied there once per op and device, and again only if the op's
    tensor is replaced by another.

    The original copied such tensors every step; on a GPU each copy from host memory is a
    synchronous transfer (the host waits for the device), every step.
    """
    copies: dict[tuple[int, torch.device, torch.dtype | None], tuple[Tensor, Tensor]]
    copies = op.__dict__.setdefault("_device_copies", {})
    key = (id(tensor), device, dtype)  # the entry holds the tensor: its id stays its own
    entry = copies.get(key)
    if entry is None:
        made = tensor if derive is None else derive(tensor)
        entry = copies[key] = (tensor, made.to(device=device, dtype=dtype))
    return entry[1]


def gaussian_window(size: int, std: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The unnormalized symmetric Gaussian window of ``size`` points (peak 1), float64.

    The same numbers as ``scipy.signal.windows.gaussian(size, std)`` (the original's removed
    ``scipy.signal.gaussian``): the same numpy operations in the same order.
    """
    if int(size) != size or size < 0:
        raise ValueError(f"window size must be a non-negative integer, got {size!r}")
    if size <= 1:
        return np.ones(int(size), dtype=np.float64)
    n = np.arange(0, size, dtype=np.float64) - (size - 1.0) / 2.0
    sig2 = 2 * std * std
    window: np.ndarray[Any, np.dtype[np.float64]] = np.exp(-(n**2) / sig2)
    return window


def _blur(x: Tensor, sigma: tuple[float, float], truncate: float, pad_mode: str) -> Tensor:
    """The original's separable blur of every channel of ``x`` (B, C, H, W): convolve with the
    unnormalized windows cast to ``x.dtype``, then divide by the product of their sums."""
    y_half = max(int(round(sigma[0] * truncate)), 1)
    x_half = max(int(round(sigma[1] * truncate)), 1)
    y_window = torch.as_tensor(
        gaussian_window(2 * y_half + 1, sigma[0]), device=x.device, dtype=x.dtype
    )
    x_window = torch.as_tensor(
        gaussian_window(2 * x_half + 1, sigma[1]), device=x.device, dtype=x.dtype
    )
    channels = x.shape[1]
    padded = F.pad(x, pad=(x_half, x_half, y_half, y_half), mode=pad_mode)
    blurred = F.conv2d(padded, y_window.repeat(channels, 1, 1)[..., None], groups=channels)
    blurred = F.conv2d(blurred, x_window.repeat(channels, 1, 1, 1), groups=channels)
    return blurred / (y_window.sum() * x_window.sum())


def _decayed_sigma(
    sigma: tuple[float, float], decay_factor: float | None, iteration: int | None, name: str
) -> tuple[float, float]:
    if decay_factor is None:
        return sigma
    i = _iteration(iteration, name)
    return (sigma[0] + decay_factor * (i - 1), sigma[1] + decay_factor * (i - 1))


# ------------------------------------------------------------------------------------------
# Regularizers: (x, iteration) -> scalar tensor
# ------------------------------------------------------------------------------------------


class TotalVariation(LegacyOp):
    """Total variation of each image, averaged over the batch, times ``weight``.

    ``isotropic``: sum of the gradient's Euclidean norms (over the pixels where both
    neighbours exist) instead of the sum of absolute differences.

    Fixed: the original subtracted the last row from every row (``x[:, :, 1:] - x[:, :, -1:]``)
    for the vertical differences; here each row is compared with the row above it.
    """

    _capturable = True

    _scalar = True

    def __init__(self, weight: float = 1, isotropic: bool = False):
        self.weight = weight
        self.isotropic = isotropic

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        diffs_y = torch.abs(x[:, :, 1:] - x[:, :, :-1])
        diffs_x = torch.abs(x[:, :, :, 1:] - x[:, :, :, :-1])
        if self.isotropic:
            tv = _per_row(torch.sqrt(diffs_y[:, :, :, :-1] ** 2 + diffs_x[:, :, :-1, :] ** 2)).sum(
                -1
            )
        else:
            tv = _per_row(diffs_y).sum(-1) + _per_row(diffs_x).sum(-1)
        return self.weight * torch.mean(tv)


class RegTransparency(LegacyOp):
    """``weight * x``: meant for a (mean) transparency value, as in the original."""

    elementwise = True

    def __init__(self, weight: float = 0):
        self.weight = weight

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        return self.weight * x


class LpNorm(LegacyOp):
    """The ``p``-norm of each image, averaged over the batch, times ``weight``."""

    _capturable = True

    _scalar = True

    def __init__(self, weight: float = 1, p: float = 6):
        self.weight = weight
        self.p = p

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        lpnorm = _per_row(torch.abs(x) ** self.p).sum(-1) ** (1 / self.p)
        return self.weight * torch.mean(lpnorm)


@functools.lru_cache(maxsize=32)
def _pairs(n: int, device: torch.device) -> Tensor:
    """The positions above the diagonal of an ``n x n`` matrix, row by row: the entries the
    original took with a boolean mask (which, on a GPU, waits for the device every step)."""
    return torch.triu_indices(n, n, offset=1, device=device)


class Similarity(LegacyOp):
    """Similarity between the images of a batch: ``weight * combine_op(s)`` over the pairwise
    similarities ``s`` (each pair once).

    ``metric``: ``"correlation"`` (masked correlation), ``"cosine"`` (of the masked images) or
    ``"neg_euclidean"`` (minus the distance between the masked images). ``mask``: ``None`` or
    values in [0, 1] broadcastable with the input.

    A batch of one image has no pairs: the original warned and returned the integer 0; here
    it warns and returns a zero tensor. The result couples the rows (``per_row = False``).
    """

    _capturable = True

    per_row = False
    _scalar = True

    def __init__(
        self,
        weight: float = 1,
        metric: str = "correlation",
        combine_op: Callable[[Tensor], Any] = torch.max,
        mask: Tensor | None = None,
    ):
        self.weight = weight
        self.metric = metric
        self.combine_op = combine_op
        self.mask = mask

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        n = len(x)
        if n < 2:
            warnings.warn(
                "Only one image in the batch: Similarity regularization returns 0", stacklevel=3
            )
            return torch.zeros((), dtype=x.dtype, device=x.device)
        masked = x if self.mask is None else x * self.mask
        flat = masked.reshape(n, -1)
        if self.metric == "correlation":
            if self.mask is None:
                residuals = flat - flat.mean(-1, keepdim=True)
                numer = torch.mm(residuals, residuals.t())
                ssr = (residuals**2).sum(-1)
            else:
                mask_sum = self.mask.sum() * (flat.shape[-1] / len(self.mask.reshape(-1)))
                mean = flat.sum(-1) / mask_sum
                residuals = x - _like_rows(mean, x)
                numer = (
                    (residuals[None, :] * residuals[:, None] * self.mask).reshape(n, n, -1).sum(-1)
                )
                ssr = ((residuals**2) * self.mask).reshape(n, -1).sum(-1)
            sim_matrix = numer / (torch.sqrt(torch.outer(ssr, ssr)) + 1e-9)
        elif self.metric == "cosine":
            norms = torch.norm(flat, dim=-1)
            sim_matrix = torch.mm(flat, flat.t()) / (torch.outer(norms, norms) + 1e-9)
        elif self.metric == "neg_euclidean":
            sim_matrix = -torch.norm(flat[None, :, :] - flat[:, None, :], dim=-1)
        else:
            raise ValueError(f"Invalid metric name: {self.metric!r}")
        rows, cols = _pairs(n, x.device)
        similarity = self.combine_op(sim_matrix[rows, cols])
        result: Tensor = self.weight * similarity
        return result


class BoxContrast(LegacyOp):
    """Penalize local contrast: ``weight * mean(relu(box_sum(x**2) - box_constraint) ** p)``
    with a ``filter_size`` box over single-channel images (zero ``padding``), plus an
    L1 penalty ``LpNorm(weight=l1_weight, p=1)``. Batch-averaged as in the original."""

    _capturable = True

    _scalar = True

    def __init__(
        self,
        weight: float = 0.1,
        filter_size: int = 7,
        box_constraint: float = 10,
        p: float = 2,
        padding: int = 0,
        l1_weight: float = 1e-3,
    ):
        self.weight = weight
        self.filter_size = filter_size
        self.box_constraint = box_constraint
        self.p = p
        self.padding = padding
        self.box_filter = torch.ones([1, 1, filter_size, filter_size])
        self.l1_regularizer = LpNorm(weight=l1_weight, p=1)

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        box = _on_device(self, self.box_filter, x.device, x.dtype)
        local = F.conv2d(x**2, box, padding=self.padding)
        box_loss = self.weight * torch.mean(torch.relu(local - self.box_constraint) ** self.p)
        return box_loss + self.l1_regularizer._forward(x, iteration, None)


#: Laplace kernels of neuralpredictors' ``LaplaceL2`` by filter size.
_LAPLACE_KERNELS: dict[int, list[list[float]]] = {
    3: [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],
    5: [
        [0, 0, 1, 0, 0],
        [0, 1, 2, 1, 0],
        [1, 2, -16, 2, 1],
        [0, 1, 2, 1, 0],
        [0, 0, 1, 0, 0],
    ],
    7: [
        [0, 0, 1, 1, 1, 0, 0],
        [0, 1, 3, 3, 3, 1, 0],
        [1, 3, 0, -7, 0, 3, 1],
        [1, 3, -7, -24, -7, 3, 1],
        [1, 3, 0, -7, 0, 3, 1],
        [0, 1, 3, 3, 3, 1, 0],
        [0, 0, 1, 1, 1, 0, 0],
    ],
}


@functools.lru_cache(maxsize=32)
def _laplace_kernel(filter_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The Laplace kernel ``(1, 1, k, k)`` on ``device``, made once per size, device and dtype
    (not copied from the host every step)."""
    kernel = torch.tensor(_LAPLACE_KERNELS[filter_size], dtype=torch.float32)[None, None]
    return kernel.to(device=device, dtype=dtype)


def laplace_l2(x: Tensor, filter_size: int = 3, avg: bool = True) -> Tensor:
    """Half the mean (``avg``) or sum of the squared Laplacian of every channel of ``x``
    (B, C, H, W), zero-padded to keep the size: the numbers of neuralpredictors'
    ``LaplaceL2(filter_size=filter_size)(x, avg=avg)``."""
    if filter_size not in _LAPLACE_KERNELS:
        raise ValueError(f"filter_size must be 3, 5 or 7, got {filter_size!r}")
    kernel = _laplace_kernel(filter_size, x.device, x.dtype)
    b, c, h, w = x.size()
    laplace = F.conv2d(x.reshape(b * c, 1, h, w), kernel, bias=None, padding=filter_size // 2)
    aggregate = torch.mean if avg else torch.sum
    return aggregate(laplace.pow(2)) / 2


class BoxContrastPixelL2(LegacyOp):
    """``weight * sum(relu(x - upper) ** p + relu(-((x - lower) ** p)))`` plus
    ``l2_weight`` times the Laplace smoothness penalty of neuralpredictors' ``LaplaceL2``
    (``filter_size`` 3, 5 or 7; re-implemented in :func:`laplace_l2`, same numbers) plus
    ``LpNorm(weight=l1_weight, p=1)``.

    As in the original, the lower-bound term is ``relu(-((x - lower) ** p))``, which is zero
    for even ``p``: only the upper bound is penalized with the default ``p=2``.
    """

    _capturable = True

    _scalar = True

    def __init__(
        self,
        weight: float = 0.1,
        upper: float = 2.0,
        lower: float = -1.5,
        p: float = 2,
        l2_weight: float = 1,
        l1_weight: float = 0,
        filter_size: int = 3,
    ):
        if filter_size not in _LAPLACE_KERNELS:
            raise ValueError(f"filter_size must be 3, 5 or 7, got {filter_size!r}")
        self.weight = weight
        self.upper = upper
        self.lower = lower
        self.p = p
        self.l2_weight = l2_weight
        self.filter_size = filter_size
        self.l1_regularizer = LpNorm(weight=l1_weight, p=1)

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        pixel_loss = self.weight * torch.sum(
            (torch.relu(x - self.upper) ** self.p) + torch.relu(-((x - self.lower) ** self.p))
        )
        l2_loss = self.l2_weight * laplace_l2(x, self.filter_size, avg=True)
        return pixel_loss + l2_loss + self.l1_regularizer._forward(x, iteration, None)


class Transparency(LegacyOp):
    """``weight`` times the mean of the last channel (the opacity of a transparent MEI)."""

    _scalar = True

    def __init__(self, weight: float = 0.5):
        self.weight = weight

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        return self.weight * torch.mean(x[:, -1, ...])


# ------------------------------------------------------------------------------------------
# Backgrounds for transparent MEIs: (x, iteration) -> one background image (CPU tensor)
# ------------------------------------------------------------------------------------------


def _natural_images(dataset_fn: str, dataset_path: Any, dataset_name: Any) -> Tensor:
    """All images of ``dataset_name`` in the train, test and validation loaders built by
    nnfabrik's ``builder.get_data(dataset_fn, config)``, stacked (the original's recipe)."""
    try:
        from nnfabrik import builder
    except ImportError as e:
        raise ImportError(
            "natural image backgrounds load their images with nnfabrik.builder.get_data: "
            f"install nnfabrik (pip install 'mei[nnfabrik]') ({e})"
        ) from e
    config = {
        "paths": dataset_path,
        "normalize": True,
        "include_behavior": False,
        "batch_size": 128,
        "exclude": None,
        "file_tree": True,
        "scale": 1,
    }
    dataloaders = builder.get_data(dataset_fn, config)
    images = []
    for tier in ["train", "test", "validation"]:
        for batch in dataloaders[tier][dataset_name]:
            images.append(batch[0].squeeze().data)
    return torch.vstack(images)


class _Background(LegacyOp):
    """Backgrounds draw from Python's ``random`` or numpy's global generator, as in the
    original, not from torch's: :meth:`for_elements` returns the op itself, and a batched
    run cannot reproduce single runs (``per_row = False``)."""

    per_row = False

    def for_elements(self, generators: Sequence[torch.Generator]) -> LegacyOp:
        return self


class NatImgBackground(_Background):
    """A random natural image (``random.choice``) from the dataset built by nnfabrik's
    ``builder.get_data(dataset_fn, ...)`` from ``dataset_path``; the images are loaded at
    iteration 0 (and on the first call if that is later). ``norm``: rescale the image to
    this L2 norm, then clip it to [-1.96, 2.12]."""

    def __init__(
        self,
        dataset_fn: str,
        dataset_path: Any,
        norm: float | None = None,
        dataset_name: str = "22564-3-12",
    ):
        self.dataset_fn = dataset_fn
        self.dataset_path = dataset_path
        self.dataset_name = dataset_name
        self.norm = norm
        self.images: Tensor | None = None

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        if iteration == 0 or self.images is None:
            self.images = _natural_images(self.dataset_fn, self.dataset_path, self.dataset_name)
        bg: Tensor = random.choice(self.images)
        if self.norm is not None:
            bg = torch.clamp(bg * (self.norm / torch.norm(bg)), -1.96, 2.12)
        return bg


class NatImgBackgroundHighNorm(_Background):
    """A random natural image (``random.choice``) from the dataset built by nnfabrik's
    ``builder.get_data(dataset_fn, ...)``, loaded when the op is made.

    The original computed a rescaled image (norm growing from ``start_norm`` towards
    ``end_norm``) but returned the image unscaled; it is returned unscaled here too, so the
    numbers stay the original's (``start_norm`` and ``end_norm`` are kept but unused; the
    original failed when they were left at ``None``).
    """

    def __init__(
        self,
        dataset_fn: str,
        dataset_path: Any,
        start_norm: float | None = None,
        end_norm: float | None = None,
        dataset_name: str | None = None,
    ):
        self.start_norm = start_norm
        self.end_norm = end_norm
        self.images = _natural_images(dataset_fn, dataset_path, dataset_name)

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        bg: Tensor = random.choice(self.images)
        return bg


class WhiteNoiseBackground(_Background):
    """Gaussian white noise of ``shape`` from numpy's global generator (float32), scaled so
    that its largest absolute value is ``2.12 * strength``."""

    def __init__(
        self,
        mean: float,
        std: float,
        shape: Sequence[int] = (72, 128),
        strength: float = 1,
    ):
        self.mean = mean
        self.std = std
        self.shape = shape
        self.strength = strength

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        bg = np.random.normal(self.mean, self.std, self.shape).astype("f")
        flat = bg.flatten()
        rang = max(flat.max(), abs(flat.min()))
        bg = bg / rang * 2.12 * self.strength
        return torch.as_tensor(bg)


# ------------------------------------------------------------------------------------------
# Transforms: (x, iteration) -> what the model sees
# ------------------------------------------------------------------------------------------


class Jitter(LegacyOp):
    """Shift the batch by one random offset of at most ``max_jitter`` pixels (int or
    ``(y, x)``), filling the uncovered border by reflection. The offsets are drawn as in the
    original: ``torch.randint(-m, m + 1, (1,), dtype=torch.int32)``, y then x."""

    def __init__(self, max_jitter: int | tuple[int, int]):
        self.max_jitter = _pair(max_jitter)

    def _draw(self, generator: torch.Generator | None) -> tuple[int, int]:
        my, mx = self.max_jitter
        jitter_y = int(
            torch.randint(-my, my + 1, (1,), dtype=torch.int32, generator=generator).item()
        )
        jitter_x = int(
            torch.randint(-mx, mx + 1, (1,), dtype=torch.int32, generator=generator).item()
        )
        return jitter_y, jitter_x

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        return shift_one(x, *self._draw(generator))

    def _forward_rows(
        self, x: Tensor, iteration: int | None, generators: Sequence[torch.Generator]
    ) -> Tensor:
        # each row's offsets from its own generator, y then x, then all rows in one gather
        shifts = [self._draw(g) for g in generators]
        return shift_rows(x, [dy for dy, _ in shifts], [dx for _, dx in shifts])


class RandomCrop(LegacyOp):
    """Crop the batch at one random position to ``height`` x ``width`` (drawn as in the
    original: ``torch.randint(0, max(0, H - height) + 1, (1,), dtype=torch.int32)``, y then
    x)."""

    def __init__(self, height: int, width: int):
        self.height = height
        self.width = width

    def _draw(self, x: Tensor, generator: torch.Generator | None) -> tuple[int, int]:
        crop_y = int(
            torch.randint(
                0,
                max(0, x.shape[-2] - self.height) + 1,
                (1,),
                dtype=torch.int32,
                generator=generator,
            ).item()
        )
        crop_x = int(
            torch.randint(
                0,
                max(0, x.shape[-1] - self.width) + 1,
                (1,),
                dtype=torch.int32,
                generator=generator,
            ).item()
        )
        return crop_y, crop_x

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        crop_y, crop_x = self._draw(x, generator)
        return x[..., crop_y : crop_y + self.height, crop_x : crop_x + self.width]

    def _forward_rows(
        self, x: Tensor, iteration: int | None, generators: Sequence[torch.Generator]
    ) -> Tensor:
        # each row's position from its own generator, y then x, then all rows in one gather
        if self.height > x.shape[-2] or self.width > x.shape[-1]:  # shorter rows, as before
            return super()._forward_rows(x, iteration, generators)
        corners = [self._draw(x, g) for g in generators]
        tops, lefts = [y for y, _ in corners], [s for _, s in corners]
        return crop_rows(x, tops, lefts, self.height, self.width)


class BatchedCrops(LegacyOp):
    """All ``height`` x ``width`` crops of one image (a batch of one), every ``step_size``
    pixels (int or ``(y, x)``), stacked as a batch; ``sigma`` (float or ``(y, x)``): multiply
    each crop by a Gaussian window of that standard deviation (peak 1).

    Fixed: the window no longer needs scipy's removed ``signal.gaussian`` (same numbers). The
    result couples the rows (``per_row = False``).
    """

    per_row = False

    def __init__(
        self,
        height: int,
        width: int,
        step_size: int | tuple[int, int],
        sigma: float | tuple[float, float] | None = None,
    ):
        self.height = height
        self.width = width
        self.step_size = _pair(step_size)
        self.sigma = None if sigma is None else _pair(sigma)
        self.mask: np.ndarray[Any, np.dtype[np.float64]] | None = None
        if self.sigma is not None:
            self.mask = gaussian_window(height, self.sigma[0])[:, None] * gaussian_window(
                width, self.sigma[1]
            )

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        if len(x) > 1:
            raise ValueError("x can only have one example.")
        if x.shape[-2] < self.height or x.shape[-1] < self.width:
            raise ValueError("x should be larger than the expected crop")
        crops = [
            x[..., i : i + self.height, j : j + self.width]
            for i in range(0, x.shape[-2] - self.height + 1, self.step_size[0])
            for j in range(0, x.shape[-1] - self.width + 1, self.step_size[1])
        ]
        out = torch.cat(crops, dim=0)
        if self.mask is not None:
            out = out * torch.as_tensor(self.mask, device=out.device, dtype=out.dtype)
        return out


class ChangeRange(LegacyOp):
    """``sigmoid(x) * (x_max - x_min) + x_min``: values in (x_min, x_max). Tensors for
    ``x_min``/``x_max`` must broadcast with x (one that varies along the batch ties values
    to rows)."""

    _capturable = True

    elementwise = True

    def __init__(self, x_min: float | Tensor, x_max: float | Tensor):
        self.x_min = x_min
        self.x_max = x_max

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        return torch.sigmoid(x) * (self.x_max - self.x_min) + self.x_min


class Resize(LegacyOp):
    """Resize to ``round(scale_factor * (H, W))`` with ``resize_method`` ('nearest',
    'bilinear', ... as ``F.interpolate``'s ``mode``).

    Fixed: the original stored the method as ``resample_method`` but read ``resize_method``
    (an AttributeError on every call) and used the deprecated ``F.upsample``; here
    ``F.interpolate`` with the same arguments (the same numbers).
    """

    _capturable = True

    elementwise = True

    def __init__(self, scale_factor: float, resize_method: str = "bilinear"):
        self.scale_factor = scale_factor
        self.resize_method = resize_method

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        new_height = int(round(x.shape[-2] * self.scale_factor))
        new_width = int(round(x.shape[-1] * self.scale_factor))
        return F.interpolate(x, (new_height, new_width), mode=self.resize_method)


class GrayscaleToRGB(LegacyOp):
    """Repeat the single channel of ``(B, 1, H, W)`` images three times (a view)."""

    _capturable = True

    elementwise = True

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError("Image is not grayscale!")
        return x.expand(-1, 3, -1, -1)


class Identity(LegacyOp):
    """Returns the input as it is."""

    _capturable = True

    elementwise = True

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        return x


# ------------------------------------------------------------------------------------------
# Gradient operations (preconditioning) and post-update operations
# ------------------------------------------------------------------------------------------


class ChangeNorm(LegacyOp):
    """Rescale each image to L2 norm ``norm`` (a number, or a tensor with one norm per image
    of the batch, which ties the norms to rows)."""

    _capturable = True

    elementwise = True

    def __init__(self, norm: float | Tensor):
        self.norm = norm

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        x_norm = torch.norm(_per_row(x), dim=-1)
        return x * _like_rows(self.norm / x_norm, x)


class ClipRange(LegacyOp):
    """Clip values to ``[x_min, x_max]``."""

    _capturable = True

    elementwise = True

    def __init__(self, x_min: float, x_max: float):
        self.x_min = x_min
        self.x_max = x_max

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        return torch.clamp(x, self.x_min, self.x_max)


@functools.lru_cache(maxsize=32)
def _fourier_mask(
    h: int, w: int, freq_exp: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """:class:`FourierSmoothing`'s mask ``(h, w // 2 + 1, 1)``, computed on the host in
    float32 as the original did every step, and moved to ``device`` once."""
    freq_y = (
        torch.cat(
            [
                torch.arange((h - 1) // 2 + 1, dtype=torch.float32),
                -torch.arange(h // 2, 0, -1, dtype=torch.float32),
            ]
        )
        / h
    )
    freq_x = torch.arange(w // 2 + 1, dtype=torch.float32) / w
    yx_freq = torch.sqrt(freq_y[:, None] ** 2 + freq_x**2)
    mask = (1 - yx_freq * torch.sqrt(torch.tensor(2.0))) ** freq_exp
    return mask.to(device=device, dtype=dtype).unsqueeze(-1)


class FourierSmoothing(LegacyOp):
    """Damp high spatial frequencies: ``irfft2((1 - f * sqrt(2)) ** freq_exp * rfft2(x))``
    with ``f`` the frequency magnitude (cycles per pixel), so 1 at frequency 0 and 0 at the
    highest frequency; larger ``freq_exp`` smooths more.

    Fixed: the original used ``torch.rfft``/``torch.irfft``, removed from torch; here
    ``torch.fft.rfft2``/``irfft2`` with the same math (the real and imaginary parts are each
    multiplied by the mask, computed in float32 and cast to the input's dtype, as before).
    """

    _capturable = True

    elementwise = True

    def __init__(self, freq_exp: float):
        self.freq_exp = freq_exp

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        h, w = x.shape[-2:]
        # as the original: the real and imaginary parts are each multiplied by the mask
        freq = torch.view_as_real(torch.fft.rfft2(x))
        mask = _fourier_mask(h, w, self.freq_exp, freq.device, freq.dtype)
        smooth: Tensor = torch.fft.irfft2(torch.view_as_complex(freq * mask), s=(h, w))
        return smooth


class DivideByMeanOfAbsolute(LegacyOp):
    """Divide each image by the mean of its absolute values.

    Fixed: the original divided the whole batch by the vector of means, which broadcast
    against the last axis (wrong or an error for more than one image); each image is divided
    by its own mean here (for one image: bitwise the original).
    """

    _capturable = True

    elementwise = True

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        return x / _like_rows(_per_row(torch.abs(x)).mean(-1), x)


class MultiplyBy(LegacyOp):
    """Multiply by ``const``, or by ``const + decay_factor * (iteration - 1)``."""

    _capturable = True

    elementwise = True

    def __init__(self, const: float, decay_factor: float | None = None):
        self.const = const
        self.decay_factor = decay_factor

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        if self.decay_factor is None:
            const = self.const
        else:
            const = self.const + self.decay_factor * (_iteration(iteration, "MultiplyBy") - 1)
        return const * x


class GaussianBlur(LegacyOp):
    """Blur each channel with a Gaussian of standard deviation ``sigma`` (float or ``(y, x)``).

    ``decay_factor``: sigma is ``sigma + decay_factor * (iteration - 1)``. ``truncate``: the
    window reaches ``max(round(sigma * truncate), 1)`` pixels to each side. ``pad_mode``:
    'reflect', 'replicate' or 'constant'. ``mei_only``: leave the last channel (the
    transparency of a transparent MEI) unblurred.

    The original's arithmetic: convolve with the unnormalized float64 window cast to the
    input's dtype, then divide by the product of the window sums. Fixed: the window no longer
    needs scipy's removed ``signal.gaussian`` (same numbers).
    """

    _capturable = True

    elementwise = True

    def __init__(
        self,
        sigma: float | tuple[float, float],
        decay_factor: float | None = None,
        truncate: float = 4,
        pad_mode: str = "reflect",
        mei_only: bool = False,
    ):
        self.sigma = _pair(sigma)
        self.decay_factor = decay_factor
        self.truncate = truncate
        self.pad_mode = pad_mode
        self.mei_only = mei_only

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        sigma = _decayed_sigma(self.sigma, self.decay_factor, iteration, "GaussianBlur")
        if not self.mei_only:
            return _blur(x, sigma, self.truncate, self.pad_mode)
        blurred = _blur(x[:, :-1, ...], sigma, self.truncate, self.pad_mode)
        return torch.cat(
            (blurred, x[:, -1, ...].view(x.shape[0], 1, x.shape[2], x.shape[3])), dim=1
        )


def _as_mei(fetched: Any, download_path: str) -> Tensor:
    """The MEI tensor from what ``fetch1("mei", ...)`` returned: a tensor, a path to a file
    written with ``torch.save`` (DataJoint 0.14's attach), or an object with ``read()`` or
    ``download(dir)`` (DataJoint 2.x's object references)."""
    if isinstance(fetched, Tensor):
        return fetched
    if isinstance(fetched, np.ndarray):
        return torch.as_tensor(fetched)
    if isinstance(fetched, (str, os.PathLike)):
        loaded: Tensor = torch.load(fetched, map_location="cpu")
        return loaded
    if callable(getattr(fetched, "read", None)):
        content = fetched.read()
        if isinstance(content, (bytes, bytearray, memoryview)):
            from_bytes: Tensor = torch.load(io.BytesIO(bytes(content)), map_location="cpu")
            return from_bytes
        return _as_mei(content, download_path)
    if callable(getattr(fetched, "download", None)):
        return _as_mei(fetched.download(download_path), download_path)
    raise TypeError(
        f"cannot read an MEI from the fetched {type(fetched).__name__}: expected a tensor, a "
        "file path, or an object with read() or download(dir)"
    )


def _resolve_table(mei_table: Any) -> Any:
    if isinstance(mei_table, str):
        from ..import_helpers import import_object

        mei_table = import_object(mei_table)
    if isinstance(mei_table, type):
        mei_table = mei_table()
    return mei_table


def _fetch_mei(
    mei_table: Any,
    method_fn: Any,
    ensemble_hash: Any,
    method_hash: Any,
    unit_id: Any,
    download_path: str,
) -> Tensor:
    """The stored MEI restricted as the original did, from a DataJoint-like table (duck
    typed: ``(table & restriction).fetch1("mei", ...)``)."""
    relation = (
        mei_table
        & dict(method_fn=method_fn)
        & dict(ensemble_hash=ensemble_hash)
        & dict(method_hash=method_hash)
        & dict(unit_id=unit_id)
    )
    try:
        fetched = relation.fetch1("mei", download_path=download_path)
    except TypeError as e:  # DataJoint 2.x's fetch1 takes no download_path
        if "download_path" not in str(e):
            raise
        fetched = relation.fetch1("mei")
    return _as_mei(fetched, download_path)


def _as_mask(mask: Any) -> Tensor:
    """A given mask as the original's 0/1 integer tensor (booleans become 0/1)."""
    tensor = torch.as_tensor(mask)
    return tensor.long() if tensor.dtype == torch.bool else tensor


def _mask_source_error(name: str, mask_arg: str) -> MissingMaskSource:
    return MissingMaskSource(
        f"{name} needs its mask: pass {mask_arg}=<0/1 tensor of shape (H, W)> or "
        "mei_table=<the lab's MEI table, or its dotted path such as 'lab.tables.MEI'> "
        "(the original library read a global table `MEI` that it never imported)"
    )


class _MaskedBlur(LegacyOp):
    """The original's Gaussian blur (see :class:`GaussianBlur`) times a 0/1 mask."""

    _capturable = True

    sigma: tuple[float, float]
    decay_factor: float | None
    truncate: float
    pad_mode: str

    elementwise = True

    def _set_blur(
        self, sigma: float | tuple[float, float], decay_factor: float | None, truncate: float,
        pad_mode: str,
    ) -> None:  # fmt: skip
        self.sigma = _pair(sigma)
        self.decay_factor = decay_factor
        self.truncate = truncate
        self.pad_mode = pad_mode

    def _mask_source(self) -> Tensor:
        """The 0/1 tensor the mask is made from."""
        raise NotImplementedError

    def _mask_from(self, source: Tensor) -> Tensor:
        """The mask the blur is multiplied with, made from :meth:`_mask_source`."""
        return source

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        sigma = _decayed_sigma(self.sigma, self.decay_factor, iteration, type(self).__name__)
        mask = _on_device(self, self._mask_source(), x.device, derive=self._mask_from)
        return _blur(x, sigma, self.truncate, self.pad_mode) * mask


class GaussianBlurforRing(_MaskedBlur):
    """:class:`GaussianBlur`, then zero everything outside a ring mask.

    The ring is where the transparency channel (channel 1) of the outer MEI exceeds the inner
    MEI's by more than ``mask_thres_for_ring``. The MEIs are fetched from ``mei_table`` (the
    lab's MEI table, or its dotted path) restricted by ``key``'s ``src_method_fn``,
    ``outer_/inner_ensemble_hash``, ``outer_/inner_method_hash`` and ``unit_id``, downloading
    to ``download_path`` (default: the ``FETCH_DOWNLOAD_PATH`` environment variable, else
    ``/data/fetched_from_attach``). Or pass the 0/1 mask itself as ``ring_mask`` (``key`` is
    then unused).

    Fixed: the original read the table from a global ``MEI`` it never imported (a NameError);
    without ``mei_table`` or ``ring_mask`` this raises
    :class:`~mei.legacy.exceptions.MissingMaskSource`.
    """

    def __init__(
        self,
        sigma: float | tuple[float, float],
        key: Mapping[str, Any] | None,
        decay_factor: float | None = None,
        truncate: float = 4,
        mask_thres_for_ring: float = 0.3,
        pad_mode: str = "reflect",
        *,
        mei_table: Any = None,
        ring_mask: Tensor | None = None,
        download_path: str | None = None,
    ):
        self._set_blur(sigma, decay_factor, truncate, pad_mode)
        if ring_mask is None:
            if mei_table is None or key is None:
                raise _mask_source_error("GaussianBlurforRing", "ring_mask")
            table = _resolve_table(mei_table)
            path = fetch_download_path if download_path is None else download_path
            outer = _fetch_mei(
                table, key["src_method_fn"], key["outer_ensemble_hash"],
                key["outer_method_hash"], key["unit_id"], path,
            )  # fmt: skip
            inner = _fetch_mei(
                table, key["src_method_fn"], key["inner_ensemble_hash"],
                key["inner_method_hash"], key["unit_id"], path,
            )  # fmt: skip
            ring_mask = (outer[0][1] - inner[0][1] > mask_thres_for_ring) * 1
        self.ring_mask = _as_mask(ring_mask)

    def _mask_source(self) -> Tensor:
        return self.ring_mask


class _CenterMaskedBlur(_MaskedBlur):
    center_mask: Tensor

    def __init__(
        self,
        sigma: float | tuple[float, float],
        key: Mapping[str, Any] | None,
        decay_factor: float | None = None,
        truncate: float = 4,
        mask_thres: float = 0.3,
        pad_mode: str = "reflect",
        *,
        mei_table: Any = None,
        center_mask: Tensor | None = None,
        download_path: str | None = None,
    ):
        self._set_blur(sigma, decay_factor, truncate, pad_mode)
        self._load_center(key, mask_thres, mei_table, center_mask, download_path)

    def _load_center(
        self,
        key: Mapping[str, Any] | None,
        mask_thres: float,
        mei_table: Any,
        center_mask: Tensor | None,
        download_path: str | None,
    ) -> None:
        if center_mask is None:
            if mei_table is None or key is None:
                raise _mask_source_error(type(self).__name__, "center_mask")
            inner = _fetch_mei(
                _resolve_table(mei_table),
                key["src_method_fn"],
                key["inner_ensemble_hash"],
                key["inner_method_hash"],
                key["unit_id"],
                fetch_download_path if download_path is None else download_path,
            )
            center_mask = (inner[0][1] > mask_thres) * 1
        self.center_mask = _as_mask(center_mask)

    def _mask_source(self) -> Tensor:
        return self.center_mask


class GaussianBlurforCenter(_CenterMaskedBlur):
    """:class:`GaussianBlur`, then zero everything outside the center mask: where the
    transparency channel (channel 1) of the inner MEI exceeds ``mask_thres``.

    The inner MEI is fetched from ``mei_table`` as in :class:`GaussianBlurforRing` (``key``:
    ``src_method_fn``, ``inner_ensemble_hash``, ``inner_method_hash``, ``unit_id``), or pass
    the 0/1 mask itself as ``center_mask``. Fixed as :class:`GaussianBlurforRing`.
    """


class GaussianBlurforSurround(_CenterMaskedBlur):
    """:class:`GaussianBlur`, then zero everything inside the center mask (see
    :class:`GaussianBlurforCenter`: the same arguments), keeping the surround."""

    def _mask_from(self, source: Tensor) -> Tensor:
        return 1 - source


class ChangeStd(LegacyOp):
    """Rescale each image to standard deviation ``std`` (a number, or a tensor with one per
    image).

    As the original computes it: with ``zero_mean=True`` (the default) the image is only
    scaled, ``x * std / (x_std + 1e-9)``, so its mean is scaled too (it is not made zero);
    with ``zero_mean=False`` the scaled image is shifted back to the original mean. (The
    original's docstring describes the flag the other way round; its code does this.)
    """

    _capturable = True

    elementwise = True

    def __init__(self, std: float | Tensor, zero_mean: bool = True):
        self.std = std
        self.zero_mean = zero_mean

    def _forward(
        self, x: Tensor, iteration: int | None, generator: torch.Generator | None
    ) -> Tensor:
        x_std = torch.std(_per_row(x), dim=-1)
        fixed_std = x * _like_rows(self.std / (x_std + 1e-9), x)
        if self.zero_mean:
            return fixed_std
        x_mean = torch.mean(_per_row(x), dim=-1)
        x_mean_rescaled = torch.mean(_per_row(fixed_std), dim=-1)
        return fixed_std + _like_rows(x_mean - x_mean_rescaled, x)


__all__ = [
    "LegacyOp",
    "NotElementwise",
    "MissingMaskSource",
    "gaussian_window",
    "laplace_l2",
    "fetch_download_path",
    # regularizers
    "TotalVariation",
    "RegTransparency",
    "LpNorm",
    "Similarity",
    "BoxContrast",
    "BoxContrastPixelL2",
    "Transparency",
    # backgrounds
    "NatImgBackground",
    "NatImgBackgroundHighNorm",
    "WhiteNoiseBackground",
    # transforms
    "Jitter",
    "RandomCrop",
    "BatchedCrops",
    "ChangeRange",
    "Resize",
    "GrayscaleToRGB",
    "Identity",
    # gradient and post-update operations
    "ChangeNorm",
    "ClipRange",
    "FourierSmoothing",
    "DivideByMeanOfAbsolute",
    "MultiplyBy",
    "GaussianBlurforRing",
    "GaussianBlurforCenter",
    "GaussianBlurforSurround",
    "GaussianBlur",
    "ChangeStd",
]
