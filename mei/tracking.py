"""The tracker: logs objectives while an MEI is optimized."""

from __future__ import annotations

from typing import Any

from .domain import State
from .typing import Objective


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
