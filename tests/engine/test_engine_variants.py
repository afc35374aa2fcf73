"""Exciting variants (Ding et al. 2026): images at a fraction of the MEI's response, as
different as possible. Known answers on a phase-invariant complex cell and a simple cell that
share a quadrature pair of Gabors (``PhaseCells``), and the diversity index on point sets whose
distances are known."""

import math

import pytest
import torch
from models import PhaseCells, SeparableVideoNeurons, base_config

from mei.errors import ConfigError, InputError, ModelError
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel, TimeWindowResponse
from mei.variants import (
    VARIANTS_DEFAULTS,
    ExcitingVariantsObjective,
    diversity_index,
    exciting_variants,
    exciting_variants_units,
    mean_pairwise_distance,
    validate_variants_config,
)

NORM = 5.0
SHAPE = (1, 1, 15, 15)
FRACTION = 0.85
TOLERANCE = 0.01
"""The responses end within this much (as a fraction of the MEI's) below ``FRACTION``: the
hinge penalty pulls an image back once it is below, one step of SGD at a time."""


def _config(space="pixels", steps=300, **variants):
    return base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 3.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": steps}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": NORM}},
        variants={"n_variants": 8, "fraction": FRACTION, "space": space, **variants},
    )


@pytest.fixture(scope="module")
def cells():
    return PhaseCells()


@pytest.fixture(scope="module")
def meis(cells):
    """The MEIs of the complex cell (unit 0) and the simple cell (unit 1), at norm 5."""
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": NORM}},
    )
    found = [
        gradient_ascent(None, ConstrainedOutputModel(cells, u), config, 0, shape=SHAPE)[0]
        for u in (0, 1)
    ]
    for unit, mei in enumerate(found):  # the known MEI responses: the norm
        assert math.isclose(float(cells(mei)[0, unit]), NORM, rel_tol=1e-4)
    return found


@pytest.fixture(scope="module")
def pixel_runs(cells, meis):
    """Both cells' variants in one batched run, and each in a run of its own."""
    config = _config()
    batched = exciting_variants_units(None, cells, config, 1, [0, 1], meis=meis)
    single = [
        exciting_variants(None, ConstrainedOutputModel(cells, u), config, 1, mei=meis[u])
        for u in (0, 1)
    ]
    return batched, single


# --- the diversity index ------------------------------------------------------------------


def _simplex(n, dim, radius=1.0):
    """``n`` points of a regular simplex centred on 0, norm ``radius``, in ``dim`` >= n."""
    points = torch.eye(n, dim) - torch.eye(n, dim).mean(0)
    return radius * points / points.norm(dim=1, keepdim=True)


def test_the_diversity_index_is_0_for_copies_and_1_for_a_regular_simplex():
    image = torch.randn(1, 1, 4, 4)
    copies = image.repeat(5, 1, 1, 1)[None]  # (1, 5, 1, 4, 4)
    assert float(diversity_index(copies)) == pytest.approx(0.0, abs=1e-6)
    simplex = _simplex(5, 16, radius=3.0).reshape(1, 5, 1, 4, 4)
    assert float(diversity_index(simplex)) == pytest.approx(1.0, abs=1e-6)
    # its mean distance is the largest any 5 points of norm 3 can have: 3 sqrt(2 * 5 / 4)
    assert float(mean_pairwise_distance(simplex)) == pytest.approx(3 * math.sqrt(2.5), rel=1e-6)
    # two antipodal images are a simplex of two; scaling changes the distance, not the index
    pair = torch.stack([image, -image], dim=1)
    assert float(diversity_index(pair)) == pytest.approx(1.0, abs=1e-6)
    assert float(diversity_index(7 * simplex)) == pytest.approx(1.0, abs=1e-6)
    # orthogonal images of equal norm: distance sqrt(2) n, index sqrt((N - 1) / N)
    orthogonal = 2 * torch.eye(4, 16).reshape(1, 4, 1, 4, 4)
    assert float(mean_pairwise_distance(orthogonal)) == pytest.approx(2 * math.sqrt(2), rel=1e-6)
    assert float(diversity_index(orthogonal)) == pytest.approx(math.sqrt(3 / 4), rel=1e-6)
    # batched: one value per group, each from its own group
    groups = torch.cat([copies, simplex])
    torch.testing.assert_close(diversity_index(groups), torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)


def test_the_index_has_a_finite_gradient_where_images_coincide():
    images = torch.randn(1, 1, 1, 4, 4).repeat(1, 3, 1, 1, 1)
    images[0, 2] += 1.0  # two of three images the same
    images.requires_grad_(True)
    diversity_index(images).sum().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad[0, 2].abs().sum() > 0  # the third is pushed away from the pair


