"""Method configs: validate a config dict once and turn it into component factories.

A config maps component keys to entries ``{"path": "dotted.path", "kwargs": {...}}``::

    {
        "device": "cuda",
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 1000}},
        "precondition": {"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1}},
        "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
    }

The optional ``response`` entry changes the model for the run instead of the input: its path
is called with the model a unit-selecting wrapper holds, ``response(model, **kwargs)``, and
the wrapper selects units of what it returns; e.g. ``mei.modules.TimeWindowResponse`` reduces
a video model's responses ``(B, T, N)`` over a window of frames before the unit is selected.

:func:`resolve_config` checks everything before the first step: known keys, required
components present, every path imports, the kwargs are accepted and the object it builds is
callable, numbers in the kwargs are finite ints or floats, a kwarg whose parameter is annotated
with plain types (``lr: float | Tensor``) gets a value of such a type, and what each entry
builds fits its slot in :mod:`mei.typing` (a stopper takes a state, a transform ``(x, i)``).
Problems raise :class:`~mei.errors.ConfigError` naming key, path, argument and value. The
caller's dict is never changed. :func:`check_seed` checks a run's seed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from ._components import InputCall, fit_input_call, input_call_problem
from .domain import State
from .errors import ConfigError, InputError, list_names, shorten
from .import_helpers import resolve_path
from .typing import (
    Background,
    InitialGuess,
    Objective,
    OptimizerFactory,
    Parameterization,
    PostProcessing,
    Precondition,
    Regularization,
    Stopper,
    Transform,
)

T = TypeVar("T")

REQUIRED_KEYS = ("device", "initial", "optimizer", "stopper")
OPTIONAL_KEYS = (
    "response",
    "parameterization",
    "transform",
    "regularization",
    "precondition",
    "postprocessing",
    "objectives",
    "background",
)
#: The settings of the sinzlab/mei fork used in sinzlab/nnsysident (kklurz/mei):
#: ``mei_class_name`` ("MEI", "CEI", "VEI") and the CEI's and VEI's parameters.
FORK_KEYS = (
    "mei_class_name",
    "ref_level",
    "scale",
    "dx",
    "variance_optimization",
    "potential_well_function",
)
#: ``mei_class_name``: the fork's classes of MEI (see :class:`mei.modules.CEIObjective`).
MEI_CLASS_NAMES = ("MEI", "CEI", "VEI")
#: The fork's other settings, which this library does not implement.
FORK_ONLY_KEYS = (
    "orthogonal_vei",
    "pixel_tanh_scale",
    "validation_ensemble",
    "test_ensemble",
    "use_wandb_every_n_epochs",
)
#: Keys that are settings, not components: the original library's, then this library's.
SETTING_KEYS = (
    "n_meis",
    "mei_shape",
    "model_forward_kwargs",
    "transparency",
    "transparency_weight",
    "inhibitory",
    "score",
    "rng",
    "capture",
    "postprocess_start",
    *FORK_KEYS,
)
COMPONENT_KEYS = tuple(k for k in REQUIRED_KEYS + OPTIONAL_KEYS if k not in ("device",))
ALLOWED_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS + SETTING_KEYS

#: ``score``: which evaluation a run returns as the MEI's score.
SCORES = ("last_step", "final")
#: ``rng``: where random numbers come from.
RNGS = ("original", "separate", "device")

SEED_MIN, SEED_MAX = -(2**31), 2**31 - 1
"""Seeds are integers in the range of the ``mei_seed`` column (``int``, 32 bits)."""

#: The slot each component key fills, and how the engine calls it (for messages).
SLOTS: dict[str, tuple[type, str]] = {
    "initial": (InitialGuess, "initial(*shape, generator=g) -> Tensor"),
    "parameterization": (Parameterization, "parameterization(params) -> image"),
    "transform": (Transform, "transform(x, i_iteration) -> Tensor"),
    "regularization": (Regularization, "regularization(x, i_iteration) -> Tensor"),
    "precondition": (Precondition, "precondition(grad, i_iteration) -> Tensor"),
    "postprocessing": (PostProcessing, "postprocessing(x, i_iteration) -> Tensor"),
    "background": (Background, "background(x, i_iteration) -> Tensor"),
    "stopper": (Stopper, "stopper(state) -> (stop, output)"),
    "objectives": (Objective, "objective(state) -> value"),
}
#: How the ``response`` entry is called: it wraps the model, it is not a slot of the loop.
RESPONSE_CALL = "response(model, **kwargs) -> torch.nn.Module"

#: Optimizers whose update of each tensor element depends only on that element's gradient
#: history: a batch of MEIs optimized together gives each MEI exactly its own result.
ELEMENTWISE_OPTIMIZERS = frozenset(
    f"torch.optim.{name}"
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "Adamax",
        "Adagrad",
        "Adadelta",
        "RMSprop",
        "Rprop",
        "NAdam",
        "RAdam",
        "ASGD",
    )
)


@dataclass(frozen=True)
class ComponentSpec(Generic[T]):
    """One resolved config entry: ``build()`` makes a fresh component each time.

    ``fit``: how a built component of another library is fitted to its slot's call (see
    :func:`mei._components.fit_input_call`); ``None`` for components that fit as built."""

    key: str
    path: str
    kwargs: dict[str, Any]
    factory: Callable[..., T] = field(repr=False)
    fit: Callable[[Any], T] | None = field(default=None, repr=False, compare=False)

    def build(self, *args: Any, **extra: Any) -> T:
        try:
            built = self.factory(*args, **extra, **copy.deepcopy(self.kwargs))
        except Exception as e:
            raise ConfigError(
                f"{type(e).__name__}: {e} ({self.given()})", key=self.key, path=self.path
            ) from e
        return built if self.fit is None else self.fit(built)

    def given(self) -> str:
        """The config's kwargs of this entry as a call shows them: ``kwargs given: lr=-1.0``."""
        if not self.kwargs:
            return "no kwargs given"
        shown = ", ".join(f"{name}={shorten(value, 60)}" for name, value in self.kwargs.items())
        return f"kwargs given: {shown}"


