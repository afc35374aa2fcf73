"""Validating MEIs (mei.validation): scores on models that did not make them, and against the
most exciting natural images of a dataset, on linear neurons whose answers are known exactly.

Weights, biases, MEIs and images are small integers: every response is an exact float, so
batched and one-by-one results must be equal, not just close."""

import pytest
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from mei.errors import InputError, ModelError
from mei.modules import EnsembleModel
from mei.validation import (
    ensemble_members,
    read_images,
    score_meis,
    top_natural_images,
    validate_meis,
)

SIDE = 2  # images (1, 2, 2): four pixels
N_UNITS = 4
N_IMAGES = 10
MULTIPLIERS = (3, 7, 9, 1)  # coprime with 10


class Linear(nn.Module):
    """``x.flatten(1) @ weight.T + bias``; optional ``data_key`` (a session) adds its offset."""

    def __init__(self, weight, bias, offsets=None):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32))
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32))
        self.offsets = offsets or {}

    def forward(self, x, data_key=None):
        return x.flatten(1) @ self.weight.T + self.bias + self.offsets.get(data_key, 0.0)


def _integers(seed, *shape, low=-3, high=4):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed)).float()


def _model(seed):
    return Linear(_integers(seed, N_UNITS, SIDE * SIDE), _integers(seed + 100, N_UNITS))


def _pixels():
    """Image ``j``'s pixel ``u`` is ``(j * MULTIPLIERS[u]) % 10``: each column holds 0..9 once,
    so unit ``u`` of the pixel model (identity weights) has a known ranking of the images."""
    return torch.tensor(
        [[(j * m) % N_IMAGES for m in MULTIPLIERS] for j in range(N_IMAGES)],
        dtype=torch.float32,
    )


def _pixel_model():
    return Linear(torch.eye(N_UNITS), torch.zeros(N_UNITS))


def _loaders(images, **loader_kwargs):
    dataset = TensorDataset(images.reshape(-1, 1, SIDE, SIDE), torch.zeros(len(images), N_UNITS))
    return {"train": {"session": DataLoader(dataset, **{"batch_size": 3, **loader_kwargs})}}


def _ranking(column, k):
    """The ``k`` best (index, value) of ``column``, ties to the lower index: plain Python."""
    return sorted(enumerate(column.tolist()), key=lambda iv: (-iv[1], iv[0]))[:k]


def test_the_mei_response_on_a_validating_model_is_its_units_linear_response(device):
    maker, validator = _model(0), _model(1)
    units = [2, 0, 3, 2]
    meis = _integers(5, len(units), 1, SIDE, SIDE)
    scores = score_meis(validator.to(device), meis, units)
    expected = torch.tensor(
        [
            float(meis[i].flatten() @ validator.weight[u].detach().cpu())
            + float(validator.bias[u].detach())
            for i, u in enumerate(units)
        ]
    )
    assert scores.device.type == "cpu"
    assert torch.equal(scores, expected)
    # the MEI of a linear neuron under a norm, norm * w / |w|, scores norm * |w| + b on its model
    weight = maker.weight[1].detach()
    optimum = (3.0 * weight / weight.norm()).reshape(1, 1, SIDE, SIDE)
    on_itself = score_meis(maker, optimum, [1])
    torch.testing.assert_close(on_itself, 3.0 * weight.norm().reshape(1) + maker.bias[1].detach())


def test_batched_scores_equal_one_by_one_scores():
    model = _model(2)
    units = [3, 1, 1, 0, 2]
    meis = _integers(6, len(units), 1, SIDE, SIDE)
    batched = score_meis(model, meis, units)
    single = torch.cat([score_meis(model, meis[i : i + 1], [u]) for i, u in enumerate(units)])
    assert torch.equal(batched, single)
    chunked = score_meis(model, list(meis.split(1)), units, batch_size=2)  # a list of MEIs
    assert torch.equal(chunked, batched)


def test_each_units_best_natural_images_are_the_known_ones():
    pixels = _pixels()
    natural = top_natural_images(_pixel_model(), _loaders(pixels), k=3)
    assert natural.units == list(range(N_UNITS)) and natural.n_images == N_IMAGES
    for u in range(N_UNITS):
        ranking = _ranking(pixels[:, u], 3)
        assert natural.indices[u].tolist() == [i for i, _ in ranking]
        assert natural.responses[u].tolist() == [v for _, v in ranking]
        assert natural.responses[u, 0] == 9.0  # every column holds 0 .. 9
    # the best image of unit 0 ((j * 3) % 10 == 9) is image 3
    assert natural.indices[0, 0] == 3


def test_reading_the_dataset_shows_a_bar_of_the_images_read(capsys):
    pixels = _pixels()
    shown = top_natural_images(_pixel_model(), _loaders(pixels), k=3, progress=True)
    bar = capsys.readouterr().err
    assert "natural images" in bar and f"/{N_IMAGES} " in bar  # the dataset size as total
    quiet = top_natural_images(_pixel_model(), _loaders(pixels), k=3, progress=False)
    assert capsys.readouterr().err == ""
    assert torch.equal(shown.indices, quiet.indices)


