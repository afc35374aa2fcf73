"""Method functions: a config and a model in, ``(mei, score, output)`` out.

:func:`gradient_ascent` is the method the DataJoint tables call (``method_fn``);
:func:`gradient_ascent_units` optimizes many units of one model in batched runs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, TypeVar, cast

import torch
from torch import Tensor, nn

from ._components import check_shape
from ._counter_rng import CounterStreams
from .capture import requested as capture_requested
from .config import ComponentSpec, MethodConfig, check_seed, resolve_config, validate_config
from .errors import ComponentError, ConfigError, InputError, ModelError, list_names, shorten
from .modules import (
    CEIObjective,
    ConstrainedOutputModel,
    FirstCallCheck,
    NotAWrapperError,
    UnitPerElement,
    VEIObjective,
    wrap_inner,
)
from .optimization import MEI, optimize
from .progress import progress_bar
from .tracking import Tracker
from .typing import Dataloaders, InitialGuess, Model

logger = logging.getLogger(__name__)

T = TypeVar("T")

Result = tuple[Tensor, float, dict[str, dict[str, list[Any]]]]


def _io_dims(loader: Any, where: str) -> dict[str, tuple[int, ...]] | tuple[tuple[int, ...], ...]:
    """The shapes of the fields of ``loader``'s first batch (NNFabrik's ``get_io_dims``):
    a dict for namedtuple and dict batches, else a tuple."""
    none = object()
    batch = next(iter(loader), none)
    if batch is none:
        raise InputError(
            f"{where} yields no batch to read the input shape from; or pass shape=",
            argument="dataloaders",
        )
    if hasattr(batch, "_asdict"):
        batch = batch._asdict()
    if isinstance(batch, Tensor):
        return (tuple(batch.shape),)
    if isinstance(batch, Mapping):
        dims = {k: shape for k, v in batch.items() if (shape := _shape(v)) is not None}
        named = [k for k in ("inputs", "images") if k in batch]
        if named and named[0] not in dims:
            _no_inputs(where, f"its field {named[0]!r} is {_kind(batch[named[0]])}", batch)
        if not dims:
            _no_inputs(where, "none of its fields has a shape", batch)
        return dims
    if isinstance(batch, (tuple, list)):
        if not batch or _shape(batch[0]) is None:
            first = f"its first element is {_kind(batch[0])}" if batch else "it is empty"
            _no_inputs(where, first, batch)
        # fields without a shape (ids, names) are left out: the inputs come first
        return tuple(shape for v in batch if (shape := _shape(v)) is not None)
    _no_inputs(where, "it is not a tensor, a tuple or a dict of tensors", batch)


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None or isinstance(value, (str, bytes)):
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None


def _kind(value: Any) -> str:
    """What a batch field is, for a message: ``a str ('cat')``, ``a dict with keys [...]``."""
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list_names(value)}"
    if isinstance(value, (str, bytes, numbers.Number)) or value is None:
        return f"a {type(value).__name__} ({shorten(value, 40)})"
    return f"a {type(value).__name__}"


def _no_inputs(where: str, why: str, batch: Any) -> NoReturn:
    if isinstance(batch, Mapping):
        found = "a dict with " + ", ".join(f"{k!r}: {_kind(v)}" for k, v in batch.items())
    elif isinstance(batch, (tuple, list)):
        found = f"a {type(batch).__name__} of " + ", ".join(_kind(v) for v in batch)
    else:
        found = _kind(batch)
    if len(found) > 300:
        found = found[:300] + "..."
    raise InputError(
        f"cannot find the input tensor in the first batch of {where}: {why}; the batch is "
        f"{found}. The input shape is read from the inputs of a batch (a tensor, the first "
        "element of a tuple, or the 'inputs'/'images' field of a dict); or pass shape=",
        argument="dataloaders",
    )


def get_dims_for_loader_dict(
    loaders: Mapping[str, Any],
) -> dict[str, dict[str, tuple[int, ...]] | tuple[tuple[int, ...], ...]]:
    """The field shapes of the first batch of every loader of one tier ``{data_key: loader}``
    (NNFabrik's helper of the same name; each loader is read once, in order)."""
    return {k: _io_dims(v, f"loader {k!r}") for k, v in loaders.items()}


def _inputs_of(dims: Any) -> tuple[int, ...]:
    if isinstance(dims, Mapping):
        for name in ("inputs", "images"):
            if name in dims:
                return tuple(dims[name])
        return tuple(next(iter(dims.values())))
    return tuple(dims[0])


def get_input_dimensions(
    dataloaders: Dataloaders,
    get_dims: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    data_key: str | None = None,
) -> tuple[int, ...]:
    """The input shape ``(batch, C, H, W)`` of the loader of ``data_key`` in the ``"train"``
    tier (of the first loader when ``data_key`` is ``None`` or not there), as the original
    library found it: every loader of the tier is read once (reading a loader draws from
    torch's global generator, which the original's start depended on)."""
    if not isinstance(dataloaders, Mapping) or not dataloaders:
        raise InputError(
            f"dataloaders must be a dict such as {{'train': {{data_key: loader}}}}, got "
            f"{type(dataloaders).__name__}; or pass shape=",
            argument="dataloaders",
        )
    name = "train" if "train" in dataloaders else next(iter(dataloaders))
    tier: Any = dataloaders[name]
    if not isinstance(tier, Mapping):  # a bare loader instead of {data_key: loader}
        tier = {None: tier}
    if not tier:
        raise InputError(
            f"dataloaders[{name!r}] is empty: expected {{data_key: loader}} with at least one "
            "loader; or pass shape=",
            argument="dataloaders",
        )
    if get_dims is None:
        dims: Mapping[Any, Any] = {
            k: _io_dims(v, f"dataloaders[{name!r}]" + ("" if k is None else f"[{k!r}]"))
            for k, v in tier.items()
        }
    else:
        dims = get_dims(tier)
    if data_key is not None and data_key in dims:
        return _inputs_of(dims[data_key])
    return _inputs_of(next(iter(dims.values())))


def get_input_shape(dataloaders: Dataloaders, data_key: str | None = None) -> tuple[int, ...]:
    """The input shape of one MEI, ``(1, C, H, W)``, from :func:`get_input_dimensions`."""
    return (1, *get_input_dimensions(dataloaders, data_key=data_key)[1:])


def _normalize_shape(shape: Sequence[int]) -> tuple[int, ...]:
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


def _checked_start(guess: Any, initial: Any, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(guess, Tensor) or tuple(guess.shape) != shape:
        got = tuple(guess.shape) if isinstance(guess, Tensor) else type(guess).__name__
        raise ComponentError(
            f"initial guess {initial!r} must return a tensor of shape {shape}, got {got}"
        )
    return guess.detach()


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
    return _checked_start(guess, initial, shape)


def _seed_global(seed: int) -> None:
    """``torch.manual_seed(seed)``, except where CUDA is not initialized yet.

    There ``torch.manual_seed`` queues the seeding of every CUDA device with a formatted
    stack trace (milliseconds per call: once per batch element and run here), for
    generators nothing has drawn from; only the CPU generator is seeded then.
    """
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def _draw_int64() -> None:
    """One draw as a DataLoader iterator (or a shuffling sampler) makes at its start."""
    torch.empty((), dtype=torch.int64).random_()


class _ShapeReading:
    """Reads the dataloaders for the shape inside each element's seeded global stream.

    Reading a loader advances torch's global generator by a fixed number of int64 draws (one
    per iterator, one more per shuffling sampler). The first element's reading is done for
    real; if its effect on the generator is found to be ``k`` such draws, later elements
    replay them instead of reading the data again, else they read again.
    """

    MAX_DRAWS = 64

    def __init__(self, read: Callable[[], tuple[int, ...]] | None):
        self.read = read
        self.shape: tuple[int, ...] | None = None
        self._draws: int | None = None

    def __call__(self, seed: int) -> tuple[int, ...] | None:
        if self.read is None:
            return None
        if self.shape is not None and self._draws is not None:
            for _ in range(self._draws):
                _draw_int64()
            return self.shape
        self.shape = self.read()
        if self._draws is None:
            after = torch.get_rng_state()
            _seed_global(seed)
            for k in range(self.MAX_DRAWS + 1):
                if torch.equal(torch.get_rng_state(), after):
                    self._draws = k
                    break
                _draw_int64()
            torch.set_rng_state(after)
        return self.shape


def _element_streams(
    method: MethodConfig,
    initial: Any,
    seeds: Sequence[int],
    shape: tuple[int, ...] | None,
    read: Callable[[], tuple[int, ...]] | None,
) -> tuple[tuple[int, ...], Tensor, list[torch.Generator]]:
    """Each element's start and the generator its random components draw from.

    ``rng="original"``: as the original library, element ``b`` follows torch's global
    generator seeded with ``seeds[b]``: the dataloaders are read for the shape, the start
    is drawn, and the generator, continued, feeds the random transforms. ``"separate"``:
    the start comes from a generator seeded with the seed, random components from one
    seeded with ``seed + 1`` (independent of the data loading and of the initial guess).
    ``"device"``: the start as with ``"separate"``; random components that can draw on the
    device use counter streams keyed by ``seed + 1`` instead (see :func:`run_batch`).
    """
    n = method.n_meis
    if method.rng in ("separate", "device"):
        if shape is None:
            assert read is not None  # gradient_ascent passes one of them
            shape = read()
        size = (n, *shape[1:])
        separate = [draw_initial(initial, size, s) for s in seeds]
        return size, torch.cat(separate), [torch.Generator().manual_seed(s + 1) for s in seeds]
    reading = _ShapeReading(read)
    starts: list[Tensor] = []
    generators: list[torch.Generator] = []
    element: tuple[int, ...] | None = None
    with torch.random.fork_rng(devices=[]):
        for s in seeds:
            _seed_global(s)
            read_shape = reading(s)
            final = shape if shape is not None else read_shape
            assert final is not None  # gradient_ascent passes one of them
            element = (n, *final[1:])
            starts.append(_checked_start(initial(*element), initial, element))
            generator = torch.Generator()
            generator.set_state(torch.get_rng_state())
            generators.append(generator)
    assert element is not None  # at least one seed
    return element, torch.cat(starts), generators


@contextlib.contextmanager
def prepared_model(model: Model, device: torch.device) -> Iterator[None]:
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


@contextlib.contextmanager
def _forward_kwargs(model: Any, extra: Mapping[str, Any] | None) -> Iterator[None]:
    """The config's ``model_forward_kwargs`` added to ``model.forward_kwargs`` for the run."""
    if not extra:
        yield
        return
    current = getattr(model, "forward_kwargs", None)
    if not isinstance(current, dict):
        raise ConfigError(
            "model_forward_kwargs needs a model with a forward_kwargs dict, such as "
            f"mei.modules.ConstrainedOutputModel; got a {type(model).__name__}",
            key="model_forward_kwargs",
        )
    saved = dict(current)
    current.update(extra)
    try:
        yield
    finally:
        current.clear()
        current.update(saved)


def _data_key(model: Any) -> str | None:
    forward_kwargs = getattr(model, "forward_kwargs", None)
    if isinstance(forward_kwargs, Mapping):
        key = forward_kwargs.get("data_key")
        return key if isinstance(key, str) else None
    return None


def _shape_reader(dataloaders: Dataloaders, model: Any) -> Callable[[], tuple[int, ...]]:
    """Reads the input shape from ``dataloaders``: the loader of the model's data key."""
    data_key = _data_key(model)
    return functools.partial(get_input_shape, dataloaders, data_key)


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _build_for(
    spec: ComponentSpec[T] | None,
    generators: Sequence[torch.Generator],
    streams: CounterStreams | None = None,
) -> T | None:
    """Build ``spec``'s component; a random one draws element ``b``'s numbers from
    ``streams`` on the device where it can and they are given (``"rng": "device"``), else
    from ``generators[b]``."""
    if spec is None:
        return None
    component = spec.build()
    use_streams = getattr(component, "use_streams", None)
    if streams is not None and callable(use_streams):
        use_streams(streams)
        return component
    for_elements = getattr(component, "for_elements", None)
    if callable(for_elements):
        return cast(T, for_elements(list(generators)))
    if hasattr(component, "use_generators"):
        component.use_generators(generators)
    return component


def _check_shapes(
    components: Mapping[str, tuple[Any, ComponentSpec[Any] | None]], shape: Sequence[int]
) -> None:
    """Ask each component whether it acts on inputs of ``shape`` (before the first step)."""
    for key, (component, spec) in components.items():
        if component is None or spec is None:
            continue
        try:
            check_shape(component, shape)
        except ValueError as e:
            raise ConfigError(str(e), key=key, path=spec.path) from None


def with_response(model: Model, method: MethodConfig) -> Model:
    """``model`` with the config's ``response`` between the unit-selecting wrapper and the
    model it holds (a copy: ``model`` is not changed); ``model`` itself without one.

    ``ConstrainedOutputModel(video_model, unit)`` becomes
    ``ConstrainedOutputModel(response(video_model, **kwargs), unit)``: the responses are
    reduced before the unit is selected. Raises :class:`~mei.errors.ConfigError` (key
    ``response``) for a model that is no such wrapper (see :func:`mei.modules.wrap_inner`), or
    whose inner model already is an instance of the response's class.
    """
    spec = method.response
    if spec is None:
        return model

    def wrap(inner: nn.Module) -> nn.Module:
        if isinstance(spec.factory, type) and isinstance(inner, spec.factory):
            raise ConfigError(
                f"the model already reduces its responses with a {type(inner).__name__}: "
                "remove the config's response entry or that wrapper",
                key=spec.key,
                path=spec.path,
            )
        return spec.build(inner)

    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"the model is a {type(model).__name__}, not a torch.nn.Module that selects units",
            key=spec.key,
            path=spec.path,
        )
    try:
        return wrap_inner(model, wrap)
    except NotAWrapperError:
        raise ConfigError(
            f"the response must be applied before the unit is selected, and the model is a "
            f"{type(model).__name__}, which selects no units of a model it holds: pass "
            "mei.modules.ConstrainedOutputModel(model, unit) (or UnitPerElement, "
            "ClusterContrast, ContrastiveOutputModel, or a module whose class names the "
            "attribute holding its model in inner_models = ('model',)); "
            "gradient_ascent_units takes the model itself",
            key=spec.key,
            path=spec.path,
        ) from None


def run_batch(
    method: MethodConfig,
    model: Model,
    shape: tuple[int, ...] | None,
    seeds: Sequence[int],
    *,
    progress: bool | None = None,
    description: str = "MEI",
    read_shape: Callable[[], tuple[int, ...]] | None = None,
    mei_class: type[Any] | None = None,
    start_from: Callable[[Tensor], Tensor] | None = None,
) -> list[Result]:
    """Optimize ``len(seeds)`` MEIs together; ``model`` maps the batch to one response per
    element, element ``b`` responding as its own MEI's unit. Element ``b`` starts from
    ``seeds[b]``. The input shape is ``shape`` (the config's ``mei_shape`` wins), or what
    ``read_shape`` (which reads the dataloaders) gives; ``read_shape`` is called in each
    element's seeded stream even when the shape is known, as the original library did.
    With a ``response`` entry, ``model`` is a unit-selecting wrapper and the run uses a copy of
    it with the response inside (:func:`with_response`).

    ``mei_class`` (one seed): the class of the MEI, made as the original library made it,
    ``mei_class(model, initial=x, optimizer=..., transparency=..., inhibitory=...,
    transparency_weight=..., **components)`` with the config's optional components, and run
    by :func:`~mei.optimization.optimize` (a lab's subclass of
    :class:`~mei.optimization.MEI` that overrides its ``step()`` is stepped through it).

    ``start_from``: maps the drawn starts (CPU, ``(len(seeds) * n_meis, C, ...)``) to the
    run's starts, e.g. perturbations of known images (:func:`mei.variants.exciting_variants`
    starts from the MEI); the random numbers drawn are the same with or without it.
    """
    custom = mei_class is not None and mei_class is not MEI
    if custom:
        _check_custom_class(method, seeds)
    device = method.device
    model = with_response(model, method)
    objective = fork_objective(model, method)
    if objective is not None:
        model = objective
    seeds = [check_seed(s, f"seeds[{b}]") for b, s in enumerate(seeds)]
    if method.mei_shape is not None:
        shape = _normalize_shape(method.mei_shape)
    if shape is None and read_shape is None:
        raise InputError("pass dataloaders or shape= to give the input shape", argument="shape")
    initial = method.initial.build()
    element, start, generators = _element_streams(method, initial, seeds, shape, read_shape)
    if start_from is not None:
        start = start_from(start).detach()
    if method.transparency:
        alpha = torch.ones(len(start), 1, *element[2:]) * 0.5
        start = torch.cat((start, alpha), dim=1)
    single = len(seeds) == 1 and method.rng == "original"
    with (
        prepared_model(model, device),
        torch.random.fork_rng(devices=_rng_devices(device)),
        progress_bar(
            total=getattr(method.stopper.build(), "steps", None),
            desc=description,
            unit="step",
            enabled=progress,
            leave=False,
        ) as bar,
    ):
        # the original's torch.manual_seed: every device, where CUDA is initialized (a run
        # on a GPU has initialized it by now: the model is there); a run on the CPU leaves
        # the CUDA generators of a process that has not used them alone
        _seed_global(seeds[0])
        if single:
            # a single run continues in torch's global generator, as the original's did:
            # components drawing from it directly see the original's numbers too
            torch.set_rng_state(generators[0].get_state())
            generators = [torch.default_generator]
        image = start.to(device)
        streams = None
        if method.rng == "device":
            streams = CounterStreams([s + 1 for s in seeds], device)
        if method.postprocess_start is not False:
            image = _postprocessed_start(method, image, generators, streams)
        parameterization = _build_for(method.parameterization, generators, streams)
        if parameterization is not None and method.parameterization is not None:
            _check_shapes(
                {"parameterization": (parameterization, method.parameterization)}, image.shape
            )
            image = parameterization.from_image(image)
        x = image.detach().requires_grad_(True)
        optimizer = method.optimizer.build(params=[x])
        stoppers = [method.stopper.build() for _ in seeds]
        trackers = [Tracker(**{s.path: s.build() for s in method.objectives}) for _ in seeds]
        parts = {
            spec.key: (_build_for(spec, generators, streams), spec)
            for spec in (
                method.transform,
                method.regularization,
                method.precondition,
                method.postprocessing,
            )
            if spec is not None
        }
        _check_shapes(parts, tuple(start.shape))
        if custom:
            assert mei_class is not None  # custom
            optional = {key: component for key, (component, _) in parts.items()}
            background = _build_for(method.background, generators, streams)
            if background is not None:
                optional["background"] = background
            lab_mei = mei_class(
                model,
                initial=x,
                optimizer=optimizer,
                transparency=method.transparency,
                inhibitory=method.inhibitory,
                transparency_weight=method.transparency_weight,
                **optional,
            )
            score, result = optimize(
                lab_mei, stoppers[0], trackers[0], progress=bar, score=method.score
            )
            found = result if isinstance(result, Tensor) else torch.as_tensor(result)
            _log_moments(objective, trackers, lab_mei.i_iteration - 1)
            return [(found.detach().cpu().clone(), float(score), trackers[0].log)]
        mei = MEI(
            FirstCallCheck(model),
            x,
            optimizer,
            transform=parts.get("transform", (None,))[0],
            regularization=parts.get("regularization", (None,))[0],
            precondition=parts.get("precondition", (None,))[0],
            postprocessing=parts.get("postprocessing", (None,))[0],
            group=method.n_meis,
            inhibitory=method.inhibitory,
            transparency=method.transparency,
            transparency_weight=method.transparency_weight,
            background=_build_for(method.background, generators, streams),
            parameterization=parameterization,
            capture=method.capture or capture_requested(),
        )
        scores, inputs = optimize(mei, stoppers, trackers, progress=bar, score=method.score)
        _log_moments(objective, trackers, mei.i_iter - 1)
        _log_outputs(parameterization, trackers, mei, method.n_meis)
    inputs = inputs.cpu()
    rows = method.n_meis
    return [
        (inputs[b * rows : (b + 1) * rows].clone(), scores[b], trackers[b].log)
        for b in range(len(seeds))
    ]


def _postprocessed_start(
    method: MethodConfig,
    image: Tensor,
    generators: Sequence[torch.Generator],
    streams: CounterStreams | None,
) -> Tensor:
    """The start passed through the postprocessing (``"postprocess_start": true``) or the
    entry's component, as step 0 postprocesses (open-retina clips its random start with its
    stimulus postprocessor before optimizing). A component of its own: a random one draws
    the start's numbers from the element's generator before the steps draw theirs."""
    setting = method.postprocess_start
    spec = method.postprocessing if setting is True else setting
    assert isinstance(spec, ComponentSpec)  # resolve_config checks it
    component = _build_for(spec, generators, streams)
    assert component is not None  # built from a spec
    _check_shapes({"postprocess_start": (component, spec)}, tuple(image.shape))
    with torch.no_grad():
        processed = component(image, 0)
    if not isinstance(processed, Tensor) or processed.shape != image.shape:
        got = tuple(processed.shape) if isinstance(processed, Tensor) else type(processed).__name__
        raise ComponentError(
            f"postprocess_start: {spec.path} must return a tensor of the start's shape "
            f"{tuple(image.shape)}, got {got}"
        )
    return processed


def fork_objective(model: Model, method: MethodConfig) -> CEIObjective | None:
    """What a ``"mei_class_name": "CEI"`` or ``"VEI"`` config ascends (the sinzlab/mei fork's
    classes, see :class:`~mei.modules.CEIObjective`): ``None`` for ``"MEI"``. Raises
    :class:`~mei.errors.ConfigError` (key ``mei_class_name``) naming what the model lacks."""
    name = method.mei_class_name
    if name == "MEI":
        return None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"a {name} needs a torch.nn.Module with predict_mean, got a {type(model).__name__}",
            key="mei_class_name",
        )
    assert method.ref_level is not None  # resolve_config checks it
    try:
        if name == "CEI":
            return CEIObjective(model, method.ref_level)
        assert method.scale is not None and method.dx is not None  # resolve_config checks it
        assert method.variance_optimization is not None
        return VEIObjective(
            model,
            method.ref_level,
            method.scale,
            method.dx,
            method.variance_optimization,
            method.potential_well_function,
        )
    except ModelError as e:
        raise ConfigError(str(e), key="mei_class_name") from None