@dataclass(frozen=True)
class MethodConfig:
    """A validated config: the device and one :class:`ComponentSpec` per component."""

    device: torch.device
    # a legacy initial guess takes only ``*shape`` (see mei.methods.draw_initial)
    initial: ComponentSpec[InitialGuess | Callable[..., Tensor]]
    optimizer: ComponentSpec[torch.optim.Optimizer]
    stopper: ComponentSpec[Stopper]
    response: ComponentSpec[nn.Module] | None = None
    parameterization: ComponentSpec[Parameterization] | None = None
    transform: ComponentSpec[Transform] | None = None
    regularization: ComponentSpec[Regularization] | None = None
    precondition: ComponentSpec[Precondition] | None = None
    postprocessing: ComponentSpec[PostProcessing] | None = None
    objectives: tuple[ComponentSpec[Objective], ...] = ()
    background: ComponentSpec[Background] | None = None
    n_meis: int = 1
    mei_shape: tuple[int, ...] | None = None
    model_forward_kwargs: Mapping[str, Any] | None = None
    transparency: bool = False
    transparency_weight: float = 1.0
    inhibitory: bool = False
    score: str = "last_step"
    rng: str = "original"
    capture: bool = False
    mei_class_name: str = "MEI"
    ref_level: float | None = None
    scale: float | None = None
    dx: float | None = None
    variance_optimization: str | None = None
    potential_well_function: str = "exp"
    #: ``postprocess_start``: the start is passed through the run's postprocessing (``True``)
    #: or through the component of this entry before the first step
    postprocess_start: bool | ComponentSpec[PostProcessing] = False

    @property
    def batchable(self) -> bool:
        """Whether MEIs can share one run: the optimizer updates each tensor element from that
        element's gradients alone (the optimizers in ``ELEMENTWISE_OPTIMIZERS``, or a custom
        optimizer class with the attribute ``elementwise = True``)."""
        factory: OptimizerFactory = self.optimizer.factory
        return getattr(factory, "elementwise", False) is True or any(
            factory is cls for cls in _elementwise_classes()
        )

    def batch_blockers(self) -> list[str]:
        """Why MEIs of this config cannot share a run with each equal to its single run
        (empty: they can). Components must act on each batch element on its own: this
        library's components do; others declare it with the class attribute
        ``elementwise = True`` (or ``per_row = True``)."""
        reasons = []
        if not self.batchable:
            reasons.append(f"optimizer {self.optimizer.path} couples tensor elements")
        if self.n_meis > 1:
            reasons.append(f"n_meis={self.n_meis}: several images share one evaluation")
        if self.transparency:
            reasons.append("transparency composes each MEI over its own background")
        if self.mei_class_name != "MEI":
            reasons.append(
                f"mei_class_name={self.mei_class_name!r}: each unit's objective is relative to "
                "its own MEI (model.mei_mean)"
            )
        for spec in (
            self.response,
            self.parameterization,
            self.transform,
            self.regularization,
            self.precondition,
            self.postprocessing,
            self.postprocess_start if isinstance(self.postprocess_start, ComponentSpec) else None,
        ):
            if spec is None:
                continue
            if not _per_row(spec.factory):
                reasons.append(
                    f"{spec.key} {spec.path} does not declare that it acts on each element on "
                    "its own (class attribute elementwise = True)"
                )
            # a Compose or WeightedSum acts on each element on its own if each of its parts does
            for path in _parts_not_per_row(spec.kwargs):
                reasons.append(
                    f"{spec.key} {spec.path} holds {path}, which does not declare that it acts "
                    "on each element on its own (class attribute elementwise = True)"
                )
        return reasons


