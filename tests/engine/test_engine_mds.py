"""Most discriminative stimuli (Burg et al., ICLR 2024): the contrastive cluster objective and
the clustering loop, on two synthetic cell types whose filters are known."""

import pytest
import torch
from models import TwoCellTypes, base_config
from torch.nn.functional import cosine_similarity

from mei.clustering import clusters_of, initial_labels, mds, mds_clustering, reassign
from mei.errors import ConfigError, InputError
from mei.methods import gradient_ascent
from mei.modules import ClusterContrast, ConstrainedOutputModel


def _config():
    return base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 2.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 5.0}},
    )


def test_cluster_contrast_is_the_log_softmax_of_cluster_means():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)  # the input's entries are the units' responses

    responses = torch.tensor([[1.0, 3.0, 0.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    contrast = ClusterContrast(Fixed(), [[0, 1], [2, 3]], temperature=0.5)
    means = torch.tensor([[2.0, 1.0], [0.0, 4.0]])
    expected = torch.log_softmax(means / 0.5, dim=1)
    torch.testing.assert_close(contrast(responses), torch.stack([expected[0, 0], expected[1, 1]]))
    one = ClusterContrast(Fixed(), [[0, 1], [2, 3]], targets=[1], temperature=0.5)
    torch.testing.assert_close(one(responses[:1]), expected[0, 1:])  # element's own input only
    with pytest.raises(ValueError, match="at least two clusters"):
        ClusterContrast(Fixed(), [[0, 1]])


def test_reassign_merges_clusters_no_unit_chooses():
    responses = torch.tensor([[5.0, 0.1, 0.2], [1.0, 0.0, 0.1], [2.0, 0.3, 3.0]])  # (K=3, N=3)
    assert reassign(responses) == [0, 1, 1]  # cluster 1 keeps no unit: cluster 2 becomes 1
    assert clusters_of([1, 0, 1, 2]) == [[1], [0, 2], [3]]


def test_the_mds_of_a_cell_type_drives_it_and_not_the_other():
    model = TwoCellTypes()
    contrast = ClusterContrast(model, [list(range(6)), list(range(6, 12))], temperature=1.0)
    stimuli = torch.cat(
        [
            gradient_ascent(
                None,
                ClusterContrast(model, contrast.clusters, [k], 1.0),
                _config(),
                0,
                shape=(1, 1, 15, 15),
            )[0]
            for k in range(2)
        ]
    )
    for k in range(2):
        cosine = cosine_similarity(stimuli[k].flatten(), model.filters[k].flatten(), dim=0)
        assert cosine >= 0.85  # the noise in the weights and the contrast pull it a little
    means = contrast.cluster_responses(stimuli)
    assert means[0, 0] > 10 * means[0, 1] and means[1, 1] > 10 * means[1, 0]


@pytest.mark.parametrize("model_seed", [0, 1])
def test_mds_clustering_recovers_two_cell_types_from_five_clusters(model_seed):
    model = TwoCellTypes(seed=model_seed)
    initial = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]  # five clusters, each mixing both types
    result = mds_clustering(
        model, initial, _config(), shape=(1, 1, 15, 15), seed=0, temperature=1.0
    )
    assert result.converged and len(result.history) >= 3
    assert len(set(result.labels)) == 2
    types = model.types
    # the clusters are the cell types (up to naming)
    assert result.labels == types or result.labels == [1 - t for t in types]
    for k, units in enumerate(clusters_of(result.labels)):
        cell_type = types[units[0]]
        cosine = cosine_similarity(
            result.stimuli[k].flatten(), model.filters[cell_type].flatten(), dim=0
        )
        assert cosine >= 0.85


# --- mds: the method function a method row names -------------------------------------------


def _mds_config(**mds):
    return dict(_config(), mds={"n_clusters": 5, **mds})


def test_the_mds_method_clusters_two_cell_types_and_returns_every_stimulus():
    model = TwoCellTypes()
    stimuli, score, output = mds(None, model, _mds_config(), 0, shape=(1, 1, 15, 15))
    assert stimuli.shape == (2, 1, 15, 15) and stimuli.device.type == "cpu"
    assert output["converged"] is True
    labels = output["labels"]
    assert labels == model.types or labels == [1 - t for t in model.types]
    assert output["history"][0] == [n % 5 for n in range(12)]  # interleaved start
    assert len(output["scores"]) == 2 and score == sum(output["scores"]) / 2
    for k, units in enumerate(clusters_of(labels)):
        cosine = cosine_similarity(
            stimuli[k].flatten(), model.filters[model.types[units[0]]].flatten(), dim=0
        )
        assert cosine >= 0.85
    # the engine's loop with the same start gives the same stimuli
    direct = mds_clustering(model, output["history"][0], _config(), shape=(1, 1, 15, 15))
    assert torch.equal(direct.stimuli, stimuli) and direct.labels == labels


def test_the_mds_method_clusters_the_units_a_wrapper_selects():
    model = TwoCellTypes()
    units = [1, 3, 5, 7, 9, 11, 0, 2]  # the labels follow this order
    selected = ConstrainedOutputModel(model, units)
    stimuli, _, output = mds(None, selected, _mds_config(), 0, shape=(1, 1, 15, 15))
    types = [model.types[u] for u in units]
    assert types == [0, 0, 0, 1, 1, 1, 0, 0]
    assert output["labels"] in (types, [1 - t for t in types])
    assert stimuli.shape == (2, 1, 15, 15)


class FramewiseTypes(torch.nn.Module):
    """The two cell types on each frame of a movie ``(B, 1, T, H, W)``: ``(B, T, N)``."""

    def __init__(self):
        super().__init__()
        self.types = TwoCellTypes()

    def forward(self, x):
        return torch.stack([self.types(x[:, :, t]) for t in range(x.shape[2])], dim=1)


def test_the_mds_method_reduces_a_video_model_over_time_first():
    model = FramewiseTypes()
    config = _mds_config()
    config["response"] = {"path": "mei.modules.TimeWindowResponse", "kwargs": {"start": -1}}
    shape = (1, 1, 3, 15, 15)
    for population in (model, ConstrainedOutputModel(model, list(range(12)))):
        stimuli, _, output = mds(None, population, config, 0, shape=shape)
        types = model.types.types
        assert output["labels"] in (types, [1 - t for t in types])
        assert stimuli.shape == (2, 1, 3, 15, 15)
        for k, units in enumerate(clusters_of(output["labels"])):
            last = stimuli[k, :, -1].flatten()  # only the last frame drives the window
            cosine = cosine_similarity(last, model.types.filters[types[units[0]]].flatten(), dim=0)
            assert cosine >= 0.85


def test_initial_labels():
    assert initial_labels(7, 3, "interleaved", 0) == [0, 1, 2, 0, 1, 2, 0]
    drawn = initial_labels(50, 4, "random", 3)
    assert drawn == initial_labels(50, 4, "random", 3) != initial_labels(50, 4, "random", 4)
    assert set(drawn) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"mds": {"n_clusters": 1}}, "mds", "'n_clusters' must be an integer >= 2, got 1"),
        ({"mds": {"init": "kmeans"}}, "mds", r"'init' must be one of \['interleaved', 'random'\]"),
        ({"mds": {"temperature": 0.0}}, "mds", "'temperature' must be a positive finite"),
        ({"mds": {"rounds": 2.5}}, "mds", "'rounds' must be an integer >= 1"),
        ({"mds": {"clusters": 3}}, "mds", r"unknown setting\(s\) \['clusters'\]"),
        ({"mds": [5]}, "mds", "expected a dict of settings"),
        ({"n_meis": 2}, "n_meis", "one stimulus per cluster"),
        ({"stopper": None}, None, r"missing required key\(s\) \['stopper'\]"),
    ],
)
def test_a_bad_mds_config_names_the_key(change, key, message):
    config = dict(_mds_config(), **change)
    where = rf"config\['{key}'\]: " if key else ""
    with pytest.raises(ConfigError, match=where + message):
        mds.validate_config(config)
    with pytest.raises(ConfigError, match=where + message):
        mds(None, TwoCellTypes(), config, 0, shape=(1, 1, 15, 15))


def test_gradient_ascent_refuses_the_mds_entry():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['mds'\]"):
        gradient_ascent(None, TwoCellTypes(), _mds_config(), 0, shape=(1, 1, 15, 15))


def test_the_mds_method_needs_a_population():
    single = ConstrainedOutputModel(TwoCellTypes(), 0)
    with pytest.raises(InputError, match=r"outputs \(B, N\), N >= 2; got \(1, 1\)"):
        mds(None, single, _mds_config(), 0, shape=(1, 1, 15, 15))
    with pytest.raises(InputError, match="pass dataloaders or shape="):
        mds(None, TwoCellTypes(), _mds_config(), 0)
