"""A lab's pipeline on DataJoint 0.14 with NNFabrik, written as the README tells users to."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import datajoint as dj
from mei_testkit import N_UNITS
from nnfabrik.templates.trained_model import TrainedModelBase

from mei.integration import make_hash
from mei.main import MEITemplate, TrainedEnsembleModelTemplate
from mei.modules import ConstrainedOutputModel


def declare(nnf: ModuleType) -> SimpleNamespace:
    """Declare the lab's tables in the schema of the NNFabrik module ``nnf``."""
    schema = nnf.schema
    Dataset = nnf.Dataset

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


def fill(lab: SimpleNamespace) -> dict:
    """Add a dataset, a model, a trainer and a diverging trainer, two seeds; train them all.

    Returns the keys ``dataset``, ``trainer`` and ``diverging``.
    """
    nnf = lab.nnf
    nnf.Fabrikant().add_entry("tester", "tester@example.org", "mei tests")
    dataset = nnf.Dataset().add_entry(
        "mei_testkit.linear_dataset", {"n_units": N_UNITS}, dataset_fabrikant="tester"
    )
    nnf.Model().add_entry("mei_testkit.linear_model", {}, model_fabrikant="tester")
    trainer = nnf.Trainer().add_entry("mei_testkit.lstsq_trainer", {}, trainer_fabrikant="tester")
    diverging = nnf.Trainer().add_entry(
        "mei_testkit.lstsq_trainer", {"diverge": True}, trainer_fabrikant="tester"
    )
    assert trainer["trainer_hash"] == make_hash({})
    nnf.Seed().insert([{"seed": 1}, {"seed": 2}])
    lab.TrainedModel().populate()
    return {"dataset": dataset, "trainer": trainer, "diverging": diverging}