def _parts_not_per_row(value: Any) -> list[str]:
    """The parts named in a component's kwargs (``{"path", "kwargs"}`` entries, or objects in
    a list of parts, at any depth) that do not act on each batch row on their own."""
    found: list[str] = []
    if isinstance(value, Mapping):
        path = value.get("path")
        if isinstance(path, str):
            try:
                factory = resolve_path(path)
            except Exception:  # not importable: the component's own build says so
                return found
            if not _per_row(factory):
                found.append(path)
            return found + _parts_not_per_row(value.get("kwargs"))
        for item in value.values():
            found += _parts_not_per_row(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (Mapping, list, tuple)):
                found += _parts_not_per_row(item)
            elif callable(item) and not _per_row(item):
                found.append(f"{type(item).__module__}.{type(item).__qualname__}")
    return found


def _per_row(factory: Any) -> bool:
    """Whether components built by ``factory`` act on each batch row on its own."""
    for name in ("per_row", "elementwise"):
        value = getattr(factory, name, None)
        if isinstance(value, bool):
            return value
    return False


@functools.cache
def _elementwise_classes() -> tuple[type, ...]:
    return tuple(resolve_path(p) for p in sorted(ELEMENTWISE_OPTIMIZERS))


def settings_entry(config: Any, name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config[name]`` settings of a method that builds on the MEI config (``"mds"``,
    ``"variants"``) with ``defaults`` filled in; their values are the caller's to check.
    Raises :class:`~mei.errors.ConfigError` naming ``name`` for an entry that is not a dict or
    has unknown settings."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"a method config must be a dict, got {type(config).__name__}")
    entry = config.get(name) or {}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"expected a dict of settings, got {shorten(entry)}", key=name)
    unknown = sorted(set(entry) - set(defaults), key=str)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {list_names(unknown)}; allowed: {sorted(defaults)}", key=name
        )
    return {**defaults, **entry}


def parse_device(value: Any, *, check_exists: bool = True) -> torch.device:
    """The ``device`` entry as a ``torch.device``; with ``check_exists`` (the default) it must
    exist on this machine. Method rows are data: a lab adds a ``cuda`` row from a laptop."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"not a device: {shorten(value)} ({e})", key="device") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {value!r}", key="device")
    if not check_exists:
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{value!r}: CUDA is not available on this machine", key="device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{value!r}: this machine has {count} CUDA device(s)", key="device")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{value!r}: MPS is not available on this machine", key="device")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {value!r}", key="device")
    return device


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an ``int``; raise :class:`~mei.errors.InputError` naming ``name`` unless it is
    an integer (not a bool) in ``[SEED_MIN, SEED_MAX]``. Integer numpy scalars and 0-d integer
    tensors are accepted."""
    if isinstance(seed, Tensor) and seed.dim() == 0 and not seed.dtype.is_floating_point:
        if seed.dtype not in (torch.bool, torch.complex64, torch.complex128):
            seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(
            f"{name} must be an integer, got {shorten(seed)} ({type(seed).__name__})",
            argument=name,
        )
    value = int(seed)
    if not SEED_MIN <= value <= SEED_MAX:
        raise InputError(
            f"{name} must be an integer in [{SEED_MIN}, {SEED_MAX}] (the range of the "
            f"mei_seed column), got {value}",
            argument=name,
        )
    return value


