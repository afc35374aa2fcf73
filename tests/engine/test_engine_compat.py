"""What code written for sinzlab/mei touches keeps working (issue 9): call protocols, config
keys, the input shape per data key, target functions, and the original's small APIs."""

from __future__ import annotations

import logging

import pytest
import reference_cases as cases
import torch
from models import LinearNeurons, SmallConvNet, base_config

from mei.config import resolve_config
from mei.domain import Input, State
from mei.errors import ComponentError, ConfigError, ModelError
from mei.import_helpers import import_object
from mei.methods import get_input_dimensions, gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel, ContrastiveOutputModel, EnsembleModel
from mei.objectives import Objective
from mei.optimization import MEI, optimize
from mei.stoppers import NumIterations
from mei.tracking import Tracker

SHAPE = (1, 1, 8, 8)


def test_a_target_function_reducing_to_one_number_works_for_a_batch_of_one():
    model = ConstrainedOutputModel(LinearNeurons(n=3), [0, 2], target_fn=torch.mean)
    assert model(torch.randn(1, 1, 8, 8)).dim() == 0
    mei, score, _ = gradient_ascent(None, model, base_config(), 0, shape=SHAPE)
    assert mei.shape == SHAPE and isinstance(score, float)


def test_a_model_giving_several_values_for_one_input_is_refused():
    model = ConstrainedOutputModel(LinearNeurons(n=3), [0, 2])
    with pytest.raises(ModelError, match=r"one value per input.*got \(1, 2\)"):
        gradient_ascent(None, model, base_config(), 0, shape=SHAPE)


def test_batched_runs_apply_the_target_function_per_element():
    net = LinearNeurons(n=4)

    def target(y):
        return (y**2).sum()  # reduces to 0-d: it must see one element at a time

    batched = gradient_ascent_units(
        None, net, base_config(), 3, [0, 1, 3], shape=SHAPE, target_fn=target
    )
    for (mei, score, _), unit in zip(batched, [0, 1, 3], strict=True):
        single = gradient_ascent(
            None, ConstrainedOutputModel(net, unit, target), base_config(), 3, shape=SHAPE
        )
        # float32 rounding of the batched reduction: relative to the score (about 600 here)
        assert (mei - single[0]).abs().max() <= 1e-5
        assert abs(score - single[1]) <= 1e-6 * abs(single[1])


def test_the_later_keyword_call_and_positional_order_work():
    model = ConstrainedOutputModel(LinearNeurons(), 1)
    expected = gradient_ascent(None, model, base_config(), 4, shape=SHAPE)
    by_keyword = gradient_ascent(model=model, config=base_config(), seed=4, shape=SHAPE)
    later_positional = gradient_ascent(model, base_config(), 4, SHAPE)
    for result in (by_keyword, later_positional):
        assert torch.equal(result[0], expected[0]) and result[1] == expected[1]
    with pytest.raises(ValueError, match="shape="):
        gradient_ascent(model=model, config=base_config(), seed=4)


def test_the_shape_comes_from_the_loader_of_the_units_data_key():
    loaders = cases.dataloaders()
    assert get_input_dimensions(loaders, data_key="session-b") == (4, 1, 12, 20)
    assert get_input_dimensions(loaders) == (4, 1, 16, 16)  # no data key: the first loader
    net = cases.TwoSessionNet()
    for key, size in (("session-a", (16, 16)), ("session-b", (12, 20))):
        model = ConstrainedOutputModel(net, 0, forward_kwargs={"data_key": key})
        mei, _, _ = gradient_ascent(loaders, model, base_config(), 0)
        assert mei.shape[-2:] == size


def test_model_forward_kwargs_reach_the_model_for_the_run_only():
    net = cases.TwoSessionNet()
    model = ConstrainedOutputModel(net, 0, forward_kwargs={"data_key": "session-a"})
    config = base_config(model_forward_kwargs={"data_key": "session-b"})
    mei, _, _ = gradient_ascent(cases.dataloaders(), model, config, 0)
    assert mei.shape[-2:] == (12, 20)  # the shape followed the config's data key
    assert model.forward_kwargs == {"data_key": "session-a"}


