"""Shared by the pipeline tests of both DataJoint generations (tests/pipeline).

A linear "digital twin" whose MEI is known: neuron ``u`` responds ``w_u . x + b_u``, so under a
fixed input norm its MEI is ``norm * w_u / |w_u|`` with response ``norm * |w_u| + b_u``; for an
ensemble, ``w`` and ``b`` are the members' means. The dataset, model and trainer functions follow
NNFabrik's conventions so that real NNFabrik tables can train and load them; the trainer really
fits the model (least squares) to data generated from ground-truth weights.

Database helpers read the servers' addresses from the environment and skip (or, with
``MEI_TEST_REQUIRE_DB=1``, fail) with a visible reason when a server cannot be reached.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mei.initial import RandomNormal
from mei.methods import draw_initial, gradient_ascent

NORM = 5.0
SIDE = 8
N_UNITS = 3

METHOD_CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 60}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": NORM}},
    "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
}

REQUIRE_DB = os.environ.get("MEI_TEST_REQUIRE_DB", "") not in ("", "0")


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail when the environment requires the databases."""
    if REQUIRE_DB:
        pytest.fail(f"{reason} (MEI_TEST_REQUIRE_DB is set, so this is an error)")
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    """A schema name no other test run uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_for(condition, timeout: float = 60.0, what: str = "condition", processes=()):
    """Poll ``condition()`` every 0.05 s until it returns something true, and return that; fail
    after ``timeout`` seconds, or as soon as one of ``processes`` (``Popen``) exits, showing its
    output."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for process in processes:
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(
                    f"while waiting for {what}, process {process.args} exited with "
                    f"{process.returncode}:\n{out}\n{err}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def stored_files(store: Path) -> list[Path]:
    """Every file (not folder) under a file-protocol store."""
    return sorted(p for p in Path(store).rglob("*") if p.is_file())


@functools.cache
def engine_models() -> ModuleType:
    """``tests/engine/models.py``: the engine tests' models with known answers (loaded by its
    path, since ``tests/engine`` is not on the pipeline tests' path)."""
    name = "mei_engine_models"
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parent / "engine" / "models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- NNFabrik-style dataset, model and trainer -----------------------------------------


def linear_dataset(
    seed: int,
    n_units: int = N_UNITS,
    side: int = SIDE,
    n_samples: int = 512,
    truth_seed: int = 0,
    noise: float = 0.1,
    batch_size: int = 128,
    cell_types: bool = False,
) -> dict:
    """Responses of ``n_units`` linear neurons to white-noise images ``(1, side, side)``.

    The neurons' weights come from ``truth_seed``; the images and noise from ``seed``. With
    ``cell_types``, the neurons are the engine tests' two cell types with known Gabor filters
    (``TwoCellTypes(n_units, side, truth_seed)``: the first half type 0), without bias and
    without the rectification.
    """
    truth = torch.Generator().manual_seed(int(truth_seed))
    weight = torch.randn(n_units, side * side, generator=truth)
    bias = torch.randn(n_units, generator=truth)
    if cell_types:
        weight = engine_models().TwoCellTypes(n=n_units, size=side, seed=truth_seed).weights
        bias = torch.zeros(n_units)
    g = torch.Generator().manual_seed(int(seed))
    images = torch.randn(n_samples, 1, side, side, generator=g)
    responses = images.flatten(1) @ weight.T + bias
    responses = responses + noise * torch.randn(responses.shape, generator=g)
    loader = DataLoader(TensorDataset(images, responses), batch_size=batch_size)
    return {"train": {"all": loader}}


def linear_model(dataloaders: dict, seed: int | None = None) -> nn.Module:
    """A linear model sized from the first batch: images ``(B, 1, H, W)`` -> ``(B, n_units)``."""
    images, responses = next(iter(dataloaders["train"]["all"]))
    if seed is not None:
        torch.manual_seed(int(seed))
    return nn.Sequential(nn.Flatten(), nn.Linear(images[0].numel(), responses.shape[1]))


def lstsq_trainer(model, dataloaders, seed, uid=None, cb=None, diverge=False, **kwargs):
    """Fit the linear model by least squares; ``diverge=True`` mimics a diverged run (NaNs)."""
    images, responses = (torch.cat(t) for t in zip(*dataloaders["train"]["all"], strict=True))
    design = torch.cat([images.flatten(1), torch.ones(len(images), 1)], dim=1)
    solution = torch.linalg.lstsq(design, responses).solution
    linear = model[1]
    with torch.no_grad():
        linear.weight.copy_(solution[:-1].T)
        linear.bias.copy_(solution[-1])
        if diverge:
            linear.weight.fill_(float("nan"))
    loss = float(((design @ solution - responses) ** 2).mean())
    return loss, {"mse": loss}, model.state_dict()


# --- methods ------------------------------------------------------------------------------


def overflowing_method(dataloaders, model, config, seed):
    """A real MEI with a score too large for the single-precision ``score`` column."""
    mei, _, output = gradient_ascent(dataloaders, model, config, seed)
    return mei, 1e300, output


# --- the known answer ---------------------------------------------------------------------


def ensemble_unit(models: list[nn.Module], unit: int) -> tuple[torch.Tensor, float]:
    """Mean weight vector and bias of ``unit`` over linear ``models``."""
    weight = torch.stack([m[1].weight[unit].detach() for m in models]).mean(0)
    bias = float(torch.stack([m[1].bias[unit].detach() for m in models]).mean())
    return weight, bias


def check_mei(
    mei: torch.Tensor, score: float, weight: torch.Tensor, bias: float, seed: int
) -> None:
    """``mei`` is the known optimum ``NORM * w / |w|``, ``score`` its response, far above the
    response to the run's initial guess (drawn from ``seed``, at the same norm)."""
    assert mei.shape == (1, 1, SIDE, SIDE)
    optimum = NORM * weight.norm().item() + bias
    cosine = torch.nn.functional.cosine_similarity(mei.flatten(), weight, dim=0).item()
    assert cosine > 0.999, cosine
    assert math.isclose(mei.norm().item(), NORM, rel_tol=1e-4)
    assert math.isclose(score, optimum, rel_tol=1e-3), (score, optimum)
    start = draw_initial(RandomNormal(), (1, 1, SIDE, SIDE), seed)
    start = start * NORM / start.norm()
    initial_response = float(start.flatten() @ weight) + bias
    assert float(mei.flatten() @ weight) + bias > initial_response + 0.5 * NORM * weight.norm()


class Gate:
    """Holds runs of :func:`gated_method` at their start until the test opens it.

    ``Gate(folder).config(METHOD_CONFIG)`` is a method config for ``gated_method``; each run
    (one key, or one batch of keys) leaves a file in ``folder`` when it reaches the gate and
    then waits while the gate is closed, so a test can act on a worker that is certainly in
    the middle of a batch (no sleeping and hoping).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.closed = self.folder / "closed"

    def config(self, config: dict) -> dict:
        return {**config, "gate": str(self.folder)}

    def close(self) -> None:
        self.closed.touch()

    def open(self) -> None:
        self.closed.unlink()

    def arrivals(self) -> int:
        """How many runs reached the gate."""
        return len(list(self.folder.glob("arrived-*")))


def _wait_at_gate(config: dict, timeout: float = 120.0) -> dict:
    """Wait at the gate of ``config``; return the config without it."""
    gate = Gate(config["gate"])
    (gate.folder / f"arrived-{os.getpid()}-{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + timeout
    while gate.closed.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate.folder} was not opened within {timeout} s")
        time.sleep(0.02)
    return {k: v for k, v in config.items() if k != "gate"}


def gated_method(dataloaders, model, config, seed):
    """``gradient_ascent`` that first waits at the :class:`Gate` of its config."""
    return gradient_ascent(dataloaders, model, _wait_at_gate(config), seed)


def _gated_units(dataloaders, model, config, seed, units, **kwargs):
    return gradient_ascent.batched(dataloaders, model, _wait_at_gate(config), seed, units, **kwargs)


gated_method.batched = _gated_units


def nan_score_method(dataloaders, model, config, seed):
    """Returns a NaN score, as a broken custom method might."""
    return torch.zeros(1, 1, SIDE, SIDE), float("nan"), {}


def two_values_method(dataloaders, model, config, seed):
    """Returns the wrong number of things."""
    return torch.zeros(1, 1, SIDE, SIDE), 1.0