def _accepts(obj: Any, names: list[str]) -> list[str]:
    """The names among ``names`` that ``obj``'s signature does not accept."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []  # builtins without a signature: let the call decide
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    accepted = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return [n for n in names if n not in accepted]


#: Paths whose kwargs may be infinite: the original library's operations took ``inf`` (e.g. an
#: open clip range) and lab databases hold such rows.
INFINITE_OK = ("mei.legacy.",)


def _check_numbers(key: str, path: str, value: Any, where: str) -> None:
    """Every number in ``value`` (nested in dicts, lists, tuples) is an int or a finite float
    (``inf`` is allowed for the paths in :data:`INFINITE_OK`; ``nan`` never)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_numbers(key, path, v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(key, path, v, f"{where}[{i}]")
    elif isinstance(value, numbers.Integral):
        return
    elif isinstance(value, float) or (
        isinstance(value, numbers.Real) and type(value).__module__ == "numpy"
    ):
        number = float(value)
        if math.isinf(number) and path.startswith(INFINITE_OK):
            return
        if not math.isfinite(number):
            raise ConfigError(
                f"argument {where!r} must be a finite number, got {value!r}", key=key, path=path
            )
    elif isinstance(value, numbers.Number):  # Decimal, Fraction, complex
        raise ConfigError(
            f"argument {where!r} must be an int or a float, got {shorten(value)} "
            f"({type(value).__name__})",
            key=key,
            path=path,
        )


def _hints(function: Any) -> dict[str, Any]:
    """``function``'s resolved annotations; ``{}`` where they cannot be resolved.

    Resolved once per function (string annotations are compiled and evaluated each time
    ``typing.get_type_hints`` runs: most of a config's validation, once per run)."""
    function = getattr(function, "__func__", function)  # a bound method: its function
    try:
        return dict(_cached_hints(function))
    except TypeError:  # not hashable
        return _resolve_hints(function)


def _resolve_hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function, localns={"State": State, "Tensor": Tensor})
    except Exception:  # forward references to names we cannot see, odd objects
        return {}


_cached_hints = functools.lru_cache(maxsize=1024)(_resolve_hints)


def _classes(annotation: Any) -> set[type] | None:
    """The classes ``annotation`` stands for (``float | Tensor`` -> ``{float, Tensor}``,
    ``tuple[bool, Any]`` -> ``{tuple}``); ``None`` for anything (``Any``, ``TypeVar``, ...)."""
    if annotation is Any:  # a class on Python 3.11+
        return None
    if annotation is None or annotation is type(None):
        return {type(None)}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found: set[type] = set()
        for arg in typing.get_args(annotation):
            classes = _classes(arg)
            if classes is None:
                return None
            found |= classes
        return found
    if origin is not None:
        annotation = origin
    if isinstance(annotation, type) and annotation is not object:
        return {annotation}
    return None


def _fits(value_class: type, classes: set[type]) -> bool:
    """Whether ``value_class`` is one of ``classes`` (an int is a float; unknowns fit)."""
    for cls in classes:
        if cls in (float, complex) and issubclass(value_class, numbers.Real):
            return True
        try:
            if issubclass(value_class, cls):
                return True
        except TypeError:  # e.g. a protocol issubclass cannot check
            return True
    return False


def _type_name(annotation: Any) -> str:
    """``float | Tensor``, ``tuple[bool, Any]``: an annotation as a reader writes it."""
    if annotation is None or annotation is type(None):
        return "None"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("torch.", "")


