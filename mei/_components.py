"""Shared pieces of the component modules: reprs, per-element randomness, nested specs."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._counter_rng import CounterStreams
from .import_helpers import import_path


class Component:
    """Base for components: the repr lists every public constructor argument.

    ``per_row``: this library's components act on each batch element on its own (so a batch
    of MEIs gives each what a run of its own gives); see ``MethodConfig.batch_blockers``.
    """

    per_row = True

    @property
    def capturable(self) -> bool | str:
        """``True`` if a step with this component can be captured as a CUDA graph (it reads
        nothing on the host and does the same work every step), else the reason it cannot;
        see :mod:`mei.capture`. A ``decay_factor`` changes the work with the step number."""
        decay = getattr(self, "decay_factor", None)
        if decay is not None:
            return f"it changes with the step number (decay_factor={decay!r})"
        return True

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` if this component cannot act on inputs of ``shape`` (the
        engine asks before the first step, e.g. a temporal filter given images)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class PerElementRandom(Component):
    """A component that draws random numbers for each batch element from that element's own
    generator, so that element ``b`` of a batched run sees exactly the numbers a single run
    with the same seed sees. The engine calls :meth:`reseed` with one seed per element before
    the first step; used on its own, the component seeds itself from torch's global generator.
    """

    _seeds: list[int] | None = None
    _generators: list[torch.Generator] | None = None
    _streams: CounterStreams | None = None

    @property
    def capturable(self) -> bool | str:
        if self._streams is not None:
            return True
        return 'it draws each element\'s numbers on the host every step (use "rng": "device")'

    def use_streams(self, streams: CounterStreams) -> None:
        """Draw element ``b``'s numbers from ``streams`` on the device (``"rng": "device"``)."""
        self._streams = streams

    def reseed(self, seeds: Sequence[int]) -> None:
        self._seeds = [int(s) for s in seeds]
        self._generators = [torch.Generator().manual_seed(s) for s in self._seeds]

    def use_generators(self, generators: Sequence[torch.Generator]) -> None:
        """Draw element ``b``'s numbers from ``generators[b]`` (the engine's streams)."""
        self._generators = list(generators)

    def _generators_for(self, batch_size: int) -> list[torch.Generator]:
        generators = self._generators
        if generators is None or len(generators) != batch_size:
            self.reseed(torch.randint(0, 2**62, (batch_size,)).tolist())
            generators = self._generators
            assert generators is not None  # reseed set them
        return generators

    def _draw_on_device(self, batch_size: int, n: int) -> Tensor | None:
        """``(B, n)`` 32-bit integers from the device streams (one draw); ``None`` without
        (see :func:`mei._counter_rng.fold`)."""
        streams = self._streams
        if streams is None:
            return None
        if len(streams) != batch_size:
            raise ValueError(
                f"{type(self).__name__} was given streams for {len(streams)} elements but got "
                f"a batch of {batch_size}"
            )
        return streams.raw(n)

    def _draw_ints(self, batch_size: int, low: int, high: int) -> list[int]:
        """One integer in ``[low, high]`` per element."""
        return [
            int(torch.randint(low, high + 1, (1,), generator=g))
            for g in self._generators_for(batch_size)
        ]


def build(spec: Any) -> Any:
    """A component from an object or a config entry ``{"path": ..., "kwargs": {...}}``; an
    object of another library's class whose call takes the input alone, or that has a
    ``forward``/``process`` method instead of a call, is fitted to ``(x, i_iteration)`` (see
    :func:`fit_input_call`)."""
    if isinstance(spec, dict):
        if "path" not in spec:
            raise ValueError(f"a component entry needs a 'path', got {spec!r}")
        built = import_path(spec["path"], spec.get("kwargs"))
        fitted = fit_input_call(built)
        return built if fitted is None else fitted
    if not callable(spec):
        fitted = fit_input_call(spec)
        if fitted is None:
            raise TypeError(f"expected a component or a {{'path': ...}} entry, got {spec!r}")
        return fitted
    return spec


#: The methods of another library's components that :func:`fit_input_call` calls, in order
#: after the object's own call: torch's ``forward`` (open-retina's regularization losses) and
#: ``process`` (open-retina's stimulus postprocessors).
INPUT_METHODS = ("forward", "process")


