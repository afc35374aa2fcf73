"""What a careful user writes by hand, for the benchmarks to compare the engine against.

Each loop does the engine's work for the config from :func:`config`: SGD, Gaussian-blur
preconditioning of the gradient, each element rescaled to a fixed norm after the step, the
start of element ``b`` drawn on the CPU from ``seeds[b]``, and the returned MEIs scored once.
Imports only torch and mei's engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mei.preconditioning import gaussian_blur
from mei.stoppers import MaxSteps

SHAPE = (1, 1, 36, 64)
SIGMA, NORM, LR = 1.0, 10.0, 1.0


def config(device: str, steps: int) -> dict:
    return {
        "device": device,
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": LR}},
        "precondition": {"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": SIGMA}},
        "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": NORM}},
        # exactly ``steps`` steps, as the loops below (NumIterations(n) runs n + 1, as the
        # original library's did)
        "stopper": {"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": steps}},
    }


def _frozen(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _thawed(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def minimal_loop(model: nn.Module, unit: int, steps: int, seed: int, device: str) -> Tensor:
    """One MEI (no final scoring, as the single-MEI figure has always been measured)."""
    _frozen(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*SHAPE, generator=g).to(device).requires_grad_(True)
    optimizer = torch.optim.SGD([x], lr=LR)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (-model(x)[:, unit].sum()).backward()
        x.grad = gaussian_blur(x.grad, SIGMA)
        optimizer.step()
        with torch.no_grad():
            x.mul_(NORM / x.norm())
    _thawed(model)
    return x.detach().cpu()


def minimal_captured_loop(
    model: nn.Module, unit: int, steps: int, seed: int, device: str
) -> Tensor:
    """:func:`minimal_loop` with its step captured by hand as one CUDA graph (CUDA only): two
    eager steps on a side stream, then the step captured and replayed for the rest."""
    _frozen(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*SHAPE, generator=g).to(device).requires_grad_(True)
    optimizer = torch.optim.SGD([x], lr=LR)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (-model(x)[:, unit].sum()).backward()
        x.grad = gaussian_blur(x.grad, SIGMA)
        optimizer.step()
        with torch.no_grad():
            x.mul_(NORM / x.norm())

    warm = min(2, steps)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warm):
            step()
    torch.cuda.current_stream().wait_stream(side)
    if steps > warm:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        for _ in range(steps - warm):
            graph.replay()
    _thawed(model)
    return x.detach().cpu()


def minimal_batched_loop(
    model: nn.Module, units: Sequence[int], steps: int, seeds: Sequence[int], device: str
) -> tuple[Tensor, Tensor]:
    """MEIs of ``units`` in one batch; returns the MEIs and their scores (both on the CPU)."""
    _frozen(model)
    starts = [torch.randn(*SHAPE, generator=torch.Generator().manual_seed(s)) for s in seeds]
    x = torch.cat(starts).to(device).requires_grad_(True)
    rows = torch.arange(len(units), device=device)
    cols = torch.tensor(list(units), device=device)
    optimizer = torch.optim.SGD([x], lr=LR)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (-model(x)[rows, cols].sum()).backward()
        x.grad = gaussian_blur(x.grad, SIGMA)
        optimizer.step()
        with torch.no_grad():
            norms = torch.linalg.vector_norm(x.flatten(1), dim=1).clamp(min=1e-12)
            x.mul_((NORM / norms).view(-1, 1, 1, 1))
    with torch.no_grad():
        scores = model(x)[rows, cols]
    _thawed(model)
    return x.detach().cpu(), scores.cpu()


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


class PerElementMaxSteps(MaxSteps):
    """:class:`~mei.stoppers.MaxSteps` without its batched form (a subclass does not
    inherit it): the engine calls it once per element and step with a State, the path every
    stopper took before batched forms existed."""