def _check_annotated(key: str, path: str, factory: Any, kwargs: Mapping[str, Any]) -> None:
    """A string or a number given for a parameter annotated with plain types that take neither
    (``lr: float | Tensor`` given ``"0.1"``) is refused, naming the argument and its value."""
    hints = _hints(getattr(factory, "__init__", None) if isinstance(factory, type) else factory)
    for name, value in kwargs.items():
        if name not in hints or not isinstance(value, (str, bytes, numbers.Number)):
            continue
        classes = _classes(hints[name])
        if classes is None or (Tensor in classes and isinstance(value, numbers.Number)):
            continue
        if not _fits(type(value), classes):
            raise ConfigError(
                f"argument {name!r} must be {_type_name(hints[name])}, got {shorten(value)} "
                f"({type(value).__name__})",
                key=key,
                path=path,
            )


def _call_signature(component: Any) -> tuple[inspect.Signature, dict[str, Any]] | None:
    """The signature and annotations of calling ``component`` (a module's ``forward``)."""
    target = component.forward if isinstance(component, nn.Module) else component
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    if inspect.isfunction(target) or inspect.ismethod(target):
        return signature, _hints(target)
    return signature, _hints(type(target).__call__)


@functools.cache
def _slot_parameters(protocol: type) -> tuple[inspect.Parameter, ...]:
    """The parameters with which the engine calls a slot's protocol (``self`` left out)."""
    return tuple(inspect.signature(protocol.__call__).parameters.values())[1:]


def slot_mismatches(component: Any, slot_key: str) -> list[str]:
    """What keeps ``component`` from fitting the slot of ``slot_key`` (see :data:`SLOTS`).

    Compares how the engine calls the slot with the component's call signature: the number
    of positional arguments, and, where the component annotates them, the argument and return
    types. Unannotated components are judged by their arity alone.
    """
    found = _call_signature(component)
    if found is None:
        return []
    signature, hints = found
    protocol, _ = SLOTS[slot_key]
    slot_hints = _hints(protocol.__call__)
    wanted = _slot_parameters(protocol)
    params = list(signature.parameters.values())
    kinds = inspect.Parameter
    positional = [
        p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    star = [p for p in params if p.kind is kinds.VAR_POSITIONAL]
    passed = [w for w in wanted if w.kind is kinds.POSITIONAL_ONLY]
    problems: list[str] = []
    used: set[str] = set()
    for index, want in enumerate(w for w in wanted if w.kind is not kinds.KEYWORD_ONLY):
        if want.kind is kinds.VAR_POSITIONAL:  # the shape of an initial guess
            takers = positional + star
            used |= {p.name for p in takers}
        elif index < len(positional):
            takers = [positional[index]]
        elif star:
            takers = star
        else:
            problems.append(
                f"it takes {len(positional)} positional argument(s), the slot passes "
                f"{len(passed)} ({', '.join(w.name for w in passed)})"
            )
            break
        if not takers:
            problems.append(f"it takes no positional arguments, the slot passes *{want.name}")
            break
        have = takers[0]
        used.add(have.name)
        want_classes = _classes(slot_hints.get(want.name, Any))
        have_classes = _classes(hints.get(have.name, Any))
        if want_classes is not None and have_classes is not None:
            if not all(_fits(w, have_classes) for w in want_classes):
                problems.append(
                    f"its argument {have.name!r} takes {_type_name(hints[have.name])}, the slot "
                    f"passes {_type_name(slot_hints[want.name])}"
                )
    for p in params:
        required = p.default is p.empty and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
        if required and p.name not in used:
            problems.append(f"its argument {p.name!r} is required, the slot does not pass it")
    returns = _classes(hints.get("return", Any))
    needed = _classes(slot_hints.get("return", Any))
    if returns is not None and needed is not None:
        if slot_key == "regularization":  # the original library's regularizers return floats
            needed = needed | {float}
        if not all(_fits(r, needed) for r in returns):
            problems.append(
                f"it returns {_type_name(hints['return'])}, the slot needs "
                f"{_type_name(slot_hints['return'])}"
            )
    return problems


def _resolve_entry(key: str, entry: Any) -> ComponentSpec[Any]:
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"expected an entry {{'path': ..., 'kwargs': {{...}}}}, got {shorten(entry)}",
            key=key,
        )
    unknown = sorted(set(entry) - {"path", "kwargs"}, key=str)
    if unknown:
        raise ConfigError(
            f"unknown entry field(s) {list_names(unknown)}; expected 'path' and 'kwargs'", key=key
        )
    path = entry.get("path")
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(
            f"'path' must be a dotted path such as 'mei.initial.RandomNormal', got {shorten(path)}",
            key=key,
        )
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(
            f"'kwargs' must be a dict with string keys, got {shorten(kwargs)}", key=key, path=path
        )
    try:
        factory = resolve_path(path)
    except ImportError as e:
        raise ConfigError(f"does not import: {e}", key=key, path=path) from None
    if not callable(factory):
        raise ConfigError(f"{type(factory).__name__} object is not callable", key=key, path=path)
    if key == "response" and "model" in kwargs:
        raise ConfigError(
            "'model' is not a kwarg here: the run passes the model the selecting wrapper holds",
            key=key,
            path=path,
        )
    names = list(kwargs) + (["params"] if key == "optimizer" else [])
    rejected = _accepts(factory, names)
    if rejected:
        raise ConfigError(f"does not accept argument(s) {list_names(rejected)}", key=key, path=path)
    for name, value in kwargs.items():
        _check_numbers(key, path, value, name)
    _check_annotated(key, path, factory, kwargs)
    return ComponentSpec(key=key, path=path, kwargs=copy.deepcopy(dict(kwargs)), factory=factory)