def test_top_images_of_all_units_equal_each_unit_alone_and_ignore_loader_order():
    pixels = _pixels()
    model = _model(3)
    together = top_natural_images(model, _loaders(pixels), [3, 1], k=4)
    for row, u in enumerate([3, 1]):
        alone = top_natural_images(model, _loaders(pixels), [u], k=4)
        assert torch.equal(alone.indices[0], together.indices[row])
        assert torch.equal(alone.responses[0], together.responses[row])
        expected = _ranking(model(pixels.reshape(-1, 1, SIDE, SIDE)).detach()[:, u], 4)
        assert together.indices[row].tolist() == [i for i, _ in expected]
    shuffled = top_natural_images(model, _loaders(pixels, shuffle=True), [3, 1], k=4)
    assert torch.equal(shuffled.indices, together.indices)
    assert torch.equal(shuffled.responses, together.responses)


def test_indices_are_dataset_indices_of_the_loaders_subset():
    pixels = _pixels()
    subset = [1, 4, 6, 8]
    loaders = _loaders(pixels, sampler=SubsetRandomSampler(subset))
    natural = top_natural_images(_pixel_model(), loaders, [0], k=2)
    expected = _ranking(pixels[subset, 0], 2)
    assert natural.indices[0].tolist() == [subset[i] for i, _ in expected]
    assert natural.n_images == len(subset)
    images = read_images(loaders, natural.indices, tier="train")
    assert images.shape == (1, 2, 1, SIDE, SIDE)
    assert torch.equal(images[0, 0].flatten(), pixels[natural.indices[0, 0]])
    with pytest.raises(InputError, match="no image at index 0"):
        read_images(loaders, [0])


def test_samplers_drawing_with_replacement_rank_the_whole_dataset():
    pixels = _pixels()
    dataset = _loaders(pixels)["train"]["session"].dataset
    expected = top_natural_images(_pixel_model(), _loaders(pixels), k=3)
    for sampler in (
        RandomSampler(dataset, replacement=True, num_samples=4),
        WeightedRandomSampler(torch.ones(N_IMAGES), num_samples=3),
    ):
        loaders = {"train": {"session": DataLoader(dataset, sampler=sampler, batch_size=3)}}
        natural = top_natural_images(_pixel_model(), loaders, k=3)
        assert torch.equal(natural.indices, expected.indices)
        assert natural.n_images == N_IMAGES


def test_ties_go_to_the_lower_index_and_a_plain_iterable_is_indexed_by_position():
    images = torch.zeros(5, 1, SIDE, SIDE)
    images[[1, 3], 0, 0, 0] = 2.0  # unit 0 ties between images 1 and 3
    batches = [(images[:2],), (images[2:],)]  # no dataset: positions in one pass
    natural = top_natural_images(_pixel_model(), {"test": batches}, [0], k=2, tier="test")
    assert natural.indices[0].tolist() == [1, 3]
    assert natural.responses[0].tolist() == [2.0, 2.0]
    assert torch.equal(read_images({"test": batches}, [3], tier="test")[0], images[3])


def test_the_fraction_is_the_mei_response_over_the_best_natural_response(device):
    pixels = _pixels()
    meis = torch.zeros(N_UNITS, 1, SIDE, SIDE)
    for u in range(N_UNITS):
        meis[u].view(-1)[u] = 18.0  # twice the best natural pixel value
    halved = Linear(0.5 * torch.eye(N_UNITS), torch.zeros(N_UNITS))
    models = {"pixels": _pixel_model().to(device), "halved": halved.to(device)}
    result = validate_meis(models, meis, list(range(N_UNITS)), _loaders(pixels), k=2)
    assert result.models == ["pixels", "halved"]
    assert torch.equal(result.mei_responses, torch.tensor([[18.0] * 4, [9.0] * 4]))
    assert torch.equal(result.natural_responses[..., 0], torch.tensor([[9.0] * 4, [4.5] * 4]))
    assert torch.equal(result.fraction, torch.full((2, N_UNITS), 2.0))
    assert result.natural_indices.shape == (2, N_UNITS, 2)
    assert torch.equal(result.natural_indices[0], result.natural_indices[1])  # same ranking


def test_validating_on_the_members_of_an_ensemble_equals_each_member_alone():
    members = [_model(10), _model(11), _model(12)]
    ensemble = EnsembleModel(*members)
    named = ensemble_members(ensemble)
    assert list(named) == ["member 0", "member 1", "member 2"]
    units = [0, 2, 2]
    meis = _integers(7, 3, 1, SIDE, SIDE)
    loaders = _loaders(_pixels())
    result = validate_meis(named, meis, units, loaders, k=3)
    for m, member in enumerate(members):
        assert torch.equal(result.mei_responses[m], score_meis(member, meis, units))
        natural = top_natural_images(member, loaders, units, k=3)
        assert torch.equal(result.natural_indices[m], natural.indices)
        assert torch.equal(result.natural_responses[m], natural.responses)
    assert ensemble_members(members[0]) == {"model": members[0]}


