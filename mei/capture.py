"""A captured step: one optimization step launched by the host as one CUDA graph.

On a GPU, a step of a small model is bound by the host: Python and hundreds of kernel
launches per step, for kernels that take microseconds. With ``"capture": true`` in a method
config (or :func:`capturing` around the calls, as ``MEI.capture = True`` and
``mei worker --capture`` do), the tensor work of a step (forward, backward, preconditioning,
the optimizer's update, postprocessing, the frozen elements and the running sum of the
finite check) is recorded once as a CUDA graph and replayed every step after; the host only
replays it and reads what the stoppers and objectives ask for, on the steps they ask.

Capture changes no number: the graph replays the kernels of the eager step, in order, on the
same memory. What the graph cannot hold runs the eager step instead, and the log says why,
once per reason (:func:`blockers`): an optimizer that keeps its step count on the host or
evaluates several times per step (LBFGS), a component that reads the host, draws its random
numbers on the host, or changes with the step number, a stopper without a batched form
(it reads each element's State on the host every step), transparency. A component declares
that it can be captured with ``capturable = True`` (this library's do where they can; a
property may return the reason it cannot, as a string).

Random transforms are captured when their numbers come from the device: ``"rng": "device"``
gives each element a counter-based stream keyed by its seed (see :mod:`mei._counter_rng`).

On a CPU there is no graph: the same step function runs eagerly and its results are copied
into fixed buffers, as a replay overwrites them, so that the numbers and the bookkeeping of
the captured path are tested where no GPU is.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_REQUESTED: ContextVar[bool] = ContextVar("mei_capture_requested", default=False)
_LOGGED: set[str] = set()

#: Eager steps before the capture on a GPU: lazily made state (an optimizer's momentum, the
#: libraries' workspaces) exists by then, so the graph holds only the steady step.
WARMUP_STEPS = 2

Outputs = dict[str, Tensor | None]


@contextlib.contextmanager
def capturing(enabled: bool = True) -> Iterator[None]:
    """Capture the steps of the runs inside (as ``"capture": true`` in their configs)."""
    token = _REQUESTED.set(enabled)
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def requested() -> bool:
    """Whether the caller asked for captured steps (:func:`capturing`)."""
    return _REQUESTED.get()


def describe(component: Any) -> str:
    """``module.Class`` of ``component`` (``module.function`` for a function or class)."""
    plain = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    kind = component if isinstance(component, plain) else type(component)
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", repr(kind))
    return f"{module}.{name}" if module else name


def component_blocker(slot: str, component: Any) -> str | None:
    """Why ``component`` in ``slot`` cannot be captured, or ``None`` if it can."""
    if component is None:
        return None
    flag = getattr(component, "capturable", None)
    if flag is True:
        return None
    if isinstance(flag, str):
        return f"{slot} {describe(component)}: {flag}"
    return (
        f"{slot} {describe(component)} does not declare that it can be captured "
        "(capturable = True: no host reads, no host-drawn random numbers, nothing that "
        "changes with the step number)"
    )


def optimizer_blocker(optimizer: Any) -> str | None:
    """Why ``optimizer``'s step cannot be captured, or ``None`` if it can."""
    cls = type(optimizer)
    if getattr(cls, "capturable", None) is True or cls is torch.optim.SGD:
        return None  # SGD keeps nothing on the host
    if isinstance(optimizer, torch.optim.LBFGS):
        return (
            "optimizer torch.optim.LBFGS evaluates the model as often per step as its line "
            "search decides on the host"
        )
    groups = getattr(optimizer, "param_groups", None) or []
    if groups and all(group.get("capturable") is True for group in groups):
        return None
    name = describe(optimizer)
    if "capturable" in getattr(optimizer, "defaults", {}):
        return (
            f"optimizer {name} keeps its step count on the host; give it capturable=True "
            "(a CUDA feature of torch's optimizers) to capture it"
        )
    return f"optimizer {name} is not known to be graph-safe (class attribute capturable = True)"


def log_blockers(reasons: list[str]) -> None:
    """Log, once per reason and process, why a run's steps are not captured."""
    for reason in reasons:
        if reason not in _LOGGED:
            _LOGGED.add(reason)
            logger.warning("steps not captured, they run eagerly: %s", reason)


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class StepGraph:
    """``body()`` (one step's tensor work, returning its outputs) run so that its outputs
    are at fixed places that every step overwrites.

    On CUDA: :data:`WARMUP_STEPS` eager calls on a side stream, then ``body`` captured as a
    CUDA graph and replayed (the capture itself runs nothing, so the step it records is run
    by its first replay). If the capture fails (a host read inside, say), the failure is
    logged once and every later step calls ``body`` eagerly. Elsewhere: ``body`` eagerly,
    its outputs copied into the fixed buffers, except those that are views of ``anchor``
    (the tensor being optimized), which stay as they are, as in the graph.
    """

    def __init__(self, body: Callable[[], Outputs], anchor: Tensor):
        self.body = body
        self.anchor = anchor
        self.device = anchor.device
        self.calls = 0
        self.failed: str | None = None
        self.graph: Any = None
        self._static: Outputs | None = None
        self._side: Any = None

    @property
    def captured(self) -> bool:
        """Whether the steps are replayed from a CUDA graph now."""
        return self.graph is not None

    def __call__(self) -> Outputs:
        self.calls += 1
        if self.device.type != "cuda":
            return self._fixed(self.body())
        if self.failed is not None:
            return self.body()
        if self.graph is None:
            if self.calls <= WARMUP_STEPS:
                return self._on_side_stream()
            self._capture()
            if self.graph is None:
                return self.body()
        self.graph.replay()
        assert self._static is not None  # set by the capture
        return self._static

    def _fixed(self, outputs: Outputs) -> Outputs:
        if self._static is None:
            self._static = {
                k: v if v is None or _shares_memory(v, self.anchor) else v.clone()
                for k, v in outputs.items()
            }
            return self._static
        for k, v in outputs.items():
            static = self._static[k]
            if v is None or static is None or static is v:
                self._static[k] = v
            else:
                static.copy_(v)
        return self._static

    def _on_side_stream(self) -> Outputs:
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        main = torch.cuda.current_stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            outputs = self.body()
        main.wait_stream(self._side)
        for value in outputs.values():  # used on the main stream from now on
            if value is not None:
                value.record_stream(main)
        return outputs

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._static = self.body()
        except Exception as e:  # anything the step does that a graph cannot hold
            self.failed = f"the capture failed ({type(e).__name__}: {e})".splitlines()[0]
            self._static = None
            self.anchor.grad = None  # the step is run again, eagerly
            log_blockers([self.failed])
            return
        self.graph = graph


__all__ = [
    "StepGraph",
    "capturing",
    "component_blocker",
    "log_blockers",
    "optimizer_blocker",
    "requested",
]