def _log_moments(objective: CEIObjective | None, trackers: Sequence[Tracker], step: int) -> None:
    """A CEI's or VEI's run logs the predicted mean and variance of its last evaluation, as
    the fork stored them with each row (``output["mean"]``, ``output["variance"]``)."""
    if objective is None:
        return
    for name, values in objective.last.items():
        flat = values.detach().reshape(len(trackers), -1)[:, 0].cpu().tolist()
        for tracker, value in zip(trackers, flat, strict=True):
            tracker.log[name] = {"times": [step], "values": [value]}


def _log_outputs(component: Any, trackers: Sequence[Tracker], mei: MEI, rows: int) -> None:
    """What a component keeps for the run's output (``component.outputs()``: name -> tensor
    with one row per input row, e.g. :class:`~mei.parameterization.PhaseFourier`'s
    attribution map) goes into each element's log as ``{"times": [the element's last step],
    "values": [its rows]}``."""
    outputs = getattr(component, "outputs", None)
    if not callable(outputs):
        return
    for name, values in outputs().items():
        values = values.detach().cpu()
        for b, tracker in enumerate(trackers):
            tracker.log[name] = {
                "times": [mei.stopped_at.get(b, mei.i_iter - 1)],
                "values": [values[b * rows : (b + 1) * rows].clone()],
            }


