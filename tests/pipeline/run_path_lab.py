"""A minimal lab declared with mei's own type map, so it runs on either DataJoint generation.

Its model is a linear readout of ``N_UNITS`` units; its method records the device it ran on and
every call, so tests can see which path a key took.
"""

from __future__ import annotations

from types import SimpleNamespace

import datajoint as dj
import torch
from torch import nn

from mei.dj.backend import backend
from mei.main import MEITemplate, TrainedEnsembleModelTemplate
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel

N_UNITS = 4
SHAPE = (1, 1, 4, 4)
CALLS: list[tuple[str, str, int]] = []
"""``(path, device, batch size)`` of every run of :func:`recording_method` in this process."""
BEFORE_RUN: list = []
"""Callables run (and removed), one per run of :func:`recording_method`, before it computes:
tests use them to break things at a chosen moment."""

CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 3}},
}


def recording_method(dataloaders, model, config, seed):
    """``mei.methods.gradient_ascent`` that records how it was called."""
    CALLS.append(("single", config["device"], 1))
    if BEFORE_RUN:
        BEFORE_RUN.pop(0)()
    return gradient_ascent(dataloaders, model, dict(config, device="cpu"), seed)


def _recording_batched(dataloaders, model, config, seed, units, **kwargs):
    CALLS.append(("batched", config["device"], len(units)))
    if BEFORE_RUN:
        BEFORE_RUN.pop(0)()
    return gradient_ascent_units(
        dataloaders, model, dict(config, device="cpu"), seed, units, **kwargs
    )


recording_method.batched = _recording_batched  # type: ignore[attr-defined]
recording_method.validate_config = gradient_ascent.validate_config  # type: ignore[attr-defined]


def declare(
    schema: dj.Schema, *, fill: bool = True, n_units: int = N_UNITS, model=None, shape=SHAPE
) -> SimpleNamespace:
    """Declare the lab in ``schema`` and, with ``fill``, one dataset of ``n_units`` neurons (on
    the model's ``N_UNITS`` outputs, cycling). ``model()`` builds the model (default: a seeded
    linear readout of ``N_UNITS`` units on ``SHAPE`` inputs); the dataloaders give inputs of
    ``shape``."""
    types = backend().types

    @schema
    class Dataset(dj.Manual):
        definition = f"""
        dataset_id : {types["int"]}
        """

    @schema
    class TrainedModel(dj.Manual):
        definition = f"""
        -> Dataset
        model_seed : {types["int"]}
        """

        def load_model(self, key=None, include_dataloader=True, include_state_dict=True):
            if model is None:
                torch.manual_seed(int(key["model_seed"]))
                built = nn.Sequential(nn.Flatten(), nn.Linear(16, N_UNITS))
            else:
                built = model()
            loaders = {"train": {"all": [(torch.zeros(shape), torch.zeros(1, N_UNITS))]}}
            return (loaders, built) if include_dataloader else built

    @schema
    class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
        dataset_table = Dataset
        trained_model_table = TrainedModel

    @schema
    class Selector(dj.Manual):
        definition = f"""
        -> Dataset
        neuron_id : {types["int"]}
        ---
        output_unit : {types["int"]}
        """

        def get_output_selected_model(self, model, key):
            return ConstrainedOutputModel(model, int((self & key).fetch1("output_unit")))

    @schema
    class MEI(MEITemplate):
        trained_model_table = TrainedEnsembleModel
        selector_table = Selector

    tables = SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type)})
    if fill:
        Dataset.insert1({"dataset_id": 1})
        TrainedModel.insert1({"dataset_id": 1, "model_seed": 0})
        TrainedEnsembleModel().create_ensemble({"dataset_id": 1})
        Selector.insert(
            {"dataset_id": 1, "neuron_id": n, "output_unit": n % N_UNITS} for n in range(n_units)
        )
    return tables
