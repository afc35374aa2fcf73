"""The tracker: logs objectives while an MEI is optimized."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from ._components import batched_form
from .domain import State, StepRecord
from .typing import BatchedObjective, Objective


class Tracker:
    """Calls each named objective with every state and logs what it returns.

    ``log`` is ``{name: {"times": [i_iter, ...], "values": [value, ...]}}``; ``None`` results
    are not logged.
    """

    def __init__(self, **objectives: Objective):
        self.objectives = objectives
        self.log: dict[str, dict[str, list[Any]]] = {
            name: {"times": [], "values": []} for name in objectives
        }

    def track(self, current_state: State) -> None:
        for name, objective in self.objectives.items():
            result = objective(current_state)
            if result is not None:
                self.log[name]["times"].append(current_state.i_iter)
                self.log[name]["values"].append(result)

    def __repr__(self) -> str:
        return f"Tracker({', '.join(f'{k}={v!r}' for k, v in self.objectives.items())})"


class BatchTracking:
    """The trackers of a batch (``trackers[b]`` for element ``b``), stepped together.

    An objective name whose objectives all have a batched form (see
    :class:`~mei.typing.BatchedObjective`) is computed for the whole batch in one call and
    logged into each tracker's ``log``; the others are called per element with its State, as
    :meth:`Tracker.track` calls them. Trackers of another class than :class:`Tracker` (which
    may track differently), or with different objective names, are called per element.
    """

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)
        names = list(self.trackers[0].objectives) if self.trackers else []
        self.whole = not all(
            type(t) is Tracker and list(t.objectives) == names for t in self.trackers
        )
        self.batched: list[tuple[str, BatchedObjective]] = []
        self.per_element: list[str] = []
        if self.whole:
            return
        for name in names:
            form = batched_form([t.objectives[name] for t in self.trackers])
            if form is None:
                self.per_element.append(name)
            else:
                self.batched.append((name, form))

    @property
    def needs_states(self) -> bool:
        """Whether some objective is called per element (with a State)."""
        return self.whole or bool(self.per_element)

    def reads(self, i_iteration: int) -> Collection[str] | None:
        """The record attributes read at step ``i_iteration``; ``None``: possibly all."""
        if self.needs_states:
            return None
        names: set[str] = set()
        for _, form in self.batched:
            names.update(form.reads(i_iteration))
        return names

    def track(
        self, record: StepRecord, elements: Sequence[int], state: Callable[[int], State]
    ) -> None:
        """Track step ``record`` of ``elements``; ``state(b)`` gives element ``b``'s State."""
        trackers = self.trackers
        if self.whole:
            for b in elements:
                trackers[b].track(state(b))
            return
        i = record.i_iter
        for name, form in self.batched:
            values = form(record, elements)
            if values is None:
                continue
            for b, value in zip(elements, values, strict=True):
                if value is not None:
                    log = trackers[b].log[name]
                    log["times"].append(i)
                    log["values"].append(value)
        for b in elements if self.per_element else ():
            current = state(b)
            for name in self.per_element:
                result = trackers[b].objectives[name](current)
                if result is not None:
                    log = trackers[b].log[name]
                    log["times"].append(current.i_iter)
                    log["values"].append(result)
