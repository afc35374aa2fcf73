"""A lab's pipeline on DataJoint 2.x without NNFabrik, written as the README tells users to.

``Dataset``, ``Trainer``, ``ModelSeed`` and ``TrainedModel`` play NNFabrik's part (the trained
model table only needs ``load_model``); ``Selector``, ``TrainedEnsembleModel`` and ``MEI`` are
the user code of the issue's snippet.
"""

from __future__ import annotations

from types import SimpleNamespace

import datajoint as dj
import torch
from mei_testkit import linear_dataset, linear_model, lstsq_trainer

from mei.main import MEITemplate, TrainedEnsembleModelTemplate
from mei.modules import ConstrainedOutputModel


def declare(schema: dj.Schema) -> SimpleNamespace:
    """Declare the lab's tables in ``schema``; return them by name."""

    @schema
    class Dataset(dj.Manual):
        definition = """
        dataset_id : int32
        ---
        dataset_config : <blob>
        """

    @schema
    class Trainer(dj.Manual):
        definition = """
        trainer_id : int32
        ---
        trainer_config : <blob>
        """

    @schema
    class ModelSeed(dj.Manual):
        definition = """
        model_seed : int32
        """

    @schema
    class TrainedModel(dj.Computed):
        definition = """
        -> Dataset
        -> Trainer
        -> ModelSeed
        ---
        score : float64
        state_dict : <blob>
        """

        def make(self, key):
            dataloaders, model = self.load_model(key, include_state_dict=False)
            config = (Trainer & key).fetch1("trainer_config")
            score, _, state = lstsq_trainer(model, dataloaders, key["model_seed"], **config)
            state = {name: value.numpy() for name, value in state.items()}
            self.insert1(dict(key, score=score, state_dict=state))

        def load_model(self, key=None, include_dataloader=True, include_state_dict=True):
            key = self.fetch1("KEY") if key is None else key
            config = (Dataset & key).fetch1("dataset_config")
            seed = key["model_seed"]
            dataloaders = linear_dataset(seed=seed, **config)
            model = linear_model(dataloaders, seed=seed)
            if include_state_dict:
                state = (self & key).fetch1("state_dict")
                model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
            return (dataloaders, model) if include_dataloader else model

    @schema
    class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
        dataset_table = Dataset
        trained_model_table = TrainedModel

    @schema
    class Selector(dj.Computed):
        definition = """
        -> self.dataset_table
        neuron_id: int
        ---
        output_unit: int
        """
        dataset_table = Dataset

        def make(self, key):
            n_units = (Dataset & key).fetch1("dataset_config")["n_units"]
            self.insert(dict(key, neuron_id=100 + u, output_unit=u) for u in range(n_units))

        def get_output_selected_model(self, model, key):
            output_unit = (self & key).fetch1("output_unit")
            return ConstrainedOutputModel(model, output_unit)

    @schema
    class MEI(MEITemplate):
        trained_model_table = TrainedEnsembleModel
        selector_table = Selector

    return SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type)})