def _positional(function: Any) -> tuple[int, int] | None:
    """How many positional arguments ``function`` needs and takes at most (``None``: its
    signature cannot be read; at most ``-1``: any number)."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    positional = [
        p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.default is p.empty and p.kind is kinds.KEYWORD_ONLY for p in params):
        return (99, 0)  # a required keyword: the slot passes none
    needed = sum(p.default is p.empty for p in positional)
    star = any(p.kind is kinds.VAR_POSITIONAL for p in params)
    return needed, -1 if star else len(positional)


def fit_input_call(component: Any) -> InputCall | None:
    """``component`` fitted to the call ``(x, i_iteration)`` of the slots that act on the input
    (transform, regularization, precondition, postprocessing, background), or ``None`` where it
    needs no fitting (its call takes both) or nothing fits.

    Fits: an object whose call takes the input alone (a ``torch.nn.Module`` with
    ``forward(x)``), and an object without a call whose ``forward`` or ``process`` method takes
    the input (and perhaps the step): e.g. open-retina's ``RangeRegularizationLoss``
    (``forward(stimulus)``) and ``ChangeNormJointlyClipRangeSeparately``
    (``process(x)``)."""
    names = (("__call__",) if callable(component) else ()) + INPUT_METHODS
    for name in names:
        method = component if name == "__call__" else getattr(component, name, None)
        if not callable(method):
            continue
        if name == "__call__":
            # a module's call passes everything to forward; a function is its own call
            if isinstance(component, torch.nn.Module):
                method = component.forward
            elif not (inspect.isfunction(component) or inspect.ismethod(component)):
                method = type(component).__call__.__get__(component)
        arity = _positional(method)
        if arity is None:
            continue
        needed, most = arity
        if needed <= 2 and (most == -1 or most >= 2):
            return None if name == "__call__" else InputCall(component, name, True)
        # a call of one argument may be meant for another slot (a stopper's state): only
        # one whose annotation may be a tensor is taken; forward/process are meant for input
        if needed <= 1 and most == 1 and (name != "__call__" or _takes_tensor(method)):
            return InputCall(component, name, False)
    return None


def _takes_tensor(function: Any) -> bool:
    """Whether ``function``'s first argument may be a tensor by its annotation (a stopper's
    ``current_state: State`` may not); unannotated: yes."""
    try:
        hints = typing.get_type_hints(function)
        first = next(iter(inspect.signature(function).parameters))
    except Exception:  # unresolvable annotations, no parameters
        return True
    hint = hints.get(first)
    if hint is None or hint is Any:
        return True
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    for option in options:
        option = typing.get_origin(option) or option
        if not isinstance(option, type) or option is object or issubclass(Tensor, option):
            return True
    return False


def input_call_problem(component: Any) -> str:
    """Why :func:`fit_input_call` found nothing to call, for a message."""
    found = [n for n in INPUT_METHODS if callable(getattr(component, n, None))]
    if not callable(component) and not found:
        return (
            f"a {type(component).__name__} is not callable and has no "
            f"{' or '.join(f'{n}(x)' for n in INPUT_METHODS)} method"
        )
    return (
        f"neither its call nor its {', '.join(found) or 'forward/process'} method takes the "
        "input (and the step) as positional arguments"
    )


class InputCall:
    """A component of another library called the way a slot calls components: ``call(x,
    i_iteration)`` runs ``component.<method>(x, i_iteration)``, or ``component.<method>(x)``
    where the method takes the input alone. ``per_row``/``elementwise`` and ``check_shape``
    are the component's."""

    def __init__(self, component: Any, method: str, passes_step: bool):
        self.component = component
        self.method = method
        self.passes_step = passes_step
        self._call = component if method == "__call__" else getattr(component, method)

    @property
    def per_row(self) -> bool:
        for name in ("per_row", "elementwise"):
            value = getattr(self.component, name, None)
            if isinstance(value, bool):
                return value
        return False

    @property
    def capturable(self) -> bool | str:
        flag = getattr(self.component, "capturable", None)
        return (
            flag
            if flag is True or isinstance(flag, str)
            else (f"{type(self.component).__name__} does not declare capturable = True")
        )

    def check_shape(self, shape: Sequence[int]) -> None:
        check_shape(self.component, shape)

    def __call__(self, x: Tensor, i_iteration: int | None = None) -> Tensor:
        result: Tensor = self._call(x, i_iteration) if self.passes_step else self._call(x)
        return result

    def __repr__(self) -> str:
        call = "" if self.method == "__call__" else f".{self.method}"
        return f"{self.component!r}{call}"


def all_capturable(parts: Sequence[Any]) -> bool | str:
    """``True`` if every one of ``parts`` can be captured, else the first one's reason."""
    for part in parts:
        flag = getattr(part, "capturable", None)
        if flag is not True:
            reason = flag if isinstance(flag, str) else "it does not declare capturable = True"
            return f"its part {type(part).__name__}: {reason}"
    return True


def check_shape(component: Any, shape: Sequence[int]) -> None:
    """``component.check_shape(shape)`` for components that have it (others: nothing)."""
    check = getattr(component, "check_shape", None)
    if callable(check):
        check(tuple(shape))


def use_group(component: Any, group: int) -> None:
    """Tell ``component`` that each batch element is ``group`` input rows (``n_meis``)."""
    tell = getattr(component, "use_group", None)
    if callable(tell):
        tell(group)


def require_movie(name: str, shape: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``shape`` is a movie batch ``(B, C, T, H, W)``."""
    if len(shape) != 5:
        raise ValueError(
            f"{name} acts on the time axis of movies (B, C, T, H, W), got inputs of shape "
            f"{tuple(shape)}"
        )


def per_element(x: Tensor) -> Tensor:
    """View ``x`` as ``(B, -1)``."""
    return x.reshape(x.shape[0], -1)


def expand_like(values: Tensor, x: Tensor) -> Tensor:
    """Reshape per-element ``values`` of shape ``(B,)`` to broadcast against ``x``."""
    return values.reshape((x.shape[0],) + (1,) * (x.dim() - 1))


def batched_form(components: Sequence[Any]) -> Any:
    """The batched form of ``components`` (one per batch element), or ``None``.

    There is one when all components are of one class that defines the classmethod
    ``batched`` itself (a subclass may change what its parent computes, so it does not
    inherit the form) and ``batched(components)`` does not return ``None``.
    """
    if not components:
        return None
    cls = type(components[0])
    if "batched" not in vars(cls) or any(type(c) is not cls for c in components):
        return None
    return cls.batched(list(components))
