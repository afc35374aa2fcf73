"""Exciting variants: several inputs that each drive a neuron to a fixed fraction of its MEI's
response while being as different from each other as possible (Ding et al., Nature
Neuroscience 2026, "varied exciting inputs"; the preprint's "diverse exciting inputs").

The name is spelled out on purpose: the sinzlab/mei fork's ``"mei_class_name": "VEI"`` is a
*variance*-exciting input (:class:`mei.modules.VEIObjective`), something else; here nothing is
called ``VEI``.

For one neuron with MEI response ``R`` (the *reference*), :func:`exciting_variants` optimizes
``N`` images ``x_1 .. x_N`` jointly, maximizing

    ``diversity_index(x_1 .. x_N) - weight * mean_i max(0, fraction - r(x_i) / R)``

under the config's usual constraints (postprocessing such as ``ChangeNorm`` or ``ClipRange``
after every step, preconditioning, transforms): the first term pushes the images apart, the
second (a hinge penalty) pulls an image back as soon as its response ``r(x_i)`` falls below
``fraction * R``. The hinge is an *exact* penalty: above the constraint it is zero (the images
are free to spread), and for a ``weight`` larger than the constraint's Lagrange multiplier a
constrained optimum is a stationary point of the penalized objective, so the images end on
the constraint rather than a fixed distance below it, as a squared penalty would leave them.
A projection would need the set of images with ``r(x) >= fraction * R``, which a nonlinear
model does not give. With a fixed step the responses move around the boundary by about one
step; :func:`exciting_variants` reports each image's response as a fraction of ``R``.

Diversity is measured in one of two spaces (``space``):

- ``"pixels"``: the mean Euclidean distance between the images over the ``N(N-1)/2`` pairs,
  ``d = mean_{i<j} |x_i - x_j|``;
- ``"responses"``: the mean cosine distance ``1 - cos(f(x_i), f(x_j))`` between the
  population responses ``f(x)`` of the model (all its units; the paper's neuronal space).

The **diversity index** divides ``d`` by the largest mean pairwise distance that any ``N``
points of the same size can have, so that it lies in ``[0, 1]``: 0 when all images are the
same, 1 when they are as different as ``N`` images can be. For pixels, with
``s = sqrt(mean_i |x_i|^2)`` the root mean square norm of the images, that largest distance
is ``s * sqrt(2N / (N - 1))`` (from ``sum_{i<j} |x_i - x_j|^2 = N sum_i |x_i|^2 - |sum_i
x_i|^2``, reached by a regular simplex centred on 0); for responses it is ``N / (N - 1)``
(unit vectors summing to 0). The index does not change when all images are scaled together.
For a neuron without any invariance, a linear neuron under a fixed L2 norm, the best possible
pixel index is ``sqrt(1 - fraction**2)`` (the images lie on a cone around the neuron's
filter); an invariant neuron, a phase-invariant complex cell, goes well above it.

:func:`exciting_variants_units` does the same for many neurons of one model in batched runs;
each neuron's images equal those of its own run.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from .config import MethodConfig, check_seed, resolve_config, settings_entry
from .errors import ConfigError, InputError, ModelError, list_names, shorten
from .methods import get_input_shape, prepared_model, run_batch
from .modules import ConstrainedOutputModel
from .typing import Dataloaders

__all__ = [
    "SPACES",
    "STARTS",
    "VARIANTS_DEFAULTS",
    "ExcitingVariantsObjective",
    "diversity_index",
    "exciting_variants",
    "exciting_variants_units",
    "mean_pairwise_distance",
    "validate_variants_config",
    "variants_settings",
]

#: The ``"variants"`` entry of a config for :func:`exciting_variants`, with its defaults.
VARIANTS_DEFAULTS: dict[str, Any] = {
    "n_variants": 8,
    "fraction": 0.85,
    "space": "pixels",
    "weight": 10.0,
    "start": "mei",
    "start_noise": 0.1,
}
#: ``space``: where the distances between the variants are measured.
SPACES = ("pixels", "responses")
#: ``start``: ``"mei"``, the MEI plus noise of ``start_noise`` times its norm (each variant
#: its own); ``"initial"``, the config's initial guess, as for an MEI.
STARTS = ("mei", "initial")

Result = tuple[Tensor, float, dict[str, Any]]


# --- the diversity of a set of inputs --------------------------------------------------------


def _pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    first, second = torch.triu_indices(n, n, offset=1, device=device)
    return first, second


def mean_pairwise_distance(features: Tensor, space: str = "pixels") -> Tensor:
    """The mean distance between the ``N`` items of each group, ``(B, N, ...) -> (B,)``, over
    the ``N(N-1)/2`` pairs: Euclidean for ``space="pixels"``, cosine distance ``1 - cos`` for
    ``"responses"`` (population response vectors). Differentiable (also where two items
    coincide, where the gradient is 0)."""
    _check_space(space)
    if features.dim() < 2 or features.shape[1] < 2:
        raise ValueError(f"need groups of at least two items (B, N, ...), got {features.shape}")
    flat = features.flatten(2)
    first, second = _pairs(flat.shape[1], flat.device)
    if space == "pixels":
        diff = flat[:, first] - flat[:, second]  # (B, P, D)
        squared = (diff * diff).sum(-1)
        tiny = torch.finfo(flat.dtype).tiny
        return torch.sqrt(squared + tiny).mean(-1)
    unit = nn.functional.normalize(flat, dim=-1, eps=1e-12)
    cosine = (unit[:, first] * unit[:, second]).sum(-1)
    return (1 - cosine).mean(-1)


def diversity_index(features: Tensor, space: str = "pixels") -> Tensor:
    """The diversity index of each group of ``N`` items, ``(B, N, ...) -> (B,)``, in
    ``[0, 1]``: :func:`mean_pairwise_distance` divided by the largest mean pairwise distance
    any ``N`` items of their size can have (see the module docstring): for pixels
    ``rms * sqrt(2N / (N - 1))`` with ``rms = sqrt(mean_i |x_i|^2)``, for responses
    ``N / (N - 1)``. 0: all items equal (or all zero); 1: a regular simplex."""
    distance = mean_pairwise_distance(features, space)
    n = features.shape[1]
    if space == "responses":
        return distance * ((n - 1) / n)
    flat = features.flatten(2)
    rms = torch.sqrt((flat * flat).sum(-1).mean(-1))
    largest = rms * math.sqrt(2 * n / (n - 1))
    return distance / largest.clamp_min(torch.finfo(flat.dtype).tiny)


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"space must be one of {list_names(SPACES)}, got {shorten(space)}")


# --- the objective ---------------------------------------------------------------------------


class ExcitingVariantsObjective(nn.Module):
    """What a batch of exciting-variant sets ascends, ``(B * N, ...) -> (B,)``.

    ``model`` maps inputs to the responses of a population, ``(B, K)`` (a ``(B,)`` output is
    one unit); element ``b`` of the batch is ``n_variants`` consecutive inputs for unit
    ``units[b]`` with reference (MEI) response ``references[b] > 0``. Its value is
    ``diversity_index - weight * mean_i max(0, fraction - r_i / reference)`` (see
    :mod:`mei.variants`), each element's from its own inputs only. ``forward_kwargs`` are
    passed to ``model``.
    """

    inner_models: tuple[str, ...] = ("model",)
    _unit_rows: Tensor
    _references: Tensor

    def __init__(
        self,
        model: nn.Module,
        units: Sequence[int],
        references: Sequence[float],
        *,
        n_variants: int,
        fraction: float,
        weight: float,
        space: str = "pixels",
        forward_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        _check_space(space)
        if len(units) != len(references) or not units:
            raise ValueError(f"need one reference per unit, got {len(references)} for {units!r}")
        if n_variants < 2:
            raise ValueError(f"n_variants must be >= 2, got {n_variants!r}")
        self.model = model
        self.units = [int(u) for u in units]
        self.references = [float(r) for r in references]
        self.n_variants = int(n_variants)
        self.fraction = float(fraction)
        self.weight = float(weight)
        self.space = space
        self.forward_kwargs = dict(forward_kwargs) if forward_kwargs else {}
        rows = torch.tensor(self.units).repeat_interleave(self.n_variants)
        self.register_buffer("_unit_rows", rows, persistent=False)
        self.register_buffer("_references", torch.tensor(self.references), persistent=False)

    def measure(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The responses of the target units ``(B, N)`` and the features whose diversity
        counts ``(B, N, ...)`` (the inputs, or the population responses)."""
        expected = len(self.units) * self.n_variants
        if len(x) != expected:
            raise ValueError(
                f"expected {len(self.units)} x {self.n_variants} inputs, got {len(x)} inputs"
            )
        output = self.model(x, **self.forward_kwargs)
        if not isinstance(output, Tensor):
            raise TypeError(f"the model returned a {type(output).__name__}, not a tensor")
        if output.dim() == 1:
            output = output[:, None]
        if output.dim() != 2:
            raise ValueError(
                f"the model must return responses (B, n_units), got {tuple(output.shape)}"
            )
        rows = self._unit_rows
        if rows.device != output.device:  # moved once, not every step
            self._unit_rows = rows = rows.to(output.device)
            self._references = self._references.to(output.device)
        responses = output.gather(1, rows[:, None]).reshape(len(self.units), self.n_variants)
        source = x if self.space == "pixels" else output
        features = source.reshape(len(self.units), self.n_variants, *source.shape[1:])
        return responses, features

    def forward(self, x: Tensor) -> Tensor:
        responses, features = self.measure(x)
        ratio = responses / self._references.to(responses.dtype)[:, None]
        shortfall = torch.relu(self.fraction - ratio).mean(1)
        return diversity_index(features, self.space) - self.weight * shortfall

    def extra_repr(self) -> str:
        return (
            f"units={self.units!r}, references={self.references!r}, "
            f"n_variants={self.n_variants}, fraction={self.fraction}, weight={self.weight}, "
            f"space={self.space!r}"
        )


