"""A stored method row recomputes what sinzlab/mei computed (issue 9).

``tests/engine/reference/*.pt`` hold the original library's MEI, score and tracker log for the
cases of ``reference_cases.py`` (recorded by ``scripts/record_reference.py`` from sinzlab/mei
51f2d13, and b2f4098 for ``mei.postprocessing``). On the CPU in float32 this library must give
the same MEI and score within 1e-5 and the same tracker log, in a single run and as an element
of a batched run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import reference_cases as cases
import torch

from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel

RECORDS = sorted((Path(__file__).parent / "reference").glob("*.pt"))
TOLERANCE = 1e-5


def _record(path: Path) -> tuple[str, int, dict]:
    name, _, seed = path.stem.rpartition("-")
    return name, int(seed), torch.load(path, weights_only=False)


def _assert_same_log(log: dict, expected: dict) -> None:
    assert log.keys() == expected.keys()
    for objective, entries in expected.items():
        assert log[objective]["times"] == entries["times"]
        for got, want in zip(log[objective]["values"], entries["values"], strict=True):
            if isinstance(want, torch.Tensor):
                assert got.shape == want.shape
                assert (got - want).abs().max().item() <= TOLERANCE
            else:
                assert isinstance(got, float) and abs(got - want) <= TOLERANCE


def _single(name: str, seed: int) -> tuple[torch.Tensor, float, dict]:
    config, _, _ = cases.CASES[name]
    model = cases.selected_model(ConstrainedOutputModel, cases.TwoSessionNet(), name)
    np.random.seed(seed)  # random backgrounds draw from numpy's global generator
    if name in cases.KEYWORD_CASES:
        return gradient_ascent(
            model=model, config=copy.deepcopy(config), seed=seed, shape=cases.SHAPE
        )
    return gradient_ascent(cases.dataloaders(), model, copy.deepcopy(config), seed)


def test_every_case_has_a_record():
    recorded = {_record(p)[:2] for p in RECORDS}
    assert recorded == {(name, s) for name, (_, _, seeds) in cases.CASES.items() for s in seeds}


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_a_single_run_gives_the_originals_numbers(path):
    name, seed, expected = _record(path)
    mei, score, log = _single(name, seed)
    assert mei.shape == expected["mei"].shape
    assert (mei - expected["mei"]).abs().max().item() <= TOLERANCE
    assert abs(score - expected["score"]) <= TOLERANCE
    _assert_same_log(log, expected["log"])


BATCHABLE = [
    p
    for p in RECORDS
    if isinstance(cases.CASES[_record(p)[0]][1][1], int)
    and not cases.CASES[_record(p)[0]][0].get("transparency")
    and _record(p)[0] not in cases.KEYWORD_CASES
]


@pytest.mark.parametrize("path", BATCHABLE, ids=[p.stem for p in BATCHABLE])
def test_each_element_of_a_batched_run_gives_the_originals_numbers(path):
    name, seed, expected = _record(path)
    config, (data_key, unit, target_fn), _ = cases.CASES[name]
    others = [u for u in range(cases.N_UNITS) if u != unit]
    units = [others[0], unit, others[1], unit]
    results = gradient_ascent_units(
        cases.dataloaders(),
        cases.TwoSessionNet(),
        copy.deepcopy(config),
        seed,
        units,
        target_fn=target_fn,
        forward_kwargs={"data_key": data_key},
    )
    for mei, score, log in (results[1], results[3]):
        assert (mei - expected["mei"]).abs().max().item() <= TOLERANCE
        assert abs(score - expected["score"]) <= TOLERANCE
        _assert_same_log(log, expected["log"])
