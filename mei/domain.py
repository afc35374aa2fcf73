"""The values an optimization step produces: :class:`State` (one MEI, one step) and :class:`Input`.

A step optimizes a whole batch of MEIs; the engine hands every stopper and tracker one
:class:`State` per batch element. States are *lazy*: they keep the step's tensors on the device
and copy to the CPU only the attributes somebody reads, so a stopper that looks only at
``i_iter`` never forces a device synchronization. Stoppers and objectives with a batched form
(see :mod:`mei.typing`) read the batch's :class:`StepRecord` directly and need no States.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

_FIELDS = (
    "i_iter",
    "evaluation",
    "reg_term",
    "input_",
    "transformed_input",
    "post_processed_input",
    "grad",
    "preconditioned_grad",
    "stopper_output",
)


#: The State attributes a :class:`StepRecord` holds as batch tensors.
RECORD_FIELDS = frozenset(_FIELDS) - {"i_iter", "stopper_output"}


@dataclass(eq=False)
class StepRecord:
    """Device-side record of one step of a batch; shared by the batch's lazy States.

    Tensor attributes have the batch as first dimension; ``reg_term`` is ``None`` without
    regularization. CPU copies are made once per attribute and step, on first use.

    A step asked to keep only some attributes (``MEI.record_step(keep=...)``) records ``None`` for
    the others (``dropped`` names them), so that nobody's unread copies cost time or memory;
    reading a dropped attribute raises ``RuntimeError``. ``stopper_outputs`` holds the batched
    stopper's outputs, ``{element: output}``, for the States made after it ran.

    ``group`` is the number of input rows per element (the original library's ``n_meis``: one
    element is several images with one evaluation); tensors have ``B * group`` rows, the
    evaluation and the regularization term ``B`` values.
    """

    i_iter: int
    evaluation: Tensor
    reg_term: Tensor | None
    input_: Tensor | None
    transformed_input: Tensor | None
    post_processed_input: Tensor | None
    grad: Tensor | None
    preconditioned_grad: Tensor | None
    dropped: frozenset[str] = frozenset()
    group: int = 1

    def __post_init__(self) -> None:
        self._cpu: dict[str, Tensor] = {}
        self.stopper_outputs: Mapping[int, Any] | None = None

    def cpu(self, name: str) -> Tensor:
        """The whole batch's ``name`` on the CPU (one transfer, cached)."""
        if name not in self._cpu:
            if name in self.dropped:
                raise RuntimeError(
                    f"step {self.i_iter} did not keep {name!r}: a batched stopper or objective "
                    "read what its reads() did not name"
                )
            self._cpu[name] = getattr(self, name).detach().to("cpu")
        return self._cpu[name]

    def element(self, name: str, index: int) -> Any:
        """Element ``index`` of ``name`` as the original library gave it: floats for scalars,
        CPU tensors with a batch dimension of one for inputs and gradients."""
        if name == "reg_term" and self.reg_term is None:
            return 0.0
        values = self.cpu(name)
        if name in ("evaluation", "reg_term"):
            return float(values.reshape(-1)[index] if values.dim() else values)
        rows = self.group
        return values[index * rows : (index + 1) * rows].clone()


class State:
    """What one MEI looked like after one optimization step.

    Attributes (the original library's contract): ``i_iter`` (0-based step index),
    ``evaluation`` (float, the model's response to the transformed input before the step),
    ``reg_term`` (float, 0.0 without regularization), ``input_`` (the input before the step),
    ``transformed_input``, ``post_processed_input`` (the input after the step), ``grad`` (the
    gradient of the minimized loss ``reg_term - evaluation``, as in the original library),
    ``preconditioned_grad`` and ``stopper_output``.
    Tensors are CPU tensors with a batch dimension of one.
    """

    __slots__ = ("_values", "_record", "_index")
    _values: dict[str, Any]
    _record: StepRecord | None
    _index: int

    if TYPE_CHECKING:  # the fields, served by __getattr__
        i_iter: int
        evaluation: float
        reg_term: float
        input_: Tensor
        input: Tensor  # the original's name for input_
        transformed_input: Tensor
        post_processed_input: Tensor
        grad: Tensor
        preconditioned_grad: Tensor
        stopper_output: Any

    def __init__(
        self,
        i_iter: int,
        evaluation: float,
        reg_term: float,
        input_: Tensor,
        transformed_input: Tensor,
        post_processed_input: Tensor,
        grad: Tensor,
        preconditioned_grad: Tensor,
        stopper_output: Any = None,
    ):
        self._record = None
        self._index = 0
        self._values = dict(
            i_iter=i_iter,
            evaluation=evaluation,
            reg_term=reg_term,
            input_=input_,
            transformed_input=transformed_input,
            post_processed_input=post_processed_input,
            grad=grad,
            preconditioned_grad=preconditioned_grad,
            stopper_output=stopper_output,
        )

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> State:
        """A State from a dict with its attributes (``input_`` for the input before the step),
        as :meth:`to_dict` gives them."""
        return cls(**state)

    @classmethod
    def from_record(cls, record: StepRecord, index: int) -> State:
        """A lazy State for batch element ``index`` of ``record``."""
        state = cls.__new__(cls)
        state._record = record
        state._index = index
        outputs = record.stopper_outputs
        output = None if outputs is None else outputs.get(index)
        state._values = {"i_iter": record.i_iter, "stopper_output": output}
        return state

    def _get(self, name: str) -> Any:
        values = self._values
        if name not in values:
            # only a lazy State lacks values; one built by hand has them all
            assert self._record is not None
            values[name] = self._record.element(name, self._index)
        return values[name]

    def __getattr__(self, name: str) -> Any:
        if name in _FIELDS:
            return self._get(name)
        if name == "input":  # the original library's attribute name for input_
            return self._get("input_")
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELDS:
            self._values[name] = value
        elif name in State.__slots__:
            object.__setattr__(self, name, value)
        else:
            # a subclass (a lab's State with more attributes) has a __dict__ for them
            try:
                object.__setattr__(self, name, value)
            except AttributeError:
                raise AttributeError(f"State has no attribute {name!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """All attributes, materialized."""
        return {name: self._get(name) for name in _FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        mine, theirs = self.to_dict(), other.to_dict()
        for name in _FIELDS:
            a, b = mine[name], theirs[name]
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                if not (isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        lazy = "" if self._record is None else f", element={self._index}"
        return f"State(i_iter={self._values['i_iter']}{lazy})"


class Input:
    """A tensor being optimized (the original library's wrapper), kept for user code."""

    def __init__(self, tensor: Tensor):
        tensor.requires_grad_()
        self.tensor = tensor

    @property
    def grad(self) -> Tensor | None:
        return self.tensor.grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        self.tensor.grad = value

    gradient = grad  # this library's first name for it

    def clone(self) -> Input:
        """A new Input holding a copy of the tensor (gradients flow back to this one)."""
        return Input(self.tensor.clone())

    @property
    def data(self) -> Tensor:
        return self.tensor.data

    @data.setter
    def data(self, value: Tensor) -> None:
        self.tensor.data = value

    @property
    def cloned_grad(self) -> Tensor:
        grad = self.tensor.grad
        if grad is None:
            raise AttributeError("the input has no gradient yet: run a backward pass first")
        return grad.detach().cpu().clone()

    @property
    def cloned_data(self) -> Tensor:
        return self.tensor.detach().cpu().clone()

    def extract(self) -> Tensor:
        return self.tensor.detach().cpu().squeeze()

    def __repr__(self) -> str:
        return f"Input({self.tensor!r})"
