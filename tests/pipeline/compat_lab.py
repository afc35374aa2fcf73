"""Lab code written for sinzlab/mei, as ``test_dj_compat.py`` runs it unchanged.

- method functions: several MEIs per key (the original's ``n_meis``), a ring MEI that takes a
  ``ring_mask``, and one that returns the config and seed it was given;
- a CSRF V1 lab: a ``Dataset`` table in NNFabrik's shape (``dataset_fn``, ``dataset_config``
  listing pickled datafiles), a trained model with one readout per session (called with
  ``data_key``), the ``CSRFV1ObjectiveTemplate`` selector and an MEI table on top.

Tables are declared with mei's type map, so the module works on both DataJoint generations.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import datajoint as dj
import numpy as np
import torch
from torch import nn

from mei.dj.backend import backend
from mei.main import CSRFV1ObjectiveTemplate, MEITemplate, TrainedEnsembleModelTemplate

SHAPE = (1, 1, 4, 4)
BATCHED_CALLS: list[int] = []
"""Batch sizes of every call of the batched form of :func:`several_meis_method`."""


def missing_device() -> str:
    """A device this machine does not have."""
    if not torch.cuda.is_available():
        return "cuda"
    return f"cuda:{torch.cuda.device_count()}"


# --------------------------------------------------------------------------- methods
def several_meis_method(dataloaders, model, config, seed):
    """``config["n_meis"]`` MEIs for one unit, as one ``(n_meis, 1, 4, 4)`` tensor, and one
    float score (the mean response), as the original library's ``n_meis`` runs return them."""
    generator = torch.Generator().manual_seed(int(seed))
    meis = torch.randn(int(config["n_meis"]), *SHAPE[1:], generator=generator)
    with torch.no_grad():
        score = float(model(meis).mean())
    return meis, score, {"n_meis": int(config["n_meis"])}


def _several_meis_batched(dataloaders, model, config, seed, units, **kwargs):
    """A batched form that knows nothing of ``n_meis``: one MEI per unit."""
    BATCHED_CALLS.append(len(units))
    return [(torch.zeros(SHAPE), 0.0, {}) for _ in units]


several_meis_method.batched = _several_meis_batched


def ring_method(dataloaders, model, config, seed, ring_mask):
    """A ring MEI: the mask times ``config["value"]``."""
    mei = ring_mask * float(config["value"])
    return mei, float(mei.sum()), {"seed": seed}


def echo_method(dataloaders, model, config, seed):
    """Returns, as its output, the config and the seed it was called with."""
    return torch.zeros(SHAPE), 0.0, {"config": config, "seed": seed}


# --------------------------------------------------------------------------- CSRF V1 lab
SESSIONS = {"s1": [7, 3, 9], "s2": [5, 2]}
"""Neuron ids (``unit_indices``) of each session, in the order of its readout's outputs."""
N_OUTPUTS = 3


class SessionModel(nn.Module):
    """One linear readout of ``N_OUTPUTS`` units per session, chosen by ``data_key``."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.readouts = nn.ModuleDict({s: nn.Linear(16, N_OUTPUTS) for s in SESSIONS})

    def forward(self, x, data_key=None):
        return self.readouts[data_key](x.flatten(1))


def write_datafiles(folder: Path) -> list[str]:
    """One pickled datafile per session, in the shape of a ``csrf_v1`` dataset's files."""
    paths = []
    for session, unit_indices in SESSIONS.items():
        path = Path(folder) / f"{session}.pickle"
        with open(path, "wb") as f:
            pickle.dump({"session_id": session, "unit_indices": np.array(unit_indices)}, f)
        paths.append(str(path))
    return paths


def declare_csrf(schema: dj.Schema) -> SimpleNamespace:
    """Declare the CSRF V1 lab in ``schema``."""
    types = backend().types

    @schema
    class Dataset(dj.Manual):
        definition = f"""
        dataset_fn : varchar(64)
        dataset_hash : varchar(32)
        ---
        dataset_config : {types["blob"]}
        """

    @schema
    class TrainedModel(dj.Manual):
        definition = f"""
        -> Dataset
        model_seed : {types["int"]}
        """

        def load_model(self, key=None, include_dataloader=True, include_state_dict=True):
            model = SessionModel(int(key["model_seed"]))
            loaders = {
                "train": {s: [(torch.zeros(SHAPE), torch.zeros(1, N_OUTPUTS))] for s in SESSIONS}
            }
            return (loaders, model) if include_dataloader else model

    @schema
    class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
        dataset_table = Dataset
        trained_model_table = TrainedModel

    @schema
    class CSRFV1Objective(CSRFV1ObjectiveTemplate):
        dataset_table = Dataset

    @schema
    class MEI(MEITemplate):
        trained_model_table = TrainedEnsembleModel
        selector_table = CSRFV1Objective

    return SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type)})
