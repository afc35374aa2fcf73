"""open-retina's published MEI and MDS recipes from method rows in real MEI tables: a lab whose
trained model is open-retina's core-readout model (random weights), each row the stimulus
open-retina's own optimizer finds for that neuron (or group) and seed."""

from __future__ import annotations

import math

import datajoint as dj
import openretina_testkit as ort
import run_path_lab
import torch

from mei.dj.backend import backend
from mei.main import MEITemplate
from mei.methods import gradient_ascent
from mei.modules import ClusterContrast, ConstrainedOutputModel

SEED = 3
NEURONS = (5, 9)


def test_open_retinas_mei_recipe_from_a_method_row(schema, mei_main):
    objective = ort.openretina("insilico.stimulus_optimization.objective")
    regularizer = ort.openretina("insilico.stimulus_optimization.regularizer")
    lab = run_path_lab.declare(schema, fill=False, model=ort.model, shape=ort.SHAPE)
    lab.Dataset.insert1({"dataset_id": 1})
    lab.TrainedModel.insert1({"dataset_id": 1, "model_seed": 0})
    lab.TrainedEnsembleModel().create_ensemble({"dataset_id": 1})
    lab.Selector.insert({"dataset_id": 1, "neuron_id": n, "output_unit": n} for n in NEURONS)
    config = {**ort.MEI_CONFIG, "model_forward_kwargs": {"data_key": ort.SESSION}}
    method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", config)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    mei_main.MEISeed().insert1({"mei_seed": SEED + 1})
    lab.MEI().populate(batch_size=2)  # one batched run for both neurons of the new seed
    assert len(lab.MEI()) == 4

    model = ort.model()
    clip = regularizer.ChangeNormJointlyClipRangeSeparately(min_max_values=ort.RANGES, norm=5.0)
    loaders, ensemble = lab.TrainedEnsembleModel().load_model(
        backend().keys(lab.TrainedEnsembleModel())[0]
    )
    for seed in (SEED, SEED + 1):
        for neuron in NEURONS:
            key = {**method, "mei_seed": seed, "neuron_id": neuron}
            stored = lab.MEI().load_mei(key)
            reducer = objective.SliceMeanReducer(axis=0, start=10, length=10)
            increase = objective.IncreaseObjective(model, neuron, ort.SESSION, reducer)
            theirs = ort.optimize_stimulus(increase, seed, 10.0, 10, [clip], clip)
            torch.testing.assert_close(stored, theirs, rtol=0, atol=1e-5)
            expected, score, _ = gradient_ascent(
                loaders, ConstrainedOutputModel(ensemble, neuron), config, seed
            )
            torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-6)
            assert math.isclose((lab.MEI & key).fetch1("score"), score, rel_tol=1e-5)


def test_open_retinas_mds_recipe_from_a_method_row(schema, mei_main):
    """The MDS recipe in an MEI table whose selector gives ``ClusterContrast`` of the lab's
    model (the first group's stimulus): the row is open-retina's most discriminative
    stimulus for that group and seed."""
    objective = ort.openretina("insilico.stimulus_optimization.objective")
    regularizer = ort.openretina("insilico.stimulus_optimization.regularizer")
    lab = run_path_lab.declare(schema, fill=False, model=ort.model, shape=ort.SHAPE)
    Dataset = lab.Dataset  # noqa: N806 (the selector's definition refers to it by this name)

    class GroupSelector(dj.Manual):
        definition = lab.Selector.definition

        def get_output_selected_model(self, model, key):
            return ClusterContrast(
                model,
                ort.CLUSTERS,
                targets=[0],
                temperature=1.6,
                forward_kwargs={"data_key": ort.SESSION},
            )

    class GroupMEI(MEITemplate):
        trained_model_table = lab.TrainedEnsembleModel
        selector_table = GroupSelector

    schema(GroupSelector)
    schema(GroupMEI)
    assert Dataset is lab.Dataset
    lab.Dataset.insert1({"dataset_id": 1})
    lab.TrainedModel.insert1({"dataset_id": 1, "model_seed": 0})
    lab.TrainedEnsembleModel().create_ensemble({"dataset_id": 1})
    GroupSelector.insert1({"dataset_id": 1, "neuron_id": 0, "output_unit": 0})
    method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", ort.MDS_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 40})
    GroupMEI().populate()
    stored = GroupMEI().load_mei({**method, "mei_seed": 40, "neuron_id": 0})

    model = ort.model()
    clip = regularizer.ChangeNormJointlyClipRangeSeparately(ort.MDS_RANGES, 30.0)
    lowpass = regularizer.TemporalGaussianLowPassFilterProcessor(sigma=0.5, kernel_size=5)
    reducer = objective.SliceMeanReducer(axis=0, start=10, length=10)
    contrast = objective.ContrastiveNeuronObjective(
        model, ort.CLUSTERS[0], ort.CLUSTERS[1:], ort.SESSION, reducer, temperature=1.6
    )
    theirs = ort.optimize_stimulus(contrast, 40, 100.0, 10, [clip, lowpass], clip)
    torch.testing.assert_close(stored, theirs, rtol=0, atol=1e-5)
