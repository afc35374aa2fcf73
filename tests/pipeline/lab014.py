"""A lab's pipeline on DataJoint 0.14 with NNFabrik, written as the README tells users to.

Filled by :func:`labs.build`.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import datajoint as dj
from nnfabrik.templates.trained_model import DataInfoBase, TrainedModelBase

from mei.main import MEITemplate, TrainedEnsembleModelTemplate
from mei.modules import ConstrainedOutputModel


def declare(nnf: ModuleType) -> SimpleNamespace:
    """Declare the lab's tables in the schema of the NNFabrik module ``nnf``."""
    schema = nnf.schema
    Dataset = nnf.Dataset

    @schema
    class DataInfo(DataInfoBase):
        """Left empty: NNFabrik's ``load_model(include_dataloader=False)`` looks for the table
        and, finding no entry, builds the model from the dataloaders."""

        nnfabrik = nnf

    nnf.DataInfo = DataInfo

    @schema
    class TrainedModel(TrainedModelBase):
        nnfabrik = nnf

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

    return SimpleNamespace(nnf=nnf, **{k: v for k, v in locals().items() if isinstance(v, type)})