#: The slots that call their component with the input and the step, ``(x, i_iteration)``:
#: there a component of another library whose call takes the input alone, or that has a
#: ``forward``/``process`` method instead of a call, is fitted to that call.
INPUT_SLOTS = ("transform", "regularization", "precondition", "postprocessing", "background")


def _check_built(spec: ComponentSpec[Any]) -> ComponentSpec[Any]:
    """Build the component once, so bad kwarg values fail now, not at step one; the spec,
    with how to fit the component to its slot where it needs fitting."""
    if spec.key == "optimizer":
        probe = torch.zeros(1, requires_grad=True)
        optimizer = spec.build(params=[probe])
        missing = [m for m in ("step", "zero_grad") if not callable(getattr(optimizer, m, None))]
        if missing:
            raise ConfigError(
                f"built a {type(optimizer).__name__}, which has no {' or '.join(missing)}() "
                "method: the optimizer slot needs a torch.optim.Optimizer",
                key=spec.key,
                path=spec.path,
            )
        return spec
    if spec.key == "response":
        _check_response(spec)
        return spec
    component = spec.build()
    slot = spec.key.partition("[")[0]
    slot = "postprocessing" if slot == "postprocess_start" else slot
    if slot in INPUT_SLOTS:
        fitted = fit_input_call(component)
        if fitted is not None:
            spec = dataclasses.replace(
                spec,
                fit=functools.partial(
                    InputCall, method=fitted.method, passes_step=fitted.passes_step
                ),
            )
            component = fitted
        elif not callable(component):
            raise ConfigError(
                f"built a {type(component).__name__}, which does not fit the {slot} slot "
                f"{SLOTS[slot][1]}: {input_call_problem(component)}",
                key=spec.key,
                path=spec.path,
            )
    if not callable(component):
        raise ConfigError(
            f"built a {type(component).__name__}, which is not callable",
            key=spec.key,
            path=spec.path,
        )
    problems = slot_mismatches(component, slot)
    if slot == "parameterization" and not callable(getattr(component, "from_image", None)):
        problems.append("it has no from_image(image) -> params method")
    if problems:
        raise ConfigError(
            f"built a {type(component).__name__}, which does not fit the "
            f"{SLOTS[slot][1].partition('(')[0]} slot {SLOTS[slot][1]}: {'; '.join(problems)}",
            key=spec.key,
            path=spec.path,
        )
    return spec


def _check_response(spec: ComponentSpec[Any]) -> None:
    """Build the response around a stand-in model: it must take the model as its first
    argument and be a module (it becomes part of the model for the run). A factory whose
    arguments only a real model can check (:class:`mei.modules.LayerResponse` names one of its
    layers) has ``check_arguments(**kwargs)`` instead, which checks what it can without one."""
    check = getattr(spec.factory, "check_arguments", None)
    if callable(check):
        try:
            check(**spec.kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e), key=spec.key, path=spec.path) from None
        return
    wrapped = spec.build(nn.Identity())
    if not isinstance(wrapped, nn.Module):
        raise ConfigError(
            f"built a {type(wrapped).__name__}, which is not a torch.nn.Module: the response "
            f"entry is called as {RESPONSE_CALL}",
            key=spec.key,
            path=spec.path,
        )