def test_a_session_is_chosen_by_data_key():
    pixels = _pixels()
    model = Linear(torch.eye(N_UNITS), torch.zeros(N_UNITS), offsets={"b": 100.0})
    loaders = {
        "train": {
            "a": _loaders(pixels)["train"]["session"],
            "b": _loaders(pixels.flip(0))["train"]["session"],
        }
    }
    result = validate_meis([model], torch.zeros(1, 1, SIDE, SIDE), [0], loaders, k=1,
                           forward_kwargs={"data_key": "b"})  # fmt: skip
    assert result.mei_responses.tolist() == [[100.0]]
    assert result.natural_responses.tolist() == [[[109.0]]]
    assert result.natural_indices.tolist() == [[[N_IMAGES - 1 - 3]]]  # image 3, flipped
    with pytest.raises(InputError, match="name one with data_key") as caught:
        top_natural_images(model, loaders)
    assert caught.value.argument == "data_key"


def test_bad_input_raises_a_typed_error_naming_the_value_before_reading_the_dataset():
    model = _model(0)
    loaders = _loaders(_pixels())
    meis = torch.zeros(2, 1, SIDE, SIDE)
    reads = []

    class Watched(TensorDataset):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    with pytest.raises(InputError, match=r"units\[1\] = 7 is out of range.*4 output units"):
        validate_meis([model], meis, [0, 7], loaders)
    with pytest.raises(InputError, match=r"units\[0\] = -1 is out of range"):
        score_meis(model, meis, [-1, 0])
    with pytest.raises(InputError, match="units.* = 4 is out of range"):
        top_natural_images(model, loaders, [4])
    with pytest.raises(InputError, match="2 MEIs .* and 3 units") as caught:
        validate_meis([model], meis, [0, 1, 2], loaders)
    assert caught.value.argument == "units"
    with pytest.raises(InputError, match="integer unit index, got 1.5"):
        score_meis(model, meis, [0, 1.5])
    with pytest.raises(InputError, match="got shape \\(2, 2\\)") as caught:
        score_meis(model, torch.zeros(2, 2), [0, 1])
    assert caught.value.argument == "meis"
    with pytest.raises(InputError, match=r"MEIs are of shape \(1, 3, 3\).*\(1, 2, 2\)") as caught:
        validate_meis([model], torch.zeros(2, 1, 3, 3), [0, 1], loaders)
    assert caught.value.argument == "meis"
    empty = {"train": {"s": DataLoader(TensorDataset(torch.zeros(0, 1, SIDE, SIDE)))}}
    with pytest.raises(InputError, match=r"dataloaders\['train'\]\['s'\] yields no images"):
        validate_meis([model], meis, [0, 1], empty)
    with pytest.raises(InputError, match="no tier 'test'"):
        top_natural_images(model, loaders, tier="test")
    with pytest.raises(InputError, match="fewer than k = 11"):
        top_natural_images(model, loaders, k=11)
    with pytest.raises(InputError, match="k must be a positive integer"):
        validate_meis([model], meis, [0, 1], loaders, k=0)
    with pytest.raises(InputError, match="models is empty"):
        validate_meis({}, meis, [0, 1], loaders)

    class Video(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, None, :].repeat(1, 3, 1)

    with pytest.raises(ModelError, match=r"responses \(B, N\).*\(2, 3, 4\)"):
        score_meis(Video(), meis, [0, 1])
    watched = {"train": {"s": DataLoader(Watched(torch.zeros(3, 1, SIDE, SIDE)))}}
    with pytest.raises(InputError, match="out of range"):
        validate_meis([model], meis, [0, 9], watched)
    assert reads == [0]  # the units were checked after the first image, before the rest


def test_model_modes_are_restored():
    model = _model(0)
    model.train()
    score_meis(model, torch.zeros(1, 1, SIDE, SIDE), [0])
    top_natural_images(model, _loaders(_pixels()), k=1)
    assert model.training


def test_one_forward_pass_for_all_meis_and_one_pass_over_the_loader_for_all_units():
    model = _model(4)
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    score_meis(model, _integers(8, 6, 1, SIDE, SIDE), [0, 1, 2, 3, 0, 1])
    assert calls == [6]
    calls.clear()
    top_natural_images(model, _loaders(_pixels()), k=2)  # 10 images, batches of 3
    assert calls == [3, 3, 3, 1]
    calls.clear()
    validate_meis([model, _model(5)], _integers(8, 6, 1, SIDE, SIDE), [0, 1, 2, 3, 0, 1],
                  _loaders(_pixels()), k=2)  # fmt: skip
    assert calls == [6, 3, 3, 3, 1]  # the hook is on the first model only