def test_the_response_space_index_uses_cosine_distances():
    orthogonal = torch.eye(4)[None] * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]  # (1, 4, 4)
    # pairwise cosine distance 1, whatever the norms; the largest mean is N / (N - 1)
    assert float(mean_pairwise_distance(orthogonal, "responses")) == pytest.approx(1.0)
    assert float(diversity_index(orthogonal, "responses")) == pytest.approx(3 / 4)
    assert float(diversity_index(_simplex(4, 6)[None], "responses")) == pytest.approx(1.0)
    same_direction = torch.tensor([[[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]]])
    assert float(diversity_index(same_direction, "responses")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="space must be one of"):
        diversity_index(orthogonal, "cosine")
    with pytest.raises(ValueError, match="at least two items"):
        diversity_index(orthogonal[:, :1])


def test_the_objective_is_the_index_minus_the_weighted_shortfall():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)  # the inputs' entries are the units' responses

    x = torch.tensor([[4.0, 0.0], [0.0, 1.0], [3.0, 3.0], [0.0, 5.0]])  # 2 elements x 2 rows
    objective = ExcitingVariantsObjective(
        Identity(), [0, 1], [5.0, 5.0], n_variants=2, fraction=0.5, weight=2.0
    )
    # element 0 (unit 0): responses 4, 0 -> shortfalls 0, 0.5; element 1 (unit 1): 3, 5 -> 0, 0
    index = diversity_index(x.reshape(2, 2, 2))
    expected = index - 2.0 * torch.tensor([0.25, 0.0])
    torch.testing.assert_close(objective(x), expected)
    responses, features = objective.measure(x)
    assert responses.tolist() == [[4.0, 0.0], [3.0, 5.0]]
    assert torch.equal(features, x.reshape(2, 2, 2))


# --- the known answers ----------------------------------------------------------------------


def _angles(cells, images):
    p = cells.phases(images)
    return torch.atan2(p[:, 1], p[:, 0])


def _resultant(angles):
    """The length of the mean phase vector: 1 when all phases are equal, 0 when they cancel."""
    return float(torch.stack([angles.cos(), angles.sin()]).mean(1).norm())


def _largest_gap(angles):
    """The largest angle between circularly neighbouring phases."""
    ordered = torch.sort(angles).values
    gaps = torch.diff(torch.cat([ordered, ordered[:1] + 2 * math.pi]))
    return float(gaps.max())


def test_a_complex_cells_variants_span_the_phase_a_simple_cells_do_not(cells, pixel_runs):
    (complex_, simple), _ = pixel_runs
    for variants, index, output in (complex_, simple):
        assert variants.shape == (8, 1, 15, 15)
        assert torch.allclose(variants.flatten(1).norm(dim=1), torch.full((8,), NORM))
        # every variant at the fraction of the MEI's response (MEI response: the norm)
        assert output["reference"] == pytest.approx(NORM, rel=1e-4)
        assert min(output["fractions"]) >= FRACTION - TOLERANCE
        assert output["fractions"] == pytest.approx(
            [r / output["reference"] for r in output["responses"]]
        )
        assert index == output["diversity_index"]
    # the complex cell's variants go around the phase circle: no gap of more than 120
    # degrees, and their phases nearly cancel (for 8 phases all within 90 degrees the mean
    # phase vector would be at least 0.71 long)
    angles = _angles(cells, complex_[0])
    assert _largest_gap(angles) < 2 * math.pi / 3
    assert _resultant(angles) < 0.3
    # the simple cell's stay at its one phase
    assert float(_angles(cells, simple[0]).abs().max()) < 0.2
    assert _resultant(_angles(cells, simple[0])) > 0.99
    # a linear neuron under a fixed norm: the best index is sqrt(1 - fraction^2) (a cone of
    # images around its filter); the complex cell goes far above it
    floor = math.sqrt(1 - FRACTION**2)
    assert simple[1] == pytest.approx(floor, abs=0.02)
    assert complex_[1] > 0.9
    assert complex_[1] > 1.6 * simple[1]


def test_batched_variants_equal_single_runs_element_by_element(pixel_runs):
    batched, single = pixel_runs
    for (b_images, b_index, b_output), (s_images, s_index, s_output) in zip(
        batched, single, strict=True
    ):
        torch.testing.assert_close(b_images, s_images, rtol=0, atol=1e-6)
        assert b_index == pytest.approx(s_index, abs=1e-6)
        assert b_output["responses"] == pytest.approx(s_output["responses"], abs=1e-5)
        assert b_output["log"].keys() == s_output["log"].keys()