# --- config ----------------------------------------------------------------------------------


def _number(settings: dict[str, Any], name: str, low: float, high: float | None = None) -> None:
    value = settings[name]
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(float(value))
        and float(value) > low
        and (high is None or float(value) <= high)
    )
    if not ok:
        bounds = f"> {low}" if high is None else f"in ({low}, {high}]"
        raise ConfigError(
            f"{name!r} must be a finite number {bounds}, got {shorten(value)}", key="variants"
        )
    settings[name] = float(value)


def variants_settings(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` split into its ``"variants"`` settings (checked, defaults filled in, see
    :data:`VARIANTS_DEFAULTS`) and the rest, a method config as for
    :func:`~mei.methods.gradient_ascent`. Raises :class:`~mei.errors.ConfigError` naming the
    key: ``variants`` for a bad setting, or the method config's key it cannot take
    (``n_meis``: the number of images is ``n_variants``; ``mei_class_name``, ``inhibitory``,
    ``transparency``: other kinds of MEI)."""
    settings = settings_entry(config, "variants", VARIANTS_DEFAULTS)
    n = settings["n_variants"]
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ConfigError(f"'n_variants' must be an integer >= 2, got {shorten(n)}", key="variants")
    settings["n_variants"] = int(n)
    _number(settings, "fraction", 0.0, 1.0)
    _number(settings, "weight", 0.0)
    _number(settings, "start_noise", 0.0)
    for name, allowed in (("space", SPACES), ("start", STARTS)):
        if settings[name] not in allowed:
            raise ConfigError(
                f"{name!r} must be one of {list_names(allowed)}, got {shorten(settings[name])}",
                key="variants",
            )
    rest = {k: v for k, v in config.items() if k != "variants"}
    if rest.get("n_meis", 1) != 1:
        raise ConfigError(
            "the number of images is the variants' n_variants: n_meis must be 1 (or left out)",
            key="n_meis",
        )
    for name, plain in (("mei_class_name", "MEI"), ("inhibitory", False), ("transparency", False)):
        if rest.get(name, plain) not in (plain, None):
            raise ConfigError(
                f"exciting variants are of plain MEIs: {name} must be {plain!r} (or left out), "
                f"got {shorten(rest[name])}",
                key=name,
            )
    return settings, rest


def validate_variants_config(config: Mapping[str, Any], *, check_device: bool = True) -> None:
    """Raise :class:`~mei.errors.ConfigError` unless ``config`` is a config for
    :func:`exciting_variants`: a method config plus an optional ``"variants"`` entry."""
    _, rest = variants_settings(config)
    resolve_config(rest, check_device=check_device)


# --- the method functions --------------------------------------------------------------------


def _single_unit(model: nn.Module) -> tuple[nn.Module, int, dict[str, Any]]:
    """``(population, unit, forward_kwargs)`` of a one-neuron model: the model a
    ``ConstrainedOutputModel(population, unit)`` selects from; any other model is its own
    population of one unit (unit 0)."""
    if (
        isinstance(model, ConstrainedOutputModel)
        and isinstance(model.constraint, numbers.Integral)
        and not model.has_target_fn
    ):
        return model.model, int(model.constraint), dict(model.forward_kwargs)
    return _OneResponse(model), 0, {}


class _OneResponse(nn.Module):
    """A neuron's model that is not a ``ConstrainedOutputModel`` of one int unit: its output
    must be one response per input, ``(B,)`` or ``(B, 1)``."""

    inner_models: tuple[str, ...] = ("model",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        output = self.model(x, **kwargs)
        if not isinstance(output, Tensor) or output.shape not in ((len(x),), (len(x), 1)):
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ModelError(
                f"the neuron's model must return one response per input, ({len(x)},) or "
                f"({len(x)}, 1), got {got}: pass ConstrainedOutputModel(model, unit) with an "
                "int unit and no target_fn, or a model of one neuron"
            )
        return output.reshape(len(x), 1)


def _checked_meis(meis: Sequence[Tensor | None] | None, count: int) -> list[Tensor | None]:
    if meis is None:
        return [None] * count
    if len(meis) != count:
        raise InputError(f"got {len(meis)} MEIs for {count} units", argument="meis")
    checked: list[Tensor | None] = []
    for k, mei in enumerate(meis):
        if mei is None:
            checked.append(None)
            continue
        if not isinstance(mei, Tensor) or mei.dim() < 2 or len(mei) != 1:
            got = tuple(mei.shape) if isinstance(mei, Tensor) else type(mei).__name__
            raise InputError(
                f"an MEI must be one image (1, C, ...), got {got} for unit {k}", argument="mei"
            )
        checked.append(mei.detach().float().cpu())
    return checked


def _references_of(
    population: nn.Module,
    forward_kwargs: Mapping[str, Any],
    units: Sequence[int],
    references: Sequence[object],
    meis: Sequence[Tensor | None],
    method: MethodConfig,
) -> list[float]:
    """Each unit's reference: the one given, else the model's response to its MEI."""
    found: list[float] = []
    for unit, reference, mei in zip(units, references, meis, strict=True):
        if reference is None:
            if mei is None:
                raise InputError(
                    "pass the MEI's response as reference= (or the MEI as mei=, whose response "
                    "is then used)",
                    argument="reference",
                )
            with torch.no_grad(), prepared_model(population, method.device):
                output = population(mei.to(method.device), **forward_kwargs)
            output = output if output.dim() > 1 else output[:, None]
            reference = float(output[0, unit])
        if (
            isinstance(reference, bool)
            or not isinstance(reference, numbers.Real)
            or not math.isfinite(float(reference))
            or not float(reference) > 0
        ):
            raise InputError(
                f"the reference (the MEI's response) of unit {unit} must be a positive finite "
                f"number: the variants drive the unit to a fraction of it; got "
                f"{shorten(reference)}",
                argument="reference",
            )
        found.append(float(reference))
    return found


def _starts_from_meis(
    meis: Sequence[Tensor | None], n_variants: int, noise: float
) -> Callable[[Tensor], Tensor]:
    """Variant ``i`` of element ``b`` starts at ``mei_b + noise * |mei_b| * u_bi``, ``u_bi``
    the drawn start ``i`` of ``b`` scaled to norm 1."""

    def start_from(drawn: Tensor) -> Tensor:
        rows = []
        for b, mei in enumerate(meis):
            assert mei is not None  # checked by the caller
            block = drawn[b * n_variants : (b + 1) * n_variants]
            if tuple(block.shape[1:]) != tuple(mei.shape[1:]):
                raise InputError(
                    f"the MEI has shape {tuple(mei.shape)}, the run's inputs "
                    f"{(1, *block.shape[1:])}",
                    argument="mei",
                )
            norms = block.flatten(1).norm(dim=1).clamp_min(1e-12)
            direction = block / norms.reshape(-1, *[1] * (block.dim() - 1))
            rows.append(mei + noise * mei.norm() * direction)
        return torch.cat(rows)

    return start_from


def _run(
    method: MethodConfig,
    settings: Mapping[str, Any],
    population: nn.Module,
    forward_kwargs: Mapping[str, Any],
    units: Sequence[int],
    references: Sequence[float],
    meis: Sequence[Tensor | None],
    seeds: Sequence[int],
    shape: tuple[int, ...] | None,
    read_shape: Callable[[], tuple[int, ...]] | None,
    progress: bool | None,
) -> list[Result]:
    """One batched run: element ``b`` is the variants of ``units[b]``."""
    n = settings["n_variants"]
    objective = ExcitingVariantsObjective(
        population,
        units,
        references,
        n_variants=n,
        fraction=settings["fraction"],
        weight=settings["weight"],
        space=settings["space"],
        forward_kwargs=forward_kwargs,
    )
    start_from = None
    if settings["start"] == "mei":
        if any(m is None for m in meis):
            raise InputError(
                "the variants start from the MEI ('start': 'mei', the default): pass mei=, "
                "or set config['variants']['start'] = 'initial'",
                argument="mei",
            )
        start_from = _starts_from_meis(meis, n, settings["start_noise"])
    grouped = dataclasses.replace(method, n_meis=n)
    results = run_batch(
        grouped,
        objective,
        shape,
        list(seeds),
        progress=progress,
        description="exciting variants",
        read_shape=read_shape,
        start_from=start_from,
    )
    images = torch.cat([images for images, _, _ in results])
    # the numbers of the returned images as the model sees them: no transform, no gradient
    with torch.no_grad(), prepared_model(objective, method.device):
        responses, features = objective.measure(images.to(method.device))
        distance = mean_pairwise_distance(features, settings["space"])
        index = diversity_index(features, settings["space"])
    out: list[Result] = []
    for b, (variants, _, log) in enumerate(results):
        reference = references[b]
        values = responses[b].cpu().tolist()
        fractions = [v / reference for v in values]
        output = {
            "responses": values,
            "fractions": fractions,
            "reference": reference,
            "fraction": settings["fraction"],
            "space": settings["space"],
            "diversity": float(distance[b]),
            "diversity_index": float(index[b]),
            "log": log,
        }
        out.append((variants, float(index[b]), output))
    return out


def _with_response(population: nn.Module, method: MethodConfig) -> tuple[nn.Module, MethodConfig]:
    """The population with the config's ``response`` (e.g. a video model's responses reduced
    over a window of frames), and the config without it."""
    if method.response is None:
        return population, method
    without = dataclasses.replace(method, response=None)
    if isinstance(population, _OneResponse):  # reduced before the one response is checked
        return _OneResponse(method.response.build(population.model)), without
    reduced: nn.Module = method.response.build(population)
    return reduced, without


def _shape_for(
    method: MethodConfig,
    shape: Sequence[int] | None,
    meis: Sequence[Tensor | None],
    dataloaders: Dataloaders | None,
    forward_kwargs: Mapping[str, Any],
) -> tuple[tuple[int, ...] | None, Callable[[], tuple[int, ...]] | None]:
    """The input shape ``(1, C, ...)``: the config's ``mei_shape``, ``shape``, the MEI's, or
    read from the dataloaders (as gradient_ascent reads it)."""
    given = method.mei_shape if method.mei_shape is not None else shape
    element = None if given is None else (1, *[int(s) for s in given][1:])
    for mei in meis:
        if mei is None:
            continue
        if element is None:
            element = (1, *mei.shape[1:])
        if tuple(mei.shape) != element:
            raise InputError(
                f"the MEI has shape {tuple(mei.shape)}, the run's inputs {element}",
                argument="mei",
            )
    if element is not None:
        return element, None
    if dataloaders is None:
        raise InputError(
            "pass dataloaders, shape= or mei= to give the input shape", argument="shape"
        )
    data_key = forward_kwargs.get("data_key")
    key = data_key if isinstance(data_key, str) else None
    return None, lambda: get_input_shape(dataloaders, key)


def exciting_variants(
    dataloaders: Dataloaders | None = None,
    model: nn.Module | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    *,
    reference: float | None = None,
    mei: Tensor | None = None,
    shape: Sequence[int] | None = None,
    progress: bool | None = None,
) -> Result:
    """Exciting variants of one neuron, a method function (``method_fn =
    "mei.variants.exciting_variants"``; see :mod:`mei.variants` for the objective and the
    diversity index).

    Called as ``mei.main.ExcitingVariantsTemplate`` calls it, ``exciting_variants(dataloaders,
    model, config, seed, mei=stored_mei)``, or ``exciting_variants(model=m, config=c, seed=s,
    mei=m)``.
    ``model`` is the neuron's model, ``(B, ...) -> (B,)`` or ``(B, 1)``, typically
    ``ConstrainedOutputModel(population, unit)`` (needed for ``space="responses"``: the
    distances are between the population's responses). ``reference``: the MEI's response
    (positive); left out, the model's response to ``mei``. ``mei``: the MEI ``(1, C, ...)``,
    where the variants start (``"start": "mei"``, the default). ``config`` is a method
    config as for :func:`~mei.methods.gradient_ascent` (initial guess, optimizer, stopper,
    postprocessing & co.; one image per element) plus a ``"variants"`` entry:
    ``n_variants``, ``fraction``, ``space``, ``weight``, ``start``, ``start_noise`` (see
    :data:`VARIANTS_DEFAULTS`), all checked before the first step. The input shape comes
    from the config's ``mei_shape``, ``shape``, the MEI, or the dataloaders.

    Returns the variants ``(n_variants, C, ...)`` (CPU), their diversity index as the score,
    and ``{"responses": [r_i], "fractions": [r_i / reference], "reference", "fraction",
    "space", "diversity": mean pairwise distance, "diversity_index", "log": the tracker's
    log}``.
    """
    if model is None or config is None or seed is None:
        missing = [
            n for n, v in (("model", model), ("config", config), ("seed", seed)) if v is None
        ]
        raise InputError(f"exciting_variants needs {', '.join(missing)}", argument=missing[0])
    seed = check_seed(seed)
    settings, rest = variants_settings(config)
    method = resolve_config(rest)
    population, unit, forward_kwargs = _single_unit(model)
    population, method = _with_response(population, method)
    if settings["space"] == "responses" and isinstance(population, _OneResponse):
        raise ConfigError(
            "space 'responses' measures distances between the population's responses: pass "
            "the neuron's model as mei.modules.ConstrainedOutputModel(model, unit) (an int "
            f"unit, no target_fn); got a {type(model).__name__}",
            key="variants",
        )
    if method.model_forward_kwargs:
        forward_kwargs = {**forward_kwargs, **method.model_forward_kwargs}
    meis = _checked_meis(None if mei is None else [mei], 1)
    element, read = _shape_for(method, shape, meis, dataloaders, forward_kwargs)
    [found] = _references_of(population, forward_kwargs, [unit], [reference], meis, method)
    [result] = _run(
        method,
        settings,
        population,
        forward_kwargs,
        [unit],
        [found],
        meis,
        [seed],
        element,
        read,
        progress,
    )
    return result


exciting_variants.validate_config = validate_variants_config  # type: ignore[attr-defined]


def exciting_variants_units(
    dataloaders: Dataloaders | None,
    model: nn.Module,
    config: Mapping[str, Any],
    seed: int | Sequence[int],
    units: Sequence[int],
    *,
    references: Sequence[float | None] | None = None,
    meis: Sequence[Tensor | None] | None = None,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> list[Result]:
    """Exciting variants of many units of one model (``(B, ...) -> (B, n_units)``), optimized
    ``batch_size`` units at a time (default: all at once); one ``(variants, index, output)``
    per unit, in order, each equal to :func:`exciting_variants` of
    ``ConstrainedOutputModel(model, unit, forward_kwargs=forward_kwargs)`` with that unit's
    reference, MEI and seed. ``seed`` is one seed for all units or one per unit;
    ``references`` and ``meis`` one per unit (a reference left out is the response to the
    unit's MEI). A config whose elements cannot share a run (see
    :meth:`mei.config.MethodConfig.batch_blockers`) runs one unit at a time."""
    settings, rest = variants_settings(config)
    method = resolve_config(rest)
    units = [int(u) for u in units]
    if hasattr(seed, "__len__"):
        seeds = [check_seed(s, f"seed[{i}]") for i, s in enumerate(cast(Sequence[int], seed))]
    else:
        seeds = [check_seed(seed)] * len(units)
    if len(seeds) != len(units):
        raise InputError(f"got {len(seeds)} seeds for {len(units)} units", argument="seed")
    given = [None] * len(units) if references is None else list(references)
    if len(given) != len(units):
        raise InputError(
            f"got {len(given)} references for {len(units)} units", argument="references"
        )
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size!r}", argument="batch_size")
    kwargs = dict(forward_kwargs or {})
    if method.model_forward_kwargs:
        kwargs = {**kwargs, **method.model_forward_kwargs}
    checked = _checked_meis(meis, len(units))
    model, method = _with_response(model, method)
    element, read = _shape_for(method, shape, checked, dataloaders, kwargs)
    found = _references_of(model, kwargs, units, given, checked, method)
    size = 1 if method.batch_blockers() else (batch_size or len(units) or 1)
    results: list[Result] = []
    for start in range(0, len(units), size):
        part = slice(start, start + size)
        results += _run(
            method,
            settings,
            model,
            kwargs,
            units[part],
            found[part],
            checked[part],
            seeds[part],
            element,
            read,
            progress,
        )
    return results