def _check_custom_class(method: MethodConfig, seeds: Sequence[int]) -> None:
    """A run with a lab's MEI class is one MEI made as the original library made it."""
    if len(seeds) != 1:
        raise InputError(
            f"mei_class runs one MEI at a time (as the original library did), got {len(seeds)} "
            "seeds",
            argument="mei_class",
        )
    if method.parameterization is not None:
        raise ConfigError(
            "a parameterization is this library's and is not passed to a mei_class (the "
            "original library's MEI optimizes pixels): remove it or the mei_class",
            key="parameterization",
            path=method.parameterization.path,
        )


def _later_protocol(dataloaders: Any, model: Any, config: Any) -> bool:
    """Whether a positional call follows the later ``gradient_ascent(model, config, seed,
    shape=None, dataloaders=None)`` order (a model where dataloaders go)."""
    return isinstance(dataloaders, nn.Module) and isinstance(model, Mapping)


def gradient_ascent(
    dataloaders: Dataloaders | None = None,
    model: Model | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    *args: Any,
    shape: Sequence[int] | None = None,
    progress: bool | None = None,
    mei_class: type[Any] | None = None,
) -> Result:
    """Find the MEI of ``model`` (inputs ``(B, ...)`` -> one response per input).

    Called as the DataJoint tables call it, ``gradient_ascent(dataloaders, model, config,
    seed)``, or with keywords and no dataloaders, ``gradient_ascent(model=m, config=c,
    seed=s, shape=(1, C, H, W))``. ``dataloaders`` give the input shape (NNFabrik-style
    ``{"train": {data_key: loader}}``; the loader of the model's ``forward_kwargs["data_key"]``,
    else the first). ``config`` is a method config (see :mod:`mei.config`), validated before
    the first step; ``seed`` seeds the initial guess and all randomness of the run.

    Returns the MEI (CPU tensor, ``(n_meis, C, H, W)``), its score (by default the
    evaluation of the last step, as the original library returned it; ``"score": "final"``
    in the config: the model's evaluation of the returned MEI) and the tracker's log
    ``{objective path: {"times": [...], "values": [...]}}``, with what the parameterization
    keeps for the output (:class:`~mei.parameterization.PhaseFourier`: ``"attribution"``).

    ``mei_class``: a class to make the MEI with instead of :class:`~mei.optimization.MEI`,
    called as the original library called it (see :func:`run_batch`): a lab's subclass that
    overrides ``step()``, ``evaluate()`` & co. runs as it did there.
    """
    if _later_protocol(dataloaders, model, config):
        # gradient_ascent(model, config, seed, shape=None, dataloaders=None)
        later = [seed, *args]
        dataloaders, model, config, seed = None, dataloaders, model, cast(Any, config)
        if later and later[0] is not None:
            shape = later[0]
        if len(later) > 1:
            dataloaders = later[1]
        args = tuple(later[2:])
    if args:
        raise TypeError(f"gradient_ascent got {len(args)} unexpected positional argument(s)")
    if model is None or config is None or seed is None:
        missing = [
            n for n, v in (("model", model), ("config", config), ("seed", seed)) if v is None
        ]
        raise InputError(f"gradient_ascent needs {', '.join(missing)}", argument=missing[0])
    if dataloaders is None and shape is None:
        raise InputError("pass dataloaders or shape= to give the input shape", argument="shape")
    seed = check_seed(seed)
    method = resolve_config(config)
    with _forward_kwargs(model, method.model_forward_kwargs):
        read = None if dataloaders is None else _shape_reader(dataloaders, model)
        [result] = run_batch(
            method,
            model,
            None if shape is None else _normalize_shape(shape),
            [seed],
            progress=progress,
            read_shape=read,
            mei_class=mei_class,
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
    :func:`gradient_ascent` gives for ``ConstrainedOutputModel(model, unit, target_fn,
    forward_kwargs)`` with the same seed and config. ``seed`` is one seed for all units or one
    per unit. Units are optimized ``batch_size`` at a time (default: all at once). A config
    whose MEIs cannot share a run and still each equal its single run (see
    :meth:`mei.config.MethodConfig.batch_blockers`: an optimizer that couples tensor
    elements such as LBFGS, ``n_meis > 1``, transparency, a component that does not declare
    that it acts per element) is run one unit at a time; the log says why. With a
    ``response`` entry in the config (e.g. ``mei.modules.TimeWindowResponse``), ``model`` may
    give responses over time, ``(B, T, N)``: they are reduced before each unit is selected.
    """
    method = resolve_config(config)
    units = [int(u) for u in units]
    if hasattr(seed, "__len__"):  # a sequence, array or tensor of seeds
        seeds = [check_seed(s, f"seed[{i}]") for i, s in enumerate(cast(Sequence[int], seed))]
    else:
        seeds = [check_seed(seed)] * len(units)
    if len(seeds) != len(units):
        raise ValueError(f"got {len(seeds)} seeds for {len(units)} units")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if dataloaders is None and shape is None:
        raise InputError("pass dataloaders or shape= to give the input shape", argument="shape")
    blockers = method.batch_blockers()
    if blockers and len(units) > 1:
        logger.info("optimizing units one by one: %s", "; ".join(blockers))
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
        with _forward_kwargs(wrapped, method.model_forward_kwargs):
            read = None if dataloaders is None else _shape_reader(dataloaders, wrapped)
            results += run_batch(
                method,
                wrapped,
                None if shape is None else _normalize_shape(shape),
                chunk_seeds,
                progress=progress,
                description=f"MEIs {start}-{start + len(chunk) - 1}",
                read_shape=read,
            )
    return results


__all__ = [
    "gradient_ascent",
    "gradient_ascent_units",
    "get_dims_for_loader_dict",
    "get_input_dimensions",
    "get_input_shape",
    "prepared_model",
    "run_batch",
    "with_response",
    "ConfigError",
]

gradient_ascent.batched = gradient_ascent_units  # type: ignore[attr-defined]
"""Batched populate (:mod:`mei.populate`) calls this for keys that can share one run."""