def test_n_meis_gives_several_images_with_one_score():
    model = ConstrainedOutputModel(LinearNeurons(n=2), 0, target_fn=torch.mean)
    mei, score, _ = gradient_ascent(None, model, base_config(n_meis=3), 0, shape=SHAPE)
    assert mei.shape == (3, 1, 8, 8) and isinstance(score, float)
    assert not torch.equal(mei[0], mei[1])  # three starts


def _transparent(background_shape):
    return base_config(
        transparency=True,
        transparency_weight=0.5,
        background={
            "path": "mei.legacy.ops.WhiteNoiseBackground",
            "kwargs": {"mean": 0.0, "std": 1.0, "shape": background_shape},
        },
    )


def test_a_background_of_another_size_is_named():
    """A lab with sessions of several image sizes gives one a background of another's size:
    the error names the background and both shapes (torch's broadcasting error named none)."""
    model = ConstrainedOutputModel(LinearNeurons(n=2), 0)
    mei, _, _ = gradient_ascent(None, model, _transparent([8, 8]), 0, shape=SHAPE)
    assert mei.shape == (1, 2, 8, 8)  # the image and its transparency
    with pytest.raises(ComponentError, match=r"background \(WhiteNoiseBackground\).*\(6, 10\)"):
        gradient_ascent(None, model, _transparent([6, 10]), 0, shape=SHAPE)


def test_inhibitory_minimizes():
    model = ConstrainedOutputModel(LinearNeurons(), 0)
    up = gradient_ascent(None, model, base_config(), 0, shape=SHAPE)
    down = gradient_ascent(None, model, base_config(inhibitory=True), 0, shape=SHAPE)
    assert model(down[0]).item() < model(up[0]).item()
    assert down[1] < 0 < up[1]  # the score is the negated response, as the original's


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_meis": 0}, r"n_meis.*positive integer, got 0"),
        ({"mei_shape": [1, 0, 4]}, r"mei_shape.*positive sizes"),
        ({"model_forward_kwargs": ["data_key"]}, r"model_forward_kwargs.*dict"),
        ({"transparency": True}, r"background.*add a 'background' entry"),
        ({"transparency_weight": "high"}, r"transparency_weight.*finite number"),
        ({"inhibitory": "yes"}, r"inhibitory.*true or false"),
        ({"score": "best"}, r"score.*'last_step', 'final'"),
        ({"rng": "numpy"}, r"rng.*'original', 'separate'"),
        ({"from_the_future": 1}, r"unknown key\(s\) \['from_the_future'\]"),
    ],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(base_config(**change))


def test_configs_that_cannot_share_a_run_fall_back_and_say_why(caplog):
    net = LinearNeurons(n=3)
    config = base_config(n_meis=2)
    with caplog.at_level(logging.INFO, logger="mei.methods"):
        results = gradient_ascent_units(
            None, net, config, 1, [0, 2], shape=SHAPE, target_fn=torch.mean
        )
    assert "one by one" in caplog.text and "n_meis=2" in caplog.text
    single = gradient_ascent(
        None, ConstrainedOutputModel(net, 2, torch.mean), config, 1, shape=SHAPE
    )
    assert torch.equal(results[1][0], single[0])


def test_a_custom_component_must_declare_that_it_acts_per_element():
    def scale(x, i):
        return 2 * x

    config = base_config(transform={"path": "test_engine_compat.Doubler"})
    assert resolve_config(config).batch_blockers() == []
    config = base_config(transform={"path": "test_engine_compat.UndeclaredDoubler"})
    [reason] = resolve_config(config).batch_blockers()
    assert "elementwise = True" in reason


def test_a_compose_or_weighted_sum_acts_per_element_only_if_each_part_does():
    compose = {"path": "mei.transforms.Compose", "kwargs": {"transforms": []}}
    parts = [{"path": "test_engine_compat.Doubler"}]
    config = base_config(transform=dict(compose, kwargs={"transforms": parts}))
    assert resolve_config(config).batch_blockers() == []
    parts.append({"path": "test_engine_compat.UndeclaredDoubler"})
    config = base_config(transform=dict(compose, kwargs={"transforms": parts}))
    [reason] = resolve_config(config).batch_blockers()
    assert "holds test_engine_compat.UndeclaredDoubler" in reason