def resolve_config(
    config: Mapping[str, Any] | MethodConfig, *, check_device: bool = True
) -> MethodConfig:
    """Validate ``config`` and return its :class:`MethodConfig` (see the module docstring);
    a :class:`MethodConfig` is returned as it is.

    ``check_device=False`` checks everything but whether the named device exists here.
    """
    if isinstance(config, MethodConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"a method config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(ALLOWED_KEYS), key=str)
    fork_only = [k for k in unknown if k in FORK_ONLY_KEYS]
    if fork_only:
        raise ConfigError(
            f"key(s) {list_names(fork_only)} of the sinzlab/mei fork (kklurz/mei) are not "
            f"implemented here; its {list_names(FORK_KEYS)} are",
            key=fork_only[0],
        )
    if unknown:
        # the fork's CEI/VEI parameters go with mei_class_name (its message names them)
        shown = sorted(k for k in ALLOWED_KEYS if k not in FORK_KEYS[1:])
        raise ConfigError(f"unknown key(s) {list_names(unknown)}; allowed: {shown}")
    missing = [k for k in REQUIRED_KEYS if config.get(k) is None]
    if missing:
        raise ConfigError(f"missing required key(s) {missing}")

    resolved: dict[str, Any] = {"device": parse_device(config["device"], check_exists=check_device)}
    for key in COMPONENT_KEYS:
        if key == "objectives" or config.get(key) is None:
            continue
        spec = _check_built(_resolve_entry(key, config[key]))
        resolved[key] = spec

    objectives = config.get("objectives") or []
    if not isinstance(objectives, (list, tuple)):
        raise ConfigError(
            f"expected a list of entries, got {shorten(objectives)}", key="objectives"
        )
    specs: list[ComponentSpec[Objective]] = []
    for i, entry in enumerate(objectives):
        spec = _check_built(_resolve_entry(f"objectives[{i}]", entry))
        if any(s.path == spec.path for s in specs):
            raise ConfigError(
                "the same objective path appears twice; the tracker logs by path",
                key=f"objectives[{i}]",
                path=spec.path,
            )
        specs.append(spec)
    resolved["objectives"] = tuple(specs)
    resolved.update(_settings(config))
    start = _postprocess_start(config)
    if start is not False:
        resolved["postprocess_start"] = start
    if resolved.get("transparency") and "parameterization" in resolved:
        raise ConfigError(
            "transparency optimizes the image and its alpha channel in pixels; remove the "
            "parameterization",
            key="parameterization",
            path=resolved["parameterization"].path,
        )
    if resolved.get("transparency") and "background" not in resolved:
        raise ConfigError(
            "transparency composes the MEI over a background: add a 'background' entry, e.g. "
            "{'path': 'mei.legacy.ops.WhiteNoiseBackground', 'kwargs': {...}}",
            key="background",
        )
    return MethodConfig(**resolved)


def _positive_int(value: Any) -> bool:
    return type(value) is not bool and isinstance(value, numbers.Integral) and int(value) >= 1


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The setting keys of ``config`` (see :data:`SETTING_KEYS`), checked."""
    settings: dict[str, Any] = {}
    n_meis = config.get("n_meis")
    if n_meis is not None:
        if isinstance(n_meis, bool) or not isinstance(n_meis, numbers.Integral) or n_meis < 1:
            raise ConfigError(f"must be a positive integer, got {shorten(n_meis)}", key="n_meis")
        settings["n_meis"] = int(n_meis)
    shape = config.get("mei_shape")
    if shape is not None:
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) < 2
            or not all(_positive_int(s) for s in shape)
        ):
            raise ConfigError(
                f"must be an input shape such as (1, 1, 36, 64) with positive sizes, got "
                f"{shorten(shape)}",
                key="mei_shape",
            )
        settings["mei_shape"] = tuple(int(s) for s in shape)
    forward_kwargs = config.get("model_forward_kwargs")
    if forward_kwargs is not None:
        if not isinstance(forward_kwargs, Mapping) or not all(
            isinstance(k, str) for k in forward_kwargs
        ):
            raise ConfigError(
                f"must be a dict of keyword arguments for the model, got {shorten(forward_kwargs)}",
                key="model_forward_kwargs",
            )
        settings["model_forward_kwargs"] = copy.deepcopy(dict(forward_kwargs))
    for name in ("transparency", "inhibitory", "capture"):
        value = config.get(name)
        if value is None:
            continue
        if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
            raise ConfigError(f"must be true or false, got {shorten(value)}", key=name)
        settings[name] = bool(value)
    weight = config.get("transparency_weight")
    if weight is not None:
        if (
            isinstance(weight, bool)
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(float(weight))
        ):
            raise ConfigError(
                f"must be a finite number, got {shorten(weight)}", key="transparency_weight"
            )
        settings["transparency_weight"] = float(weight)
    settings.update(_fork_settings(config))
    for name, allowed in (("score", SCORES), ("rng", RNGS)):
        value = config.get(name)
        if value is None:
            continue
        if value not in allowed:
            raise ConfigError(
                f"must be one of {list_names(allowed)}, got {shorten(value)}", key=name
            )
        settings[name] = value
    return settings


def _postprocess_start(config: Mapping[str, Any]) -> bool | ComponentSpec[PostProcessing]:
    """The ``postprocess_start`` setting: ``False`` (the default: the start as drawn),
    ``True`` (the start passed through the config's ``postprocessing``) or a component entry
    whose component the start is passed through (e.g. only the clip of a chain)."""
    value = config.get("postprocess_start")
    if value is None or value is False or (type(value) is int and value == 0):
        return False
    if value is True or (type(value) is int and value == 1):
        if config.get("postprocessing") is None:
            raise ConfigError(
                "true passes the start through the config's postprocessing, and there is "
                "none: add a 'postprocessing' entry, or give the component to use here as "
                "{'path': ..., 'kwargs': {...}}",
                key="postprocess_start",
            )
        return True
    if isinstance(value, Mapping):
        return _check_built(_resolve_entry("postprocess_start", value))
    raise ConfigError(
        f"must be true, false or an entry {{'path': ..., 'kwargs': {{...}}}}, got {shorten(value)}",
        key="postprocess_start",
    )


def _fork_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fork's ``mei_class_name`` and the parameters its CEI and VEI need, checked."""
    settings: dict[str, Any] = {}
    name = config.get("mei_class_name")
    if name is None:
        name = "MEI"
    if name not in MEI_CLASS_NAMES:
        raise ConfigError(
            f"must be one of {list_names(MEI_CLASS_NAMES)} (the sinzlab/mei fork's classes), "
            f"got {shorten(name)}",
            key="mei_class_name",
        )
    settings["mei_class_name"] = name
    needed = {
        "MEI": (),
        "CEI": ("ref_level",),
        "VEI": ("ref_level", "scale", "dx", "variance_optimization"),
    }[name]
    for key in ("ref_level", "scale", "dx"):
        value = config.get(key)
        if value is None:
            if key in needed:
                raise ConfigError(f"a {name} needs {key!r} (a number)", key=key)
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value))
        ):
            raise ConfigError(f"must be a finite number, got {shorten(value)}", key=key)
        if key in ("scale", "dx") and float(value) <= 0:
            raise ConfigError(f"must be positive, got {value!r}", key=key)
        settings[key] = float(value)
    for key, allowed in (
        ("variance_optimization", ("max", "min")),
        ("potential_well_function", ("exp", "linear")),
    ):
        value = config.get(key)
        if value is None:
            if key in needed:
                raise ConfigError(f"a {name} needs {key!r}, one of {list_names(allowed)}", key=key)
            continue
        if value not in allowed:
            raise ConfigError(
                f"must be one of {list_names(allowed)}, got {shorten(value)}", key=key
            )
        settings[key] = value
    return settings


def validate_config(config: Mapping[str, Any], *, check_device: bool = True) -> None:
    """Raise :class:`~mei.errors.ConfigError` if ``config`` is not a valid method config
    (``check_device=False``: whether its device exists here is left to the run)."""
    resolve_config(config, check_device=check_device)
