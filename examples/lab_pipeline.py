"""A lab's MEI pipeline: the tables, in a module that anything can import (a notebook,
`python workflow.py`, `mei worker lab_pipeline.MEI`). Importing it binds the schema.

The lab records V1 neurons' responses to white-noise images (here simulated with the neurons of
mei.zoo, so that the answer is known), fits models of them, and finds each neuron's MEI.
"""

import os

import datajoint as dj
import torch
from torch.utils.data import DataLoader, TensorDataset

from mei import zoo
from mei.dj.backend import backend
from mei.main import MEITemplate, TrainedEnsembleModelTemplate
from mei.modules import ConstrainedOutputModel

schema = dj.Schema(os.environ.get("LAB_SCHEMA", "lab_mei"))

# Type names that differ between DataJoint 2.x and 0.14 (int32/int, float32/float,
# <blob>/longblob). A lab on one generation simply writes its own.
T = backend().types
NEURONS = {"n_gabors": 6, "n_center_surround": 2, "size": 16}  # the simulated recording
MODEL_SEEDS = (1, 2)  # two fits per dataset, for an ensemble


@schema
class Dataset(dj.Manual):
    definition = f"""
    # responses of V1 neurons to white-noise images
    dataset_id      : {T["int"]}
    ---
    n_images        : {T["int"]}
    """

    def true_filters(self, key):
        """The simulated neurons' filters (N, 1, H, W): what their MEIs should look like."""
        return zoo.v1_filters(**NEURONS)[0]

    def dataloaders(self, key, seed=0):
        """NNFabrik-style loaders {"train": {name: DataLoader of (images, responses)}}."""
        n_images = (self & key).fetch1("n_images")
        g = torch.Generator().manual_seed(int(key["dataset_id"]))
        images = torch.randn(int(n_images), 1, NEURONS["size"], NEURONS["size"], generator=g)
        with torch.no_grad():
            responses = zoo.v1_model(**NEURONS)(images)
        responses = responses + 0.05 * torch.randn(responses.shape, generator=g)
        loader = DataLoader(TensorDataset(images, responses), batch_size=64, shuffle=False)
        return {"train": {"v1": loader}}


def build_model(n_neurons, size):
    """The model architecture: a linear-nonlinear neuron per output, (B, 1, H, W) -> (B, N)."""
    return zoo.FilterBankModel(torch.zeros(n_neurons, 1, size, size), gain=0.5, bias=-1.0)


@schema
class TrainedModel(dj.Computed):
    definition = f"""
    # models fitted to a dataset, one per model_seed
    -> Dataset
    model_seed      : {T["int"]}
    ---
    filters         : {T["blob"]}   # the fitted weights (N, 1, H, W)
    loss            : {T["float"]}  # final mean squared error
    """

    def make(self, key):
        dataloaders = Dataset().dataloaders(key)
        images, responses = dataloaders["train"]["v1"].dataset.tensors
        for model_seed in MODEL_SEEDS:
            torch.manual_seed(model_seed)
            model = build_model(responses.shape[1], images.shape[-1])
            with torch.no_grad():
                model.filters.normal_(0, 0.1)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
            for _ in range(300):
                optimizer.zero_grad()
                loss = ((model(images) - responses) ** 2).mean()
                loss.backward()
                optimizer.step()
            filters = model.filters.detach().numpy()
            self.insert1(dict(key, model_seed=model_seed, filters=filters, loss=loss.item()))

    def load_model(self, key=None, include_dataloader=True, include_state_dict=True):
        """(dataloaders, model) of one trained model, as NNFabrik's TrainedModelBase does."""
        row = (self & key).fetch1() if key is not None else self.fetch1()
        filters = torch.tensor(row["filters"], dtype=torch.float32)
        model = build_model(filters.shape[0], filters.shape[-1])
        if include_state_dict:
            model.load_state_dict({"filters": filters})
        if not include_dataloader:
            return model
        return Dataset().dataloaders({"dataset_id": row["dataset_id"]}), model


@schema
class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
    dataset_table = Dataset
    trained_model_table = TrainedModel


@schema
class Selector(dj.Computed):
    definition = f"""
    # which model output is which neuron
    -> Dataset
    neuron_id       : {T["int"]}
    ---
    output_unit     : {T["int"]}
    """

    def make(self, key):
        n_neurons = len(Dataset().true_filters(key))
        self.insert(dict(key, neuron_id=100 + unit, output_unit=unit) for unit in range(n_neurons))

    def get_output_selected_model(self, model, key):
        output_unit = (self & key).fetch1("output_unit")
        return ConstrainedOutputModel(model, int(output_unit))


@schema
class MEI(MEITemplate):
    trained_model_table = TrainedEnsembleModel
    selector_table = Selector