def test_batch_size_splits_the_units_with_the_same_numbers(cells, meis):
    one_by_one = exciting_variants_units(
        None, cells, _config(steps=5), 1, [0, 1], meis=meis, batch_size=1
    )
    together = exciting_variants_units(None, cells, _config(steps=5), 1, [0, 1], meis=meis)
    for a, b in zip(one_by_one, together, strict=True):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)


def test_in_response_space_the_complex_cells_variants_tell_phases_apart(cells, meis):
    config = _config(space="responses")
    results = exciting_variants_units(None, cells, config, 1, [0, 1], meis=meis)
    (complex_images, complex_index, complex_out), (_, simple_index, simple_out) = results
    for output in (complex_out, simple_out):
        assert output["space"] == "responses"
        assert min(output["fractions"]) >= FRACTION - TOLERANCE
    # the population (rectified simple cells of four phases) responds differently to each:
    # their phases cover more than a quarter of the circle
    assert _largest_gap(_angles(cells, complex_images)) < 3 * math.pi / 2
    assert complex_index > 0.3
    assert simple_index < 0.05
    # the index is that of the population's responses to the variants
    expected = diversity_index(cells(complex_images)[None], "responses")
    assert complex_index == pytest.approx(float(expected), abs=1e-6)
    single = exciting_variants(None, ConstrainedOutputModel(cells, 0), config, 1, mei=meis[0])
    torch.testing.assert_close(single[0], complex_images, rtol=0, atol=1e-6)


def test_the_reference_is_the_mei_response_unless_given(cells, meis):
    model = ConstrainedOutputModel(cells, 1)
    config = _config(steps=3)
    _, _, output = exciting_variants(None, model, config, 1, mei=meis[1])
    assert output["reference"] == pytest.approx(float(cells(meis[1])[0, 1]))
    _, _, given = exciting_variants(None, model, config, 1, mei=meis[1], reference=2.5)
    assert given["reference"] == 2.5
    assert given["fractions"] == pytest.approx([r / 2.5 for r in given["responses"]])
    # from the config's initial guess: no MEI needed, only its response
    start = _config(steps=3, start="initial")
    images, _, _ = exciting_variants(None, model, start, 1, reference=5.0, shape=SHAPE)
    assert images.shape == (8, 1, 15, 15)


def test_the_variants_start_at_start_noise_times_the_meis_norm_from_it(cells, meis):
    config = _config(steps=0, start_noise=0.2)
    config["optimizer"] = {"path": "torch.optim.SGD", "kwargs": {"lr": 0.0}}  # stay at the start
    del config["postprocessing"]
    images, _, _ = exciting_variants(None, ConstrainedOutputModel(cells, 0), config, 1, mei=meis[0])
    offsets = (images - meis[0]).flatten(1)
    expected = torch.full((8,), 0.2 * float(meis[0].norm()))
    torch.testing.assert_close(offsets.norm(dim=1), expected)
    # each variant its own direction, drawn from the seed
    assert torch.linalg.matrix_rank(offsets) == 8
    again, _, _ = exciting_variants(None, ConstrainedOutputModel(cells, 0), config, 1, mei=meis[0])
    assert torch.equal(images, again)
    other, _, _ = exciting_variants(None, ConstrainedOutputModel(cells, 0), config, 2, mei=meis[0])
    assert not torch.equal(images, other)


# --- config and inputs checked before the first step ---------------------------------------


class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"n_variants": 1}, "'n_variants' must be an integer >= 2, got 1"),
        ({"n_variants": 2.5}, "'n_variants' must be an integer >= 2"),
        ({"fraction": 1.5}, r"'fraction' must be a finite number in \(0.0, 1.0\], got 1.5"),
        ({"fraction": 0}, "'fraction' must be a finite number"),
        ({"weight": -1}, "'weight' must be a finite number > 0.0, got -1"),
        ({"weight": float("nan")}, "'weight' must be a finite number"),
        ({"start_noise": 0}, "'start_noise' must be a finite number > 0.0"),
        ({"space": "cosine"}, "'space' must be one of \\['pixels', 'responses'\\]"),
        ({"start": "zero"}, "'start' must be one of \\['mei', 'initial'\\], got 'zero'"),
        ({"nvariants": 3}, r"unknown setting\(s\) \['nvariants'\]"),
    ],
)
def test_bad_variants_settings_name_the_key_before_the_first_step(cells, meis, variants, message):
    model = _Counting(cells)
    config = _config(steps=3, **variants)
    with pytest.raises(ConfigError, match=r"config\['variants'\].*" + message) as error:
        exciting_variants(None, ConstrainedOutputModel(model, 0), config, 1, mei=meis[0])
    assert error.value.key == "variants"
    assert model.calls == 0
    with pytest.raises(ConfigError, match=message):
        validate_variants_config(config)


