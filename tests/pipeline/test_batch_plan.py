"""Which selected models batched populate runs together (no database needed)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from mei.dj.run import _batch_plan
from mei.modules import ConstrainedOutputModel


def scaled_mean(responses: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * responses.mean()


def test_partials_of_one_target_with_equal_arguments_share_a_run():
    model = torch.nn.Linear(4, 3)
    selected = [
        ConstrainedOutputModel(model, unit, partial(scaled_mean, scale=2.0), {"data_key": "a"})
        for unit in (0, 2)
    ]  # a selector builds a new partial for every key, as lab code does
    plan = _batch_plan(model, selected)
    assert plan is not None and plan[2] == [0, 2] and plan[1] == {"data_key": "a"}
    other = ConstrainedOutputModel(model, 1, partial(scaled_mean, scale=3.0), {"data_key": "a"})
    assert _batch_plan(model, [*selected, other]) is None
    session = ConstrainedOutputModel(model, 1, selected[0].target_fn, {"data_key": "b"})
    assert _batch_plan(model, [*selected, session]) is None
    assert _batch_plan(model, [ConstrainedOutputModel(model, [0, 1])]) is None  # two units


def test_a_selector_with_the_older_get_objective_is_used():
    from mei.dj.run import selected_model
    from mei.errors import ComponentError

    class OlderSelector:
        def get_objective(self, model, key):
            return ConstrainedOutputModel(model, key["unit"])

    class NoSelection:
        pass

    model = torch.nn.Linear(4, 3)
    chosen = selected_model(OlderSelector(), model, {"unit": 2})
    assert chosen.constraint == 2 and chosen.model is model
    with pytest.raises(ComponentError, match="get_output_selected_model.*get_objective"):
        selected_model(NoSelection(), model, {"unit": 2})
