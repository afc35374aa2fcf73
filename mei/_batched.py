"""The batched forms of the built-in stoppers and objectives (see :mod:`mei.typing`).

Each decides or records for the whole batch in one call exactly what the per-element calls
would; the engine picks them through ``batched(...)`` on the component classes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, overload

from ._components import batched_form
from .domain import StepRecord
from .typing import BatchedStopper

if TYPE_CHECKING:
    from .objectives import RegularIntervalObjective
    from .stoppers import AnyStopper


class NumIterationsBatch:
    """:class:`NumIterations` for a batch: element ``b`` stops at step ``last[b]``; a step
    before the first of them costs one comparison."""

    def __init__(self, last: list[int]):
        self.last = last
        self._next = min(last)  # no element stops before this step

    def reads(self, i_iteration: int) -> Collection[str]:
        return ()

    def __call__(
        self, record: StepRecord, elements: Sequence[int]
    ) -> tuple[Sequence[int], Sequence[Any] | None]:
        i = record.i_iter
        if i < self._next:
            return (), None
        last = self.last
        stopped = [b for b in elements if last[b] <= i]
        self._next = min((last[b] for b in elements if last[b] > i), default=i + 1)
        return stopped, None


def combined(stoppers: Sequence[AnyStopper], every: bool) -> BatchedStopper | None:
    """The batched form of AnyStopper (``every=False``) or AllStoppers: one batched form per
    position of their inner stoppers, or ``None`` if any position lacks one."""
    if len({len(s.stoppers) for s in stoppers}) != 1:
        return None
    parts = [
        batched_form([s.stoppers[k] for s in stoppers]) for k in range(len(stoppers[0].stoppers))
    ]
    if any(part is None for part in parts):
        return None
    return CombinedBatch(parts, every)


class CombinedBatch:
    def __init__(self, parts: list[BatchedStopper], every: bool):
        self.parts = parts
        self.every = every

    def reads(self, i_iteration: int) -> Collection[str]:
        names: set[str] = set()
        for part in self.parts:
            names.update(part.reads(i_iteration))
        return names

    def __call__(
        self, record: StepRecord, elements: Sequence[int]
    ) -> tuple[Sequence[int], Sequence[Any] | None]:
        results = [part(record, elements) for part in self.parts]  # every part, every step
        stopped: set[int]
        if self.every:
            stopped = set(results[0][0]) if all(s for s, _ in results) else set()
            for part_stopped, _ in results[1:]:
                stopped.intersection_update(part_stopped)
        else:
            stopped = set()
            for part_stopped, _ in results:
                stopped.update(part_stopped)
        return sorted(stopped), _Zipped(len(elements), [outputs for _, outputs in results])


class _Zipped(Sequence[list[Any]]):
    """Per element, the list of the parts' outputs; built only for the elements read."""

    def __init__(self, length: int, parts: list[Sequence[Any] | None]):
        self._length = length
        self._parts = parts

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> list[Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[list[Any]]: ...

    def __getitem__(self, index: int | slice) -> list[Any] | list[list[Any]]:
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(self._length))]
        if not -self._length <= index < self._length:
            raise IndexError(index)
        return [None if part is None else part[index] for part in self._parts]


class IntervalBatch:
    """A batch of interval objectives that record the State attribute ``field``."""

    def __init__(self, objectives: Sequence[RegularIntervalObjective], field: str):
        self.field = field
        self.intervals = [o.interval for o in objectives]
        first = self.intervals[0]
        self._uniform = first if all(n == first for n in self.intervals) else None

    def _due(self, i: int) -> bool:
        if self._uniform is not None:
            return i % self._uniform == 0
        return any(i % n == 0 for n in self.intervals)

    def reads(self, i_iteration: int) -> Collection[str]:
        return (self.field,) if self._due(i_iteration) else ()

    def __call__(self, record: StepRecord, elements: Sequence[int]) -> Sequence[Any] | None:
        i = record.i_iter
        if not self._due(i):
            return None
        if self._uniform is None:
            due = [i % self.intervals[b] == 0 for b in elements]
        else:
            due = [True] * len(elements)
        field = self.field
        if field in ("evaluation", "reg_term"):
            if field == "reg_term" and record.reg_term is None:
                return [0.0 if d else None for d in due]
            values = record.cpu(field).reshape(-1).tolist()  # floats, as State gives them
            return [values[b] if d else None for b, d in zip(elements, due, strict=True)]
        return [record.element(field, b) if d else None for b, d in zip(elements, due, strict=True)]
