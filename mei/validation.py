"""Validate MEIs: score them on models that did not make them, and against the most exciting
natural images of the dataset.

An MEI is only as good as the model it was optimized on. The usual checks, done here with
plain PyTorch models and dataloaders (no database):

- :func:`score_meis`: the response of each MEI's unit on a *validating* model (another member
  of the ensemble, another seed, another architecture): all MEIs in one forward pass.
- :func:`top_natural_images`: for each unit, its ``k`` best images of the dataset and its
  responses to them, from one pass over the dataloaders (read batch by batch, on the device).
- :func:`validate_meis`: both, for several validating models, with each MEI's response as a
  fraction of its unit's best natural image's response (:class:`ValidationResult`).
- :func:`check_mei_shape` checks that MEIs have the dataset's image shape; :func:`read_images`
  reads the images at given dataset indices back, e.g. to show them
  (:func:`mei.plot.plot_validation`); :func:`ensemble_members` names the members of an
  :class:`~mei.modules.EnsembleModel` to score on each alone.

Models map inputs ``(B, C, ...)`` to responses ``(B, N)``; a unit is an index into ``N``.
An image's *index* is its index in its loader's dataset (``loader.dataset[index]``), whatever
order the loader draws it in, so a shuffling loader gives the same answer as a sequential one;
a loader without a map-style dataset (an ``IterableDataset``, a plain list of batches) is
indexed by the position of the image in one pass over it. ``mei.main.MEIValidationTemplate``
stores the same numbers for the MEIs of a pipeline.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import (
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from .errors import InputError, ModelError, shorten
from .modules import EnsembleModel
from .progress import progress_bar
from .typing import Dataloaders

__all__ = [
    "NaturalImages",
    "ValidationResult",
    "check_mei_shape",
    "ensemble_members",
    "read_images",
    "score_meis",
    "top_natural_images",
    "validate_meis",
]

DEFAULT_BATCH_SIZE = 128
"""Images per forward pass where the loader does not say (a loader's own ``batch_size`` is
used otherwise)."""


@dataclass
class NaturalImages:
    """The ``k`` most exciting images of each unit: ``indices`` ``(U, k)`` (dataset indices,
    best first; ties go to the lower index), ``responses`` ``(U, k)`` the unit's responses to
    them; ``n_images`` the number of images read."""

    units: list[int]
    indices: Tensor
    responses: Tensor
    n_images: int


@dataclass
class ValidationResult:
    """MEIs scored on ``M`` validating models against ``U`` units' best natural images.

    ``mei_responses`` ``(M, U)``: the response of unit ``units[u]`` of model ``models[m]`` to
    MEI ``u``; ``natural_indices`` and ``natural_responses`` ``(M, U, k)``: the unit's ``k``
    best images of the dataset on that model (dataset indices, best first) and its responses
    to them. :attr:`fraction` is the MEI's response over the best natural image's.
    """

    models: list[str]
    units: list[int]
    mei_responses: Tensor
    natural_indices: Tensor
    natural_responses: Tensor
    n_images: int = 0
    meis: Tensor | None = field(default=None, repr=False)

    @property
    def fraction(self) -> Tensor:
        """``(M, U)``: each MEI's response as a fraction of its unit's response to its best
        natural image, on each model (``> 1``: the MEI drives the unit more than any image
        of the dataset). Only meaningful where the best natural response is positive."""
        return self.mei_responses / self.natural_responses[..., 0]


# --------------------------------------------------------------------------- checks
def _check_units(units: Any, n_outputs: int | None = None, *, argument: str = "units") -> list[int]:
    """``units`` as a list of ints, each in ``0 .. n_outputs - 1`` (when known)."""
    if isinstance(units, Tensor):
        units = units.tolist()
    if isinstance(units, (str, bytes)) or not isinstance(units, Iterable):
        raise InputError(
            f"{argument} must be a sequence of output unit indices, got {shorten(units)}",
            argument=argument,
        )
    checked = []
    for i, unit in enumerate(units):
        if isinstance(unit, bool) or not isinstance(unit, numbers.Integral):
            raise InputError(
                f"{argument}[{i}] must be an integer unit index, got {shorten(unit)}",
                argument=argument,
            )
        if int(unit) < 0 or (n_outputs is not None and int(unit) >= n_outputs):
            limit = f"0 .. {n_outputs - 1}" if n_outputs is not None else ">= 0"
            raise InputError(
                f"{argument}[{i}] = {int(unit)} is out of range: the model has "
                f"{n_outputs} output units ({limit})",
                argument=argument,
            )
        checked.append(int(unit))
    if not checked:
        raise InputError(f"{argument} is empty: give at least one unit", argument=argument)
    return checked


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 1:
        raise InputError(f"k must be a positive integer, got {shorten(k)}", argument="k")
    return int(k)


def _responses(output: Any, where: str) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ModelError(
            f"{where}: the model must return responses (B, N), one column per unit; got {got}"
        )
    return output


def _device_of(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class _Evaluating:
    """Eval mode for the block (the model's own modes restored afterwards), no gradients."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []
        self.grad = torch.no_grad()

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.grad.__exit__(*exc)
        for m, training in self.modes:
            m.training = training


# --------------------------------------------------------------------------- MEIs
def _meis_and_units(meis: Tensor | Sequence[Tensor], units: Any) -> tuple[Tensor, list[int]]:
    """``meis`` as one ``(U, C, ...)`` batch and ``units`` checked, one unit per MEI."""
    batch = _stack_meis(meis)
    chosen = _check_units(units)
    if len(chosen) != len(batch):
        raise InputError(
            f"one unit per MEI: got {len(batch)} MEIs (meis of shape {tuple(batch.shape)}) and "
            f"{len(chosen)} units",
            argument="units",
        )
    return batch, chosen


def score_meis(
    model: nn.Module,
    meis: Tensor | Sequence[Tensor],
    units: Sequence[int],
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
    device: Any = None,
    batch_size: int | None = None,
) -> Tensor:
    """The response of unit ``units[i]`` of ``model`` to ``meis[i]``, for every ``i``: ``(U,)``
    on the CPU.

    ``meis`` is ``(U, C, ...)`` (or a sequence of ``(1, C, ...)`` MEIs); all go through the
    model in one forward pass (``batch_size``: at most that many per pass), on ``device``
    (default: the model's). ``forward_kwargs`` are passed to the model (e.g. a session's
    ``data_key``). Raises :class:`~mei.errors.InputError` when the numbers of MEIs and units
    differ or a unit is out of range, :class:`~mei.errors.ModelError` when the model does not
    return ``(B, N)``.
    """
    batch, chosen = _meis_and_units(meis, units)
    step = len(batch) if batch_size is None else int(batch_size)
    if step < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}", argument="batch_size")
    on = _device_of(model, device)
    kwargs = dict(forward_kwargs or {})
    scores = []
    with _Evaluating(model):
        for start in range(0, len(batch), step):
            output = _responses(model(batch[start : start + step].to(on), **kwargs), "score_meis")
            if start == 0:
                _check_units(chosen, output.shape[1])
            rows = torch.arange(output.shape[0], device=output.device)
            index = torch.tensor(chosen[start : start + step], device=output.device)
            scores.append(output[rows, index].detach().cpu())
    return torch.cat(scores)