def test_a_batch_coupling_part_of_a_weighted_sum_runs_each_mei_on_its_own():
    """A penalty on the whole batch's norm (open-retina's range loss takes one over the batch)
    inside a WeightedSum: batched runs must still equal single runs, so they run one by one."""
    net = SmallConvNet(size=SHAPE[2:])
    terms = [{"path": "test_engine_compat.BatchNormPenalty", "weight": 0.5}]
    config = base_config(
        regularization={
            "path": "mei.regularization.WeightedSum",
            "kwargs": {"regularizations": terms},
        }
    )
    assert any("BatchNormPenalty" in r for r in resolve_config(config).batch_blockers())
    batched = gradient_ascent_units(None, net, config, [1, 2], [0, 3], shape=SHAPE)
    for (mei, score, _), unit, seed in zip(batched, [0, 3], [1, 2], strict=True):
        single = gradient_ascent(None, ConstrainedOutputModel(net, unit), config, seed, shape=SHAPE)
        assert torch.equal(mei, single[0]) and score == single[1]


class BatchNormPenalty:
    """One penalty for the whole batch, its norm: not the element's own."""

    def __call__(self, x, i_iteration=None):
        return 0.01 * x.norm() * torch.ones(len(x))


class UndeclaredDoubler:
    def __call__(self, x, i_iteration=None):
        return 2 * x


class Doubler(UndeclaredDoubler):
    elementwise = True


def test_separate_rng_does_not_depend_on_reading_the_dataloaders():
    net = cases.TwoSessionNet()
    model = ConstrainedOutputModel(net, 0, forward_kwargs={"data_key": "session-a"})
    config = base_config(
        transform={"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}}, rng="separate"
    )
    from_loaders = gradient_ascent(cases.dataloaders(), model, config, 5)
    from_shape = gradient_ascent(None, model, config, 5, shape=(1, 1, 16, 16))
    assert torch.equal(from_loaders[0], from_shape[0])
    original = dict(config, rng="original")
    # the original's stream: reading shuffling loaders draws from it first
    assert not torch.equal(
        gradient_ascent(cases.dataloaders(), model, original, 5)[0],
        gradient_ascent(None, model, original, 5, shape=(1, 1, 16, 16))[0],
    )


def test_the_originals_small_apis():
    x = torch.zeros(1, 1, 2, 2)
    wrapped = Input(x)
    assert x.requires_grad and wrapped.grad is None
    (wrapped.tensor * 3).sum().backward()
    assert torch.equal(wrapped.grad, torch.full_like(x, 3.0))
    copy = wrapped.clone()
    assert copy.tensor is not x and torch.equal(copy.tensor, x)
    fields = dict(
        i_iter=1,
        evaluation=0.5,
        reg_term=0.0,
        input_=x,
        transformed_input=x,
        post_processed_input=x,
        grad=x,
        preconditioned_grad=x,
        stopper_output=None,
    )
    state = State.from_dict(fields)
    assert state.to_dict()["evaluation"] == 0.5 and state.input is x  # the original's name
    optimizer = import_object(
        "torch.optim.SGD", {"params": [torch.zeros(1, requires_grad=True)], "lr": 1}
    )
    assert isinstance(optimizer, torch.optim.SGD)
    with pytest.raises(ValueError, match="not an absolute dotted path"):
        import_object("SGD")
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        import_object("torch.optim.Nope")


def test_mei_accepts_a_tensor_that_does_not_require_grad_and_compute_only_objectives():
    class Mean(Objective):
        def compute(self, current_state):
            return float(current_state.input_.mean())

    x = torch.randn(1, 1, 8, 8)
    model = ConstrainedOutputModel(LinearNeurons(), 0)
    mei = MEI(model, x, torch.optim.SGD([x], lr=0.1))
    tracker = Tracker(mean=Mean())
    score, result = optimize(mei, NumIterations(3), tracker)
    assert tracker.log["mean"]["times"] == [0, 1, 2, 3]
    assert result.shape == x.shape and isinstance(score, float)


def test_contrastive_and_ensemble_models():
    a, b = LinearNeurons(n=2), LinearNeurons(n=2)
    x = torch.randn(3, 1, 8, 8)
    contrast = ContrastiveOutputModel(a, b, 1)
    assert torch.allclose(contrast(x), a(x)[:, 1] - b(x)[:, 1])
    ensemble = EnsembleModel(a, b)
    assert ensemble(x, avg=False).shape == (2, 3, 2)
    assert torch.allclose(ensemble(x), (a(x) + b(x)) / 2)


def test_an_mei_of_any_shape_is_one_mei_as_in_the_original():
    # the original's MEI optimized whatever tensor it got against a scalar function
    target = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    x = torch.zeros(2, 2)
    mei = MEI(lambda current: -(target - current).pow(2).sum(), x, torch.optim.SGD([x], lr=0.1))
    state = mei.step()
    assert isinstance(state, State) and state.i_iter == 0 and state.evaluation == -4.0
    score, result = optimize(mei, NumIterations(100), Tracker())
    assert torch.allclose(result, target) and score == pytest.approx(0.0)


def test_batched_elements_with_their_own_seeds_follow_their_own_streams():
    # each element replays the draws the shuffling loaders made in its single run, then
    # draws its start and its jitter from its own continued stream
    net = cases.TwoSessionNet()
    config = base_config(
        transform={"path": "mei.legacy.ops.Jitter", "kwargs": {"max_jitter": 2}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 10}},
    )
    seeds, units = [3, 5, 7], [0, 1, 2]
    kwargs = {"data_key": "session-b"}
    batched = gradient_ascent_units(
        cases.dataloaders(), net, config, seeds, units, forward_kwargs=kwargs
    )
    for (mei, score, _), seed, unit in zip(batched, seeds, units, strict=True):
        model = ConstrainedOutputModel(net, unit, forward_kwargs=kwargs)
        single = gradient_ascent(cases.dataloaders(), model, config, seed)
        # float32 rounding of the batched reduction: relative to the score (about 600 here)
        assert (mei - single[0]).abs().max() <= 1e-5
        assert abs(score - single[1]) <= 1e-6 * abs(single[1])


