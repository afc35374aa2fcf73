"""Inner units and MaCo from method rows, on every setup: a method row whose ``response`` is
``mei.modules.LayerResponse`` gives a selector's ``ConstrainedOutputModel(model, unit)`` the
MEI of channel ``unit`` of an inner layer; one whose ``parameterization`` is
``mei.parameterization.PhaseFourier`` stores the MaCo MEI and its attribution map in the
row's ``output``."""

from __future__ import annotations

import math

import run_path_lab
import torch
from mei_testkit import engine_models
from torch.nn.functional import cosine_similarity

from mei.dj.backend import backend
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel

SEED = 3


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


CHANNEL_SHAPE = (1, 1, 15, 15)
CHANNEL_CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 60}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 5.0}},
    "response": {
        "path": "mei.modules.LayerResponse",
        "kwargs": {"layer": "core.features.0", "position": [4, 4]},
    },
}


def test_a_method_row_gives_the_channels_of_an_inner_layer(schema, mei_main):
    """The lab's selector picks output unit ``n``; the method row makes that channel ``n`` of
    the first conv (its unit at the centre): each row holds that channel's Gabor filter where
    the unit looks, by plain and by batched populate, with the engine's numbers."""
    lab = run_path_lab.declare(
        schema, n_units=3, model=engine_models().ToyConvNet, shape=CHANNEL_SHAPE
    )
    method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", CHANNEL_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    mei_main.MEISeed().insert1({"mei_seed": SEED + 1})
    lab.MEI().populate(batch_size=3)  # one batched run for the three channels
    assert len(lab.MEI()) == 6

    loaders, ensemble = lab.TrainedEnsembleModel().load_model(
        backend().keys(lab.TrainedEnsembleModel())[0]
    )
    filters = engine_models().gabor_bank(4)
    for seed in (SEED, SEED + 1):
        for unit in range(3):
            key = {**method, "mei_seed": seed, "neuron_id": unit}
            mei = lab.MEI().load_mei(key)
            placed = torch.zeros(CHANNEL_SHAPE)
            placed[0, 0, 4:11, 4:11] = filters[unit]
            assert _cos(mei, placed) >= 0.95
            expected, score, _ = gradient_ascent(
                loaders, ConstrainedOutputModel(ensemble, unit), CHANNEL_CONFIG, seed
            )
            torch.testing.assert_close(mei, expected, rtol=1e-5, atol=1e-5)
            assert math.isclose((lab.MEI & key).fetch1("score"), score, rel_tol=1e-5)


STEPS = 40
PHASE_CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.Adam", "kwargs": {"lr": 0.1}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
    "parameterization": {
        "path": "mei.parameterization.PhaseFourier",
        "kwargs": {"decay_power": 1.0, "norm": 2.0},
    },
}


def test_a_method_row_stores_the_maco_mei_and_its_attribution_map(schema, mei_main):
    """The lab's linear neurons ``w . x``: the gradient with respect to the image is ``w`` at
    every step, so the attribution map is exactly ``(steps + 1) |w|``; the MEI has the fixed
    magnitude spectrum scaled to norm 2. Plain and batched rows equal the engine's run."""
    lab = run_path_lab.declare(schema, n_units=2)
    method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", PHASE_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    mei_main.MEISeed().insert1({"mei_seed": SEED + 1})
    lab.MEI().populate(batch_size=2)
    assert len(lab.MEI()) == 4

    loaders, ensemble = lab.TrainedEnsembleModel().load_model(
        backend().keys(lab.TrainedEnsembleModel())[0]
    )
    weight = ensemble.members[0][1].weight.detach()
    for seed in (SEED, SEED + 1):
        for unit in range(2):
            key = {**method, "mei_seed": seed, "neuron_id": unit}
            mei = lab.MEI().load_mei(key)
            output = lab.MEI().load_output(key)
            [attribution] = output["attribution"]["values"]
            assert output["attribution"]["times"] == [STEPS]
            expected_map = (STEPS + 1) * weight[unit].abs().reshape(run_path_lab.SHAPE)
            torch.testing.assert_close(attribution, expected_map, rtol=1e-5, atol=1e-5)
            assert math.isclose(float(mei.norm()), 2.0, rel_tol=1e-5)
            expected, score, engine_output = gradient_ascent(
                loaders, ConstrainedOutputModel(ensemble, unit), PHASE_CONFIG, seed
            )
            torch.testing.assert_close(mei, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(attribution, engine_output["attribution"]["values"][0])
            assert math.isclose((lab.MEI & key).fetch1("score"), score, rel_tol=1e-5)


def test_a_method_row_with_a_given_magnitude_spectrum(schema, mei_main):
    """The magnitude of a lab's images, stored in the method row as nested lists: the stored
    MEI has that spectrum (scaled to the norm) and the engine's numbers."""
    lab = run_path_lab.declare(schema, n_units=1)
    magnitude = torch.arange(1.0, 13.0).reshape(4, 3)
    magnitude[:, 0] = torch.tensor([1.0, 2.0, 3.0, 2.0])  # row k equals row -k: real images
    magnitude[:, 2] = torch.tensor([4.0, 5.0, 6.0, 5.0])
    config = {
        **PHASE_CONFIG,
        "parameterization": {
            "path": "mei.parameterization.PhaseFourier",
            "kwargs": {"magnitude": magnitude.tolist(), "norm": 2.0},
        },
    }
    method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", config)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    key = {**method, "mei_seed": SEED, "neuron_id": 0}
    mei = lab.MEI().load_mei(key)
    spectrum = torch.fft.rfft2(mei, norm="ortho").abs()[0, 0]
    torch.testing.assert_close(spectrum / spectrum[0, 0], magnitude / magnitude[0, 0])
    assert math.isclose(float(mei.norm()), 2.0, rel_tol=1e-5)
    loaders, ensemble = lab.TrainedEnsembleModel().load_model(
        backend().keys(lab.TrainedEnsembleModel())[0]
    )
    expected, _, _ = gradient_ascent(loaders, ConstrainedOutputModel(ensemble, 0), config, SEED)
    torch.testing.assert_close(mei, expected, rtol=1e-5, atol=1e-5)
