"""One set of checks for every tensor component, in the style of kornia's ``BaseTester``.

A test class derives from :class:`ComponentTester` and lists its components as :class:`Case`
entries (a dotted path and kwargs, as in a method config). Every case is then run over
``(B, C, H, W)`` and ``(B, C, T, H, W)`` inputs, float32 and float64, on the CPU and (when
there is one) a CUDA device, checking that

- the output's dtype and device follow the input's;
- batch elements are independent: element ``b``'s output equals the output of a run on
  element ``b`` alone (random components are reseeded with ``b``'s own seed);
- for differentiable components (:class:`DifferentiableComponentTester`),
  ``torch.autograd.gradcheck`` passes in float64.

5-D inputs: a case either works, raises a clear error (``five_d="raises"`` with the expected
message), or is recorded as unsupported with an unclear error (``five_d="unclear"``: the 5-D
tests are strict xfails, so they start failing once 5-D support arrives). A component that
acts on the time axis of movies refuses images (``four_d="raises"``). A refusing component
refuses twice: when called, and when the engine asks its ``check_shape`` before the first
step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from mei.import_helpers import resolve_path

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]

#: batch of 3, one channel (GrayscaleToRGB needs C=1), width 6 (L2ToReference's reference)
SHAPES = {4: (3, 1, 7, 6), 5: (3, 1, 3, 7, 6)}
#: tiny inputs keep gradcheck fast
GRAD_SHAPES = {4: (2, 1, 5, 6), 5: (2, 1, 2, 3, 6)}
SEEDS = [11, 12, 13]
I_ITERATION = 3
FIVE_D_ISSUE = "5-D support: issue 13"


@dataclass(frozen=True)
class Case:
    """A component as a config names it; ``build()`` makes a fresh one."""

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    five_d: str = "works"  # "works", "raises" (a clear error: ``error``) or "unclear"
    error: str = ""
    four_d: str = "works"  # "works" or "raises" (``error``)
    name: str = ""

    @property
    def id(self) -> str:
        return self.name or self.path.rsplit(".", 1)[1]

    def build(self) -> Any:
        return resolve_path(self.path)(**copy.deepcopy(self.kwargs))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``case`` and ``ndim`` from the test class's ``CASES``."""
    if "case" not in metafunc.fixturenames:
        return
    params = []
    for case in metafunc.cls.CASES:
        for ndim in (4, 5):
            marks = []
            if ndim == 5 and case.five_d == "unclear":
                marks = [pytest.mark.xfail(strict=True, reason=FIVE_D_ISSUE)]
            params.append(pytest.param(case, ndim, marks=marks, id=f"{case.id}-{ndim}d"))
    metafunc.parametrize("case, ndim", params)


def _random(shape: Sequence[int], dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


class ComponentTester:
    """The shared checks; subclasses set ``CASES``."""

    CASES: Sequence[Case] = ()

    @staticmethod
    def call(component: Any, x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Run ``component`` on ``x`` as the engine does; random ones are reseeded first, so
        that repeated calls draw the same numbers."""
        if hasattr(component, "reseed"):
            component.reseed(list(seeds))
        return component(x, I_ITERATION)

    def raises_clearly(self, case: Case, ndim: int, x: torch.Tensor) -> bool:
        """For a case that refuses inputs of ``ndim`` dimensions: check its errors (from the
        call and from ``check_shape``) and return True."""
        refused = {4: case.four_d, 5: case.five_d}[ndim] == "raises"
        if not refused:
            return False
        with pytest.raises((ValueError, NotImplementedError), match=case.error):
            self.call(case.build(), x, SEEDS[: len(x)])
        with pytest.raises(ValueError, match=case.error):
            case.build().check_shape(tuple(x.shape))
        return True

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_dtype_and_device_follow_the_input(self, case, ndim, dtype, device):
        x = _random(SHAPES[ndim], dtype, device)
        if self.raises_clearly(case, ndim, x):
            return
        out = self.call(case.build(), x, SEEDS)
        assert out.dtype == x.dtype
        assert out.device == x.device
        assert len(out) == len(x)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_batch_elements_are_independent(self, case, ndim, dtype, device):
        x = _random(SHAPES[ndim], dtype, device)
        if self.raises_clearly(case, ndim, x):
            return
        batched = self.call(case.build(), x, SEEDS)
        for b, seed in enumerate(SEEDS):
            alone = self.call(case.build(), x[b : b + 1], [seed])
            torch.testing.assert_close(batched[b : b + 1], alone)


class DifferentiableComponentTester(ComponentTester):
    """The shared checks plus ``gradcheck``, for components the gradient flows through."""

    @pytest.mark.parametrize("device", DEVICES)
    def test_gradcheck(self, case, ndim, device):
        x = _random(GRAD_SHAPES[ndim], torch.float64, device, seed=1)
        if self.raises_clearly(case, ndim, x):
            return
        component = case.build()
        seeds = SEEDS[: len(x)]
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: self.call(component, t, seeds), (x,))
