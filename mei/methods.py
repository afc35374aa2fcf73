"""Method functions: a config and a model in, ``(mei, score, output)`` out.

:func:`gradient_ascent` is the method the DataJoint tables call (``method_fn``);
:func:`gradient_ascent_units` optimizes many units of one model in batched runs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from .config import ComponentSpec, MethodConfig, check_seed, resolve_config, validate_config
from .errors import ComponentError, ConfigError, InputError
from .modules import ConstrainedOutputModel, FirstCallCheck, UnitPerElement
from .optimization import MEI, optimize
from .progress import progress_bar
from .tracking import Tracker
from .typing import Dataloaders, InitialGuess, Model

logger = logging.getLogger(__name__)

T = TypeVar("T")

Result = tuple[Tensor, float, dict[str, dict[str, list[Any]]]]


def get_input_shape(dataloaders: Dataloaders) -> tuple[int, ...]:
    """The input shape ``(1, C, H, W)`` of an NNFabrik-style loader dict.

    Reads the first batch of the first loader of the ``"train"`` tier (or of the first tier):
    its first element, or its ``inputs`` / ``images`` field.
    """
    if not isinstance(dataloaders, Mapping) or not dataloaders:
        raise InputError(
            f"dataloaders must be a dict such as {{'train': {{data_key: loader}}}}, got "
            f"{type(dataloaders).__name__}; or pass shape=",
            argument="dataloaders",
        )
    name = "train" if "train" in dataloaders else next(iter(dataloaders))
    tier, where = dataloaders[name], f"dataloaders[{name!r}]"
    if isinstance(tier, Mapping):
        if not tier:
            raise InputError(
                f"{where} is empty: expected {{data_key: loader}} with at least one loader; "
                "or pass shape=",
                argument="dataloaders",
            )
        data_key = next(iter(tier))
        tier, where = tier[data_key], f"{where}[{data_key!r}]"
    none = object()
    batch = next(iter(tier), none)
    if batch is none:
        raise InputError(
            f"{where} yields no batch to read the input shape from; or pass shape=",
            argument="dataloaders",
        )
    for name in ("inputs", "images"):
        if isinstance(batch, Mapping) and name in batch:
            batch = batch[name]
            break
        if hasattr(batch, name) and not isinstance(batch, Tensor):
            batch = getattr(batch, name)
            break
    else:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
    if not isinstance(batch, Tensor):
        raise ValueError(f"cannot find the inputs in a batch of type {type(batch).__name__}")
    return (1, *batch.shape[1:])


def _normalize_shape(dataloaders: Dataloaders, shape: Sequence[int] | None) -> tuple[int, ...]:
    if shape is None:
        return get_input_shape(dataloaders)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (1, C, ...) with positive sizes, got {shape}")
    return (1, *shape[1:])


def _accepts_generator(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "generator" or p.kind is p.VAR_KEYWORD for p in params)


def draw_initial(
    initial: InitialGuess | Callable[..., Tensor], shape: tuple[int, ...], seed: int
) -> Tensor:
    """Element start for ``seed``: drawn on the CPU from a generator seeded with ``seed``."""
    if _accepts_generator(initial):
        guess = initial(*shape, generator=torch.Generator().manual_seed(int(seed)))
    else:  # components written for the original library draw from the global generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            guess = initial(*shape)
    if not isinstance(guess, Tensor) or tuple(guess.shape) != shape:
        got = tuple(guess.shape) if isinstance(guess, Tensor) else type(guess).__name__
        raise ComponentError(
            f"initial guess {initial!r} must return a tensor of shape {shape}, got {got}"
        )
    return guess.detach()


@contextlib.contextmanager
def _prepared_model(model: Model, device: torch.device) -> Iterator[None]:
    """Eval mode and frozen parameters for the run; both restored afterwards.

    The model is moved to ``device`` if its parameters are elsewhere (it stays there).
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    if any(p.device != device for p, _ in grads):
        model.to(device)
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _build_seeded(spec: ComponentSpec[T] | None, seeds: Sequence[int]) -> T | None:
    """Build ``spec``'s component; a random one draws element ``b``'s numbers from
    ``seeds[b] + 1``."""
    if spec is None:
        return None
    component = spec.build()
    if hasattr(component, "reseed"):
        component.reseed([s + 1 for s in seeds])
    return component