def test_legacy_paths_take_infinite_bounds_as_the_original_did():
    clip = {"path": "mei.legacy.ops.ClipRange", "kwargs": {"x_min": -1.0, "x_max": float("inf")}}
    mei, _, _ = gradient_ascent(
        None,
        ConstrainedOutputModel(LinearNeurons(), 0),
        base_config(postprocessing=clip),
        0,
        shape=SHAPE,
    )
    assert mei.min() >= -1.0
    with pytest.raises(ConfigError, match="finite number, got nan"):
        resolve_config(
            base_config(postprocessing={**clip, "kwargs": {"x_min": float("nan"), "x_max": 1.0}})
        )
    with pytest.raises(ConfigError, match="finite number, got inf"):
        resolve_config(
            base_config(
                postprocessing={
                    "path": "mei.postprocessing.ClipRange",
                    "kwargs": {"x_min": -1.0, "x_max": float("inf")},
                }
            )
        )


def test_a_target_fn_may_change_its_selection_in_place():
    # a sigmoid saves its output for the backward pass: the unit's selection handed to
    # target_fn must be a tensor of its own, as the original library's output[:, [unit]] was
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.Sigmoid())

    def doubled_in_place(r):
        return r.mul_(2).sum(dim=1)

    def doubled(r):
        return (r * 2).sum(dim=1)

    runs = [
        gradient_ascent(None, ConstrainedOutputModel(model, 2, fn), base_config(), 0, shape=SHAPE)
        for fn in (doubled_in_place, doubled)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_without_target_fn_a_unit_is_selected_as_a_view_with_the_same_numbers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.ELU())
    x = torch.randn(3, 1, 8, 8)
    for unit in (0, 3, -1):
        selected = ConstrainedOutputModel(model, unit)(x)
        output = model(x)
        assert selected.shape == (3, 1) and torch.equal(selected, output[:, [unit]])
        assert selected._base is not None  # no copy per step