def _stack_meis(meis: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(meis, Tensor):
        batch = meis
    elif isinstance(meis, Sequence) and meis and all(isinstance(m, Tensor) for m in meis):
        batch = torch.cat([m if m.dim() > 1 and len(m) == 1 else m.unsqueeze(0) for m in meis])
    else:
        raise InputError(
            f"meis must be a tensor (U, C, ...) or a sequence of MEI tensors, got {shorten(meis)}",
            argument="meis",
        )
    if batch.dim() < 3 or len(batch) == 0:
        raise InputError(
            "meis must be a batch (U, C, ...) of at least one MEI with channels and pixels "
            f"(or frames), got shape {tuple(batch.shape)}",
            argument="meis",
        )
    return batch.detach()


# --------------------------------------------------------------------------- natural images
def _loader(dataloaders: Dataloaders | Any, tier: str, data_key: str | None) -> tuple[Any, str]:
    """The loader of ``tier`` and ``data_key`` and a name for it in messages."""
    if not isinstance(dataloaders, Mapping):
        if dataloaders is None or isinstance(dataloaders, (str, bytes)):
            raise InputError(
                "dataloaders must be {tier: {data_key: loader}} (NNFabrik's form) or one "
                f"loader, got {shorten(dataloaders)}",
                argument="dataloaders",
            )
        return dataloaders, "the loader"
    if tier not in dataloaders:
        raise InputError(
            f"dataloaders has no tier {tier!r}; it has {sorted(map(str, dataloaders))}",
            argument="tier",
        )
    loaders = dataloaders[tier]
    if not isinstance(loaders, Mapping):
        return loaders, f"dataloaders[{tier!r}]"
    if data_key is None:
        if len(loaders) != 1:
            raise InputError(
                f"dataloaders[{tier!r}] holds {len(loaders)} loaders "
                f"{sorted(map(str, loaders))}: name one with data_key=",
                argument="data_key",
            )
        data_key = next(iter(loaders))
    if data_key not in loaders:
        raise InputError(
            f"dataloaders[{tier!r}] has no loader {data_key!r}; it has {sorted(map(str, loaders))}",
            argument="data_key",
        )
    return loaders[data_key], f"dataloaders[{tier!r}][{data_key!r}]"


def _data_key(forward_kwargs: Mapping[str, Any] | None) -> str | None:
    """The session a model is called for (``forward_kwargs["data_key"]``), if any."""
    key = (forward_kwargs or {}).get("data_key")
    return key if isinstance(key, str) else None


def _images_of(batch: Any, where: str) -> Tensor:
    """The input images of one batch: a tensor, the first element of a tuple, or the
    ``inputs``/``images`` field of a dict or namedtuple."""
    if hasattr(batch, "_asdict"):
        batch = batch._asdict()
    if isinstance(batch, Mapping):
        for name in ("inputs", "images"):
            if name in batch:
                batch = batch[name]
                break
        else:
            batch = next(iter(batch.values()), None)
    elif isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    if not isinstance(batch, Tensor):
        raise InputError(
            f"cannot find the images in a batch of {where}: expected a tensor, a tuple whose "
            "first element is the images, or a dict with 'inputs' or 'images'; got "
            f"{type(batch).__name__}",
            argument="dataloaders",
        )
    return batch


def _dataset_indices(loader: Any) -> list[int] | None:
    """The dataset indices ``loader`` draws from (sorted), or ``None`` for a loader without a
    map-style dataset."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return None
    sampler = getattr(loader, "sampler", None)
    indices = getattr(sampler, "indices", None)  # SubsetRandomSampler, NNFabrik's samplers
    if indices is None:
        if sampler is None or isinstance(
            sampler, (SequentialSampler, RandomSampler, WeightedRandomSampler)
        ):
            indices = range(len(dataset))  # the whole dataset (even if drawn with replacement)
        else:  # a lab's own sampler: the indices one pass draws
            indices = list(sampler)
    return sorted({int(i) for i in indices})


def _indexed_batches(loader: Any, where: str) -> Iterator[tuple[Tensor, Tensor]]:
    """``(dataset indices, images)`` batch by batch, in the order of the indices."""
    indices = _dataset_indices(loader)
    size = getattr(loader, "batch_size", None) or DEFAULT_BATCH_SIZE
    if indices is None:
        position = 0
        for batch in loader:
            images = _images_of(batch, where)
            yield torch.arange(position, position + len(images)), images
            position += len(images)
        return
    collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
    for start in range(0, len(indices), size):
        chunk = indices[start : start + size]
        batch = collate([loader.dataset[i] for i in chunk])
        yield torch.tensor(chunk), _images_of(batch, where)


def top_natural_images(
    model: nn.Module,
    dataloaders: Dataloaders | Any,
    units: Sequence[int] | None = None,
    *,
    k: int = 5,
    tier: str = "train",
    data_key: str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    device: Any = None,
    progress: bool | None = None,
) -> NaturalImages:
    """The ``k`` most exciting images of the dataset for each of ``units`` (default: every
    output unit) of ``model``, from one pass over the loader of ``tier`` and ``data_key``.

    ``dataloaders`` is NNFabrik's ``{tier: {data_key: loader}}`` (or one loader); with several
    loaders in the tier, ``data_key`` (default: ``forward_kwargs["data_key"]``) names one.
    The images are read in batches (the loader's ``batch_size``) and go to ``device`` (default:
    the model's); only each unit's running top ``k`` is kept. Raises
    :class:`~mei.errors.InputError` naming the argument when the loaders yield no images,
    ``k`` is not a positive integer or a unit is out of range (checked on the first batch,
    before the rest is read). ``progress``: a bar of the images read (default: on a terminal,
    unless ``MEI_QUIET`` is set).
    """
    k = _check_k(k)
    kwargs = dict(forward_kwargs or {})
    loader, where = _loader(dataloaders, tier, data_key or _data_key(kwargs))
    on = _device_of(model, device)
    chosen: list[int] | None = None if units is None else _check_units(units)
    best_responses: Tensor | None = None
    best_indices: Tensor | None = None
    n_images = 0
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if isinstance(dataset, Sized) else None
    bar_settings = dict(total=total, desc="natural images", unit="image", leave=False)
    with _Evaluating(model), progress_bar(enabled=progress, **bar_settings) as bar:
        for indices, images in _indexed_batches(loader, where):
            if len(images) == 0:
                continue
            if bar is not None:
                bar.update(len(images))
            output = _responses(model(images.to(on), **kwargs), f"the images of {where}")
            if chosen is None:
                chosen = list(range(output.shape[1]))
            elif n_images == 0:
                _check_units(chosen, output.shape[1])
            responses = output[:, chosen].T  # (U, B)
            batch_indices = indices.to(responses.device).expand(len(chosen), -1)
            if best_responses is not None and best_indices is not None:
                responses = torch.cat([best_responses, responses], dim=1)
                batch_indices = torch.cat([best_indices, batch_indices], dim=1)
            # stable: on ties the earlier (lower) index stays first
            order = torch.sort(responses, dim=1, descending=True, stable=True).indices[:, :k]
            best_responses = responses.gather(1, order)
            best_indices = batch_indices.gather(1, order)
            n_images += len(images)
    if best_responses is None or best_indices is None or chosen is None:
        raise InputError(f"{where} yields no images", argument="dataloaders")
    if n_images < k:
        raise InputError(f"{where} holds {n_images} images, fewer than k = {k}", argument="k")
    return NaturalImages(chosen, best_indices.cpu(), best_responses.detach().cpu(), n_images)


def read_images(
    dataloaders: Dataloaders | Any,
    indices: Tensor | Sequence[int],
    *,
    tier: str = "train",
    data_key: str | None = None,
) -> Tensor:
    """The images at dataset ``indices`` (any shape) of the loader of ``tier`` and
    ``data_key``: ``(*indices.shape, C, ...)``, e.g. a unit's best natural images from
    :func:`top_natural_images`. An index the loader does not hold raises
    :class:`~mei.errors.InputError`."""
    wanted = torch.as_tensor(indices, dtype=torch.long)
    loader, where = _loader(dataloaders, tier, data_key)
    flat = wanted.flatten().tolist()
    needed = set(flat)
    found: dict[int, Tensor] = {}
    dataset_indices = _dataset_indices(loader)
    if dataset_indices is not None:
        missing = sorted(needed - set(dataset_indices))
        if missing:
            raise InputError(f"{where} holds no image at index {missing[0]}", argument="indices")
        collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
        for i in needed:
            found[i] = _images_of(collate([loader.dataset[i]]), where)[0]
    else:
        for batch_indices, images in _indexed_batches(loader, where):
            for i, image in zip(batch_indices.tolist(), images, strict=True):
                if i in needed:
                    found[i] = image
        missing = sorted(needed - set(found))
        if missing:
            raise InputError(f"{where} holds no image at index {missing[0]}", argument="indices")
    if not flat:
        return torch.empty((*wanted.shape, 0))
    return torch.stack([found[i] for i in flat]).reshape(*wanted.shape, *found[flat[0]].shape)


def check_mei_shape(
    meis: Tensor | Sequence[Tensor],
    dataloaders: Dataloaders | Any,
    *,
    tier: str = "train",
    data_key: str | None = None,
) -> None:
    """Raise :class:`~mei.errors.InputError` unless the MEIs have the shape of the images of
    the loader of ``tier`` and ``data_key`` (or that loader yields no images); reads one
    batch."""
    batch = _stack_meis(meis)
    loader, where = _loader(dataloaders, tier, data_key)
    first = next(_indexed_batches(loader, where), None)
    if first is None or len(first[1]) == 0:
        raise InputError(f"{where} yields no images", argument="dataloaders")
    if tuple(first[1].shape[1:]) != tuple(batch.shape[1:]):
        raise InputError(
            f"the MEIs are of shape {tuple(batch.shape[1:])}, the images of {where} of shape "
            f"{tuple(first[1].shape[1:])}: the MEIs must have the dataset's image shape",
            argument="meis",
        )


# --------------------------------------------------------------------------- both
def ensemble_members(model: nn.Module) -> dict[str, nn.Module]:
    """The members of an :class:`~mei.modules.EnsembleModel` by name (``"member 0"``, ...), to
    score an ensemble's MEIs on each member alone; any other model as ``{"model": model}``."""
    if isinstance(model, EnsembleModel):
        return {f"member {i}": m for i, m in enumerate(model.members)}
    return {"model": model}


def _named(models: Any) -> dict[str, Any]:
    if isinstance(models, nn.Module):
        return {"model": models}
    if isinstance(models, Mapping):
        named = {str(name): m for name, m in models.items()}
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        named = {str(i): m for i, m in enumerate(models)}
    else:
        raise InputError(
            f"models must be a dict of name: model, a list of models or one model, got "
            f"{shorten(models)}",
            argument="models",
        )
    if not named:
        raise InputError("models is empty: give at least one validating model", argument="models")
    for name, model in named.items():
        if not callable(model):
            raise InputError(
                f"models[{name!r}] is not a model: {shorten(model)}", argument="models"
            )
    return named


def validate_meis(
    models: Mapping[str, nn.Module] | Sequence[nn.Module] | nn.Module,
    meis: Tensor | Sequence[Tensor],
    units: Sequence[int],
    dataloaders: Dataloaders | Any,
    *,
    k: int = 5,
    tier: str = "train",
    data_key: str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    device: Any = None,
) -> ValidationResult:
    """Score MEI ``i`` on unit ``units[i]`` of every validating model and compare it with
    the unit's ``k`` most exciting natural images of the dataset on that model.

    ``models``: ``{name: model}`` (or a list, named ``"0"``, ``"1"``, ...; or one model),
    each ``(B, C, ...) -> (B, N)`` with the same units; ``meis`` ``(U, C, ...)``. Per model,
    the MEIs go through it in one forward pass (:func:`score_meis`) and the loader of
    ``tier``/``data_key`` once for all units (:func:`top_natural_images`). Bad input (unit
    out of range, as many units as MEIs, a model that returns no ``(B, N)``, loaders without
    images) raises before any model reads the dataset.
    """
    named = _named(models)
    batch, chosen = _meis_and_units(meis, units)
    k = _check_k(k)
    check_mei_shape(batch, dataloaders, tier=tier, data_key=data_key or _data_key(forward_kwargs))
    # every model scores the MEIs first: a unit out of range fails before the dataset is read
    scores = [
        score_meis(m, batch, chosen, forward_kwargs=forward_kwargs, device=device)
        for m in named.values()
    ]
    natural = [
        top_natural_images(
            m,
            dataloaders,
            sorted(set(chosen)),
            k=k,
            tier=tier,
            data_key=data_key,
            forward_kwargs=forward_kwargs,
            device=device,
        )
        for m in named.values()
    ]
    column = {u: i for i, u in enumerate(sorted(set(chosen)))}
    rows = torch.tensor([column[u] for u in chosen])
    return ValidationResult(
        models=list(named),
        units=chosen,
        mei_responses=torch.stack(scores),
        natural_indices=torch.stack([n.indices[rows] for n in natural]),
        natural_responses=torch.stack([n.responses[rows] for n in natural]),
        n_images=natural[0].n_images,
        meis=batch.cpu(),
    )
