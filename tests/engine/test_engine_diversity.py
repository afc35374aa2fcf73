"""Diverse MEIs: several images of one neuron (``n_meis``) pushed apart by Diversity."""

import pytest
import torch
from models import TwoStimulusNeuron, base_config
from torch.nn.functional import cosine_similarity

from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel
from mei.regularization import Diversity, WeightedSum, diversity


def _cosines(meis, stimuli):
    return torch.tensor(
        [[cosine_similarity(m.flatten(), s.flatten(), dim=0).item() for s in stimuli] for m in meis]
    )


def test_diversity_is_zero_for_orthogonal_and_one_for_equal_images():
    a, b = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    a[0, 0, 0], b[0, 1, 1] = 1.0, 2.0
    groups = torch.stack([a, b, a, -3 * a])  # two elements of two images each
    torch.testing.assert_close(diversity(groups, 2), torch.tensor([0.0, 1.0]))
    assert Diversity(weight=3.0)(groups, 0).shape == (1,)  # by hand: the batch is one group
    combined = WeightedSum([Diversity(weight=2.0)])
    combined.use_group(2)  # what the engine does for n_meis=2
    torch.testing.assert_close(combined(groups, 0), torch.tensor([0.0, 2.0]))


def _config(weight):
    config = base_config(
        n_meis=2,
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 200}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 5.0}},
    )
    if weight:
        config["regularization"] = {
            "path": "mei.regularization.Diversity",
            "kwargs": {"weight": weight},
        }
    return config


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diverse_meis_of_a_neuron_with_two_preferred_stimuli_find_both(seed):
    neuron = TwoStimulusNeuron()
    model = ConstrainedOutputModel(neuron, 0, target_fn=torch.mean)  # one value per group
    plain, _, _ = gradient_ascent(None, model, _config(0), seed, shape=(1, 1, 15, 15))
    assert plain.shape == (2, 1, 15, 15)
    # without the diversity term both images go to the stronger stimulus
    assert bool((_cosines(plain, neuron.stimuli)[:, 1] >= 0.99).all())
    diverse, _, _ = gradient_ascent(None, model, _config(2.0), seed, shape=(1, 1, 15, 15))
    cosines = _cosines(diverse, neuron.stimuli)
    best = cosines.max(dim=0).values  # each stimulus is matched by one of the images
    assert bool((best >= 0.95).all())
    assert cosines.argmax(dim=0).tolist() in ([0, 1], [1, 0])  # by different images
