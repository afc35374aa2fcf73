"""Most discriminative stimuli (Burg et al., ICLR 2024): the contrastive cluster objective and
the clustering loop, on two synthetic cell types whose filters are known."""

import pytest
import torch
from models import TwoCellTypes, base_config
from torch.nn.functional import cosine_similarity

from mei.clustering import clusters_of, mds_clustering, reassign
from mei.methods import gradient_ascent
from mei.modules import ClusterContrast


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