def test_config_keys_of_other_kinds_of_mei_are_refused(cells, meis):
    model = ConstrainedOutputModel(cells, 0)
    for key, value in (
        ("n_meis", 2),
        ("mei_class_name", "VEI"),
        ("inhibitory", True),
        ("transparency", True),
    ):
        with pytest.raises(ConfigError, match=rf"config\['{key}'\]") as error:
            exciting_variants(None, model, {**_config(), key: value}, 1, mei=meis[0])
        assert error.value.key == key
    with pytest.raises(ConfigError, match=r"config\['variants'\]: expected a dict"):
        validate_variants_config({**_config(), "variants": [8]})
    with pytest.raises(ConfigError, match=r"config\['optimizer'\]"):
        validate_variants_config({**_config(), "optimizer": {"path": "torch.optim.Nope"}})
    assert exciting_variants.validate_config is validate_variants_config
    assert VARIANTS_DEFAULTS["fraction"] == 0.85


def test_bad_inputs_are_refused_before_the_first_step(cells, meis):
    counting = _Counting(cells)
    model = ConstrainedOutputModel(counting, 0)
    config = _config(steps=3)
    with pytest.raises(InputError, match="pass mei=") as error:
        exciting_variants(None, model, config, 1, reference=5.0, shape=SHAPE)
    assert error.value.argument == "mei"
    with pytest.raises(InputError, match="pass the MEI's response as reference="):
        exciting_variants(None, model, _config(start="initial"), 1, shape=SHAPE)
    for reference in (0.0, -1.0, float("inf")):
        with pytest.raises(InputError, match="must be a positive finite number"):
            exciting_variants(None, model, config, 1, mei=meis[0], reference=reference)
    with pytest.raises(InputError, match=r"an MEI must be one image \(1, C, \.\.\.\)"):
        exciting_variants(None, model, config, 1, mei=meis[0].repeat(2, 1, 1, 1))
    with pytest.raises(InputError, match="the MEI has shape"):
        exciting_variants(None, model, config, 1, mei=meis[0], shape=(1, 1, 8, 8))
    with pytest.raises(InputError, match="needs seed"):
        exciting_variants(None, model, config, mei=meis[0])
    with pytest.raises(InputError, match="got 1 references for 2 units"):
        exciting_variants_units(None, cells, config, 1, [0, 1], references=[5.0], meis=meis)
    assert counting.calls == 0
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(225, 1))
    with pytest.raises(ConfigError, match="space 'responses' measures distances"):
        exciting_variants(None, plain, _config(space="responses"), 1, mei=meis[0])
    # a model of one neuron works; one of several, or reducing the batch, is refused
    images, _, _ = exciting_variants(None, plain, config, 1, reference=1.0, mei=meis[0])
    assert images.shape == (8, 1, 15, 15)
    for model in (cells, ConstrainedOutputModel(cells, 0, target_fn=torch.mean)):
        with pytest.raises(ModelError, match="must return one response per input"):
            exciting_variants(None, model, config, 1, reference=1.0, mei=meis[0])


def test_a_video_models_variants_go_through_the_configs_response():
    """With the config's ``response`` entry, the responses (the reference's too) are the
    model's over the window of output frames, as for a video MEI."""
    neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
    window = {"path": "mei.modules.TimeWindowResponse", "kwargs": {"start": -1}}
    movie = torch.randn(1, 1, 10, 15, 15, generator=torch.Generator().manual_seed(0))
    config = {**_config(steps=5, n_variants=3), "response": window}
    images, _, output = exciting_variants(
        None, ConstrainedOutputModel(neurons, 1), config, 1, mei=movie
    )
    reduced = TimeWindowResponse(neurons, start=-1)
    assert images.shape == (3, 1, 10, 15, 15)
    assert output["reference"] == pytest.approx(float(reduced(movie)[0, 1]), rel=1e-5)
    assert output["responses"] == pytest.approx(reduced(images)[:, 1].tolist(), rel=1e-5)
    batched = exciting_variants_units(None, neurons, config, 1, [1], meis=[movie])
    torch.testing.assert_close(batched[0][0], images, rtol=0, atol=1e-6)
