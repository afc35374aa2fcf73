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

:func:`resolve_config` checks everything before the first step: known keys, required
components present, every path imports, the kwargs are accepted and the object it builds is
callable. Problems raise :class:`~mei.errors.ConfigError` naming key, path and problem. The
caller's dict is never changed.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

from .errors import ConfigError
from .import_helpers import import_object
from .typing import (
    InitialGuess,
    Objective,
    OptimizerFactory,
    PostProcessing,
    Precondition,
    Regularization,
    Stopper,
    Transform,
)

T = TypeVar("T")

REQUIRED_KEYS = ("device", "initial", "optimizer", "stopper")
OPTIONAL_KEYS = ("transform", "regularization", "precondition", "postprocessing", "objectives")
COMPONENT_KEYS = tuple(k for k in REQUIRED_KEYS + OPTIONAL_KEYS if k not in ("device",))

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
    """One resolved config entry: ``build()`` makes a fresh component each time."""

    key: str
    path: str
    kwargs: dict[str, Any]
    factory: Callable[..., T] = field(repr=False)

    def build(self, **extra: Any) -> T:
        try:
            return self.factory(**extra, **copy.deepcopy(self.kwargs))
        except Exception as e:
            raise ConfigError(f"{type(e).__name__}: {e}", key=self.key, path=self.path) from e


@dataclass(frozen=True)
class MethodConfig:
    """A validated config: the device and one :class:`ComponentSpec` per component."""

    device: torch.device
    # a legacy initial guess takes only ``*shape`` (see mei.methods.draw_initial)
    initial: ComponentSpec[InitialGuess | Callable[..., Tensor]]
    optimizer: ComponentSpec[torch.optim.Optimizer]
    stopper: ComponentSpec[Stopper]
    transform: ComponentSpec[Transform] | None = None
    regularization: ComponentSpec[Regularization] | None = None
    precondition: ComponentSpec[Precondition] | None = None
    postprocessing: ComponentSpec[PostProcessing] | None = None
    objectives: tuple[ComponentSpec[Objective], ...] = ()

    @property
    def batchable(self) -> bool:
        """Whether MEIs can share one run: the optimizer updates each tensor element from that
        element's gradients alone (the optimizers in ``ELEMENTWISE_OPTIMIZERS``, or a custom
        optimizer class with the attribute ``elementwise = True``)."""
        factory: OptimizerFactory = self.optimizer.factory
        return getattr(factory, "elementwise", False) is True or any(
            factory is cls for cls in _elementwise_classes()
        )


@functools.cache
def _elementwise_classes() -> tuple[type, ...]:
    return tuple(import_object(p) for p in sorted(ELEMENTWISE_OPTIMIZERS))


def parse_device(value: Any) -> torch.device:
    """The ``device`` entry as a ``torch.device`` that exists on this machine."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"not a device: {value!r} ({e})", key="device") from None
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


def _resolve_entry(key: str, entry: Any) -> ComponentSpec[Any]:
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"expected an entry {{'path': ..., 'kwargs': {{...}}}}, got {entry!r}", key=key
        )
    unknown = sorted(set(entry) - {"path", "kwargs"})
    if unknown:
        raise ConfigError(
            f"unknown entry field(s) {unknown}; expected 'path' and 'kwargs'", key=key
        )
    path = entry.get("path")
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(
            f"'path' must be a dotted path such as 'mei.initial.RandomNormal', got {path!r}",
            key=key,
        )
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(
            f"'kwargs' must be a dict with string keys, got {kwargs!r}", key=key, path=path
        )
    try:
        factory = import_object(path)
    except ImportError as e:
        raise ConfigError(f"does not import: {e}", key=key, path=path) from None
    if not callable(factory):
        raise ConfigError(f"{type(factory).__name__} object is not callable", key=key, path=path)
    names = list(kwargs) + (["params"] if key == "optimizer" else [])
    rejected = _accepts(factory, names)
    if rejected:
        raise ConfigError(f"does not accept argument(s) {rejected}", key=key, path=path)
    return ComponentSpec(key=key, path=path, kwargs=copy.deepcopy(dict(kwargs)), factory=factory)


def _check_built(spec: ComponentSpec[Any]) -> None:
    """Build the component once, so bad kwarg values fail now, not at step one."""
    if spec.key == "optimizer":
        probe = torch.zeros(1, requires_grad=True)
        optimizer = spec.build(params=[probe])
        if not callable(getattr(optimizer, "step", None)):
            raise ConfigError(
                f"built a {type(optimizer).__name__}, which has no step() method",
                key=spec.key,
                path=spec.path,
            )
        return
    component = spec.build()
    if not callable(component):
        raise ConfigError(
            f"built a {type(component).__name__}, which is not callable",
            key=spec.key,
            path=spec.path,
        )


def resolve_config(config: Mapping[str, Any]) -> MethodConfig:
    """Validate ``config`` and return its :class:`MethodConfig` (see the module docstring)."""
    if isinstance(config, MethodConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"a method config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(REQUIRED_KEYS + OPTIONAL_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown}; allowed: {sorted(REQUIRED_KEYS + OPTIONAL_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if config.get(k) is None]
    if missing:
        raise ConfigError(f"missing required key(s) {missing}")

    resolved: dict[str, Any] = {"device": parse_device(config["device"])}
    for key in COMPONENT_KEYS:
        if key == "objectives" or config.get(key) is None:
            continue
        spec = _resolve_entry(key, config[key])
        _check_built(spec)
        resolved[key] = spec

    objectives = config.get("objectives") or []
    if not isinstance(objectives, (list, tuple)):
        raise ConfigError(f"expected a list of entries, got {objectives!r}", key="objectives")
    specs: list[ComponentSpec[Objective]] = []
    for i, entry in enumerate(objectives):
        spec = _resolve_entry(f"objectives[{i}]", entry)
        _check_built(spec)
        if any(s.path == spec.path for s in specs):
            raise ConfigError(
                "the same objective path appears twice; the tracker logs by path",
                key=f"objectives[{i}]",
                path=spec.path,
            )
        specs.append(spec)
    resolved["objectives"] = tuple(specs)
    return MethodConfig(**resolved)


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`~mei.errors.ConfigError` if ``config`` is not a valid method config."""
    resolve_config(config)