def run_batch(
    method: MethodConfig,
    model: Model,
    shape: tuple[int, ...],
    seeds: Sequence[int],
    *,
    progress: bool | None = None,
    description: str = "MEI",
) -> list[Result]:
    """Optimize ``len(seeds)`` MEIs together; ``model`` maps ``(B, ...)`` to ``(B,)`` with
    element ``b`` responding as its own MEI's unit. Element ``b`` starts from ``seeds[b]``.
    """
    device = method.device
    seeds = [check_seed(s, f"seeds[{b}]") for b, s in enumerate(seeds)]
    initial = method.initial.build()
    start = torch.cat([draw_initial(initial, shape, s) for s in seeds])
    x = start.to(device).requires_grad_(True)
    optimizer = method.optimizer.build(params=[x])
    transform = _build_seeded(method.transform, seeds)
    regularization = _build_seeded(method.regularization, seeds)
    precondition = _build_seeded(method.precondition, seeds)
    postprocessing = _build_seeded(method.postprocessing, seeds)
    stoppers = [method.stopper.build() for _ in seeds]
    trackers = [Tracker(**{s.path: s.build() for s in method.objectives}) for _ in seeds]
    total = getattr(stoppers[0], "num_iterations", None)
    with (
        _prepared_model(model, device),
        torch.random.fork_rng(devices=_rng_devices(device)),
        progress_bar(
            total=total, desc=description, unit="step", enabled=progress, leave=False
        ) as bar,
    ):
        torch.manual_seed(seeds[0])
        mei = MEI(
            FirstCallCheck(model),
            x,
            optimizer,
            transform=transform,
            regularization=regularization,
            precondition=precondition,
            postprocessing=postprocessing,
        )
        scores, inputs = optimize(mei, stoppers, trackers, progress=bar)
    inputs = inputs.cpu()
    return [(inputs[b : b + 1].clone(), scores[b], trackers[b].log) for b in range(len(seeds))]


def gradient_ascent(
    dataloaders: Dataloaders,
    model: Model,
    config: Mapping[str, Any],
    seed: int,
    *,
    shape: Sequence[int] | None = None,
    progress: bool | None = None,
) -> Result:
    """Find the MEI of ``model`` (inputs ``(B, ...)`` -> one response per input).

    ``dataloaders`` give the input shape (NNFabrik-style ``{"train": {key: loader}}``), or pass
    ``shape``. ``config`` is a method config (see :mod:`mei.config`), validated before the first
    step; ``seed`` seeds the initial guess and all randomness of the run. Returns the MEI (CPU
    tensor, batch of one), its score (the model's evaluation of the returned MEI) and the
    tracker's log ``{objective path: {"times": [...], "values": [...]}}``.
    """
    seed = check_seed(seed)
    method = resolve_config(config)
    [result] = run_batch(
        method, model, _normalize_shape(dataloaders, shape), [seed], progress=progress
    )
    return result


gradient_ascent.validate_config = validate_config  # type: ignore[attr-defined]


def gradient_ascent_units(
    dataloaders: Dataloaders,
    model: nn.Module,
    config: Mapping[str, Any],
    seed: int | Sequence[int],
    units: Sequence[int],
    *,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    target_fn: Callable[[Tensor], Tensor] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> list[Result]:
    """MEIs for many output units of one model: ``model`` maps ``(B, ...)`` to ``(B, N)``.

    Returns one ``(mei, score, output)`` per unit, in order; each equals what
    :func:`gradient_ascent` gives for ``ConstrainedOutputModel(model, unit)`` with the same
    seed and config. ``seed`` is one seed for all units or one per unit. Units are optimized
    ``batch_size`` at a time (default: all at once). Optimizers that couple tensor elements
    (anything not in :data:`mei.config.ELEMENTWISE_OPTIMIZERS`, e.g. LBFGS) cannot share a
    run; their units are optimized one by one.
    """
    method = resolve_config(config)
    shape = _normalize_shape(dataloaders, shape)
    units = [int(u) for u in units]
    if hasattr(seed, "__len__"):  # a sequence, array or tensor of seeds
        seeds = [check_seed(s, f"seed[{i}]") for i, s in enumerate(cast(Sequence[int], seed))]
    else:
        seeds = [check_seed(seed)] * len(units)
    if len(seeds) != len(units):
        raise ValueError(f"got {len(seeds)} seeds for {len(units)} units")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if not method.batchable:
        logger.info(
            "optimizer %s couples elements: optimizing units one by one", method.optimizer.path
        )
        batch_size = 1
    size = batch_size or len(units) or 1
    results: list[Result] = []
    for start in range(0, len(units), size):
        chunk, chunk_seeds = units[start : start + size], seeds[start : start + size]
        wrapped: nn.Module
        if len(chunk) == 1:
            wrapped = ConstrainedOutputModel(model, chunk[0], target_fn, dict(forward_kwargs or {}))
        else:
            wrapped = UnitPerElement(model, chunk, target_fn, forward_kwargs)
        results += run_batch(
            method,
            wrapped,
            shape,
            chunk_seeds,
            progress=progress,
            description=f"MEIs {start}-{start + len(chunk) - 1}",
        )
    return results


__all__ = [
    "gradient_ascent",
    "gradient_ascent_units",
    "get_input_shape",
    "run_batch",
    "ConfigError",
]

gradient_ascent.batched = gradient_ascent_units  # type: ignore[attr-defined]
"""Batched populate (:mod:`mei.populate`) calls this for keys that can share one run."""
