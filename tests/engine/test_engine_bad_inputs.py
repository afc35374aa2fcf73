"""Bad inputs to the engine are refused before the first step (or at it, for the model), with
a typed error that names the offending key, argument or element and its value."""

import copy
import decimal
import fractions

import numpy as np
import pytest
import torch
from models import LinearNeurons, base_config
from torch import nn

from mei.config import resolve_config
from mei.errors import ConfigError, InputError, ModelError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel, EnsembleModel

SHAPE = (1, 1, 8, 8)
MODEL = ConstrainedOutputModel(LinearNeurons(), 0)


class StepOnly:
    """An "optimizer" with ``step`` but no ``zero_grad``: not an optimizer."""

    def __init__(self, params, lr=0.1):
        self.params = list(params)

    def step(self):
        pass


def constant(x):
    """Output with a gradient path but no gradient: ``y * 0 + 1``."""
    return MODEL(x) * 0 + 1


def integer_output(x):
    return (MODEL(x) * 10).long()


def entry(path, **kwargs):
    return {"path": path, "kwargs": kwargs}


def norm(value):
    return {"postprocessing": entry("mei.postprocessing.ChangeNorm", norm=value)}


def lr(value):
    return {"optimizer": entry("torch.optim.SGD", lr=value)}


# (id, config change, exception, message pattern)
BAD_CONFIGS = [
    (
        "nan-norm",
        norm(float("nan")),
        r"config\['postprocessing'\] \(mei.postprocessing.ChangeNorm\): argument 'norm' must be "
        r"a finite number, got nan",
    ),
    ("inf-lr", lr(float("inf")), r"config\['optimizer'\].*argument 'lr' .*finite.*got inf"),
    ("numpy-nan", norm(np.float32("nan")), r"argument 'norm' must be a finite number, got .*nan"),
    (
        "decimal-lr",
        lr(decimal.Decimal("0.1")),
        r"config\['optimizer'\] \(torch.optim.SGD\): argument 'lr' must be an int or a float, "
        r"got Decimal\('0.1'\)",
    ),
    ("fraction-norm", norm(fractions.Fraction(1, 3)), r"argument 'norm' .*got Fraction\(1, 3\)"),
    ("complex-norm", norm(1 + 2j), r"argument 'norm' must be an int or a float, got \(1\+2j\)"),
    (
        "nested-nan",
        {
            "transform": entry(
                "mei.transforms.Compose",
                transforms=[entry("mei.transforms.ChangeRange", x_min=0.0, x_max=float("nan"))],
            )
        },
        r"config\['transform'\].*argument \"transforms\[0\]\['kwargs'\]\['x_max'\]\" must be a "
        r"finite number, got nan",
    ),
    (
        "str-lr",
        lr("0.1"),
        r"config\['optimizer'\] \(torch.optim.SGD\): argument 'lr' must be float \| Tensor, "
        r"got '0.1' \(str\)",
    ),
    (
        "str-num-iterations",
        {"stopper": entry("mei.stoppers.NumIterations", num_iterations="5")},
        r"config\['stopper'\].*argument 'num_iterations' must be int, got '5'",
    ),
    (
        "stopper-is-an-initial-guess",
        {"stopper": entry("mei.initial.RandomNormal")},
        r"config\['stopper'\] \(mei.initial.RandomNormal\): built a RandomNormal, which does not "
        r"fit the stopper slot stopper\(state\) -> \(stop, output\): its argument 'shape' takes "
        r"int, the slot passes State; it returns Tensor, the slot needs tuple\[bool, Any\]",
    ),
    (
        "transform-is-a-stopper",
        {"transform": entry("mei.stoppers.NumIterations", num_iterations=3)},
        r"config\['transform'\] \(mei.stoppers.NumIterations\): .*does not fit the transform "
        r"slot.*takes 1 positional argument\(s\), the slot passes 2 \(x, i_iteration\)",
    ),
    (
        "initial-is-a-stopper",
        {"initial": entry("mei.stoppers.NumIterations", num_iterations=3)},
        r"config\['initial'\].*initial slot.*'current_state' takes State, the slot passes int",
    ),
    (
        "postprocessing-is-an-objective",
        {"postprocessing": entry("mei.objectives.EvaluationObjective", interval=1)},
        r"config\['postprocessing'\].*postprocessing slot.*positional argument",
    ),
    (
        "objective-is-a-transform",
        {"objectives": [entry("mei.transforms.Jitter", max_jitter=1)]},
        r"config\['objectives\[0\]'\] \(mei.transforms.Jitter\).*objective slot.*'x' takes "
        r"Tensor, the slot passes State",
    ),
    (
        "regularization-is-an-initial-guess",
        {"regularization": entry("mei.initial.RandomNormal")},
        r"config\['regularization'\].*regularization slot",
    ),
    (
        "precondition-is-a-stopper",
        {"precondition": entry("mei.stoppers.NumIterations", num_iterations=2)},
        r"config\['precondition'\].*precondition slot",
    ),
    (
        "optimizer-without-zero-grad",
        {"optimizer": entry("test_engine_bad_inputs.StepOnly")},
        r"config\['optimizer'\] \(test_engine_bad_inputs.StepOnly\): built a StepOnly, which has "
        r"no zero_grad\(\) method",
    ),
]


@pytest.mark.parametrize(
    ("change", "match"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_is_refused_naming_key_argument_and_value(change, match):
    config = base_config(**change)
    snapshot = copy.deepcopy(config)
    with pytest.raises(ConfigError, match=match):
        resolve_config(config)
    with pytest.raises(ConfigError, match=match):
        gradient_ascent(None, MODEL, config, 0, shape=SHAPE)
    assert repr(config) == repr(snapshot)  # nan != nan: compare the reprs


@pytest.mark.parametrize(
    ("config", "listed", "more"),
    [
        (dict(base_config(), **{f"k{i}": 1 for i in range(100_000)}), "'k0', 'k1'", "99,995"),
        (
            base_config(
                postprocessing={
                    "path": "mei.postprocessing.ChangeNorm",
                    "kwargs": {f"a{i}": 1 for i in range(10_000)},
                }
            ),
            "'a0', 'a1'",
            "9,995",
        ),
    ],
    ids=["100k-unknown-keys", "10k-unknown-kwargs"],
)
def test_messages_list_the_first_few_names_and_count_the_rest(config, listed, more):
    with pytest.raises(ConfigError) as info:
        resolve_config(config)
    message = str(info.value)
    allowed = message.partition("; allowed: ")[2]  # the known keys, listed in full
    assert len(message) - len(allowed) < 400, len(message)
    assert listed in message and f"and {more} more" in message


@pytest.mark.parametrize(
    ("seed", "match"),
    [
        (1.5, r"^seed must be an integer, got 1.5 \(float\)$"),
        (2.0, r"seed must be an integer, got 2.0 \(float\)"),
        (True, r"seed must be an integer, got True \(bool\)"),
        ("3", r"seed must be an integer, got '3' \(str\)"),
        (np.float64(1.5), r"seed must be an integer, got .*1.5.* \(float64\)"),
        (torch.tensor(1.5), r"seed must be an integer, got tensor\(1.5000\)"),
        (
            2**70,
            r"seed must be an integer in \[-2147483648, 2147483647\].*got 1180591620717411303424",
        ),
        (2**31, r"seed must be an integer in .*got 2147483648"),
        (-(2**31) - 1, r"seed must be an integer in .*got -2147483649"),
    ],
    ids=["1.5", "2.0", "True", "str", "np-float", "float-tensor", "2**70", "2**31", "-2**31-1"],
)
def test_bad_seed_is_refused_naming_the_seed(seed, match):
    with pytest.raises(InputError, match=match) as info:
        gradient_ascent(None, MODEL, base_config(), seed, shape=SHAPE)
    assert info.value.argument == "seed"
    assert isinstance(info.value, ValueError)


def test_bad_seed_among_many_is_named_by_position():
    with pytest.raises(InputError, match=r"seed\[1\] must be an integer, got 2.5"):
        gradient_ascent_units(None, LinearNeurons(), base_config(), [1, 2.5], [0, 1], shape=SHAPE)


@pytest.mark.parametrize(
    "seed", [0, -5, 2**31 - 1, -(2**31), np.int64(3), np.int32(3), torch.tensor(3)]
)
def test_integer_seeds_in_range_are_accepted(seed):
    mei, score, _ = gradient_ascent(None, MODEL, base_config(), seed, shape=SHAPE)
    assert mei.shape == SHAPE and np.isfinite(score)


def test_a_seed_gives_what_its_int_gives():
    one = gradient_ascent(None, MODEL, base_config(), np.int64(7), shape=SHAPE)
    two = gradient_ascent(None, MODEL, base_config(), 7, shape=SHAPE)
    assert torch.equal(one[0], two[0])


@pytest.mark.parametrize(
    ("dataloaders", "match"),
    [
        ({"train": {}}, r"dataloaders\['train'\] is empty: expected \{data_key: loader\}"),
        ({"train": {"a": []}}, r"dataloaders\['train'\]\['a'\] yields no batch"),
        ({"validation": {"b": iter(())}}, r"dataloaders\['validation'\]\['b'\] yields no batch"),
        ({"train": []}, r"dataloaders\['train'\] yields no batch"),
        ({}, r"dataloaders must be a dict such as"),
    ],
    ids=["empty-tier", "empty-loader", "empty-iterator", "empty-tier-loader", "empty-dict"],
)
def test_empty_dataloaders_are_named(dataloaders, match):
    with pytest.raises(InputError, match=match) as info:
        gradient_ascent(dataloaders, MODEL, base_config(), 0)
    assert info.value.argument == "dataloaders"


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ("a string", r"it is not a tensor, a tuple or a dict of tensors; the batch is a str "),
        (
            {"targets": "cat", "id": 3},
            r"none of its fields has a shape; the batch is a dict with 'targets': a str "
            r"\('cat'\), 'id': a int \(3\)",
        ),
        (
            {"inputs": ["x", "y"], "targets": torch.zeros(2, 3)},
            r"its field 'inputs' is a list; the batch is a dict with 'inputs': a list, "
            r"'targets': a Tensor",
        ),
        (("x", torch.zeros(2, 3)), r"its first element is a str \('x'\); the batch is a tuple"),
        ([], r"it is empty; the batch is a list of"),
    ],
    ids=["string", "dict-of-strings", "dict-inputs-list", "tuple-of-string-first", "empty-list"],
)
def test_a_batch_without_an_input_tensor_is_one_clear_error(batch, match):
    loaders = {"train": {"session-7": [batch]}}
    where = r"cannot find the input tensor in the first batch of dataloaders\['train'\]\['session-7'\]: "
    with pytest.raises(InputError, match=where + match) as info:
        gradient_ascent(loaders, MODEL, base_config(), 0)
    assert info.value.argument == "dataloaders"


def test_fields_without_a_shape_beside_the_inputs_are_left_out():
    images = torch.zeros(4, 1, 8, 8)
    for batch in ({"id": "a", "images": images}, (images, "name")):
        mei, _, _ = gradient_ascent({"train": {"k": [batch]}}, MODEL, base_config(), 0)
        assert mei.shape == SHAPE


ZERO_GRADIENT = (
    r"does not depend on its input: at the first step the gradient .* is zero everywhere"
)


@pytest.mark.parametrize(
    ("model", "change", "match"),
    [
        (constant, {}, ZERO_GRADIENT + r" for batch element\(s\) \[0\]"),
        (  # the regularizer's gradient does not hide a constant model
            constant,
            {"regularization": entry("mei.regularization.LpNorm", weight=0.1)},
            ZERO_GRADIENT,
        ),
        (  # nor does a transform
            constant,
            {"transform": entry("mei.transforms.Jitter", max_jitter=1)},
            ZERO_GRADIENT,
        ),
        (lambda x: torch.relu(-(x.flatten(1).abs().sum(1))), {}, ZERO_GRADIENT),
        (integer_output, {}, r"returned a tensor of dtype torch.int64; it must return floating"),
        (lambda x: MODEL(x) > 0, {}, r"returned a tensor of dtype torch.bool"),
    ],
    ids=["y*0+1", "y*0+1-regularized", "y*0+1-transformed", "dead-relu", "int64", "bool"],
)
def test_model_without_gradient_is_refused_at_the_first_step(model, change, match):
    calls = []

    def counted(x):
        calls.append(1)
        return model(x)

    with pytest.raises(ModelError, match=match):
        gradient_ascent(None, counted, base_config(**change), 0, shape=SHAPE)
    assert len(calls) == 1  # refused at the first step, not after the run


def test_batched_run_names_the_element_whose_gradient_is_zero():
    model = LinearNeurons()
    with torch.no_grad():
        model.weight[2] = 0
    with pytest.raises(ModelError, match=ZERO_GRADIENT + r" for batch element\(s\) \[2\]"):
        gradient_ascent_units(None, model, base_config(), 0, [0, 1, 2, 3], shape=SHAPE)


def crop_model(x):
    """A unit reading a 4 x 4 crop."""
    return (x.flatten(1) * MODEL.model.weight[0, :, :4, :4].flatten()).sum(1)


class Masked(nn.Module):
    """Sees only the left half of the input: half of the gradient is zero, which is fine."""

    def forward(self, x):
        mask = torch.zeros_like(x)
        mask[..., :4] = 1
        return MODEL(x * mask)


@pytest.mark.parametrize(
    ("model", "change"),
    [
        (Masked(), {}),
        (crop_model, {"transform": entry("mei.transforms.RandomCrop", height=4, width=4)}),
        (
            lambda x: (x[..., :4, :4].flatten(1) ** 2).sum(1),
            {"transform": entry("mei.transforms.Jitter", max_jitter=2)},
        ),
    ],
    ids=["masked-model", "cropped-input", "partial-model-jittered"],
)
def test_a_gradient_zero_in_part_of_the_input_is_fine(model, change):
    mei, score, _ = gradient_ascent(None, model, base_config(**change), 0, shape=SHAPE)
    assert np.isfinite(score)


def test_the_check_does_not_change_the_result():
    """The first-step check only looks: same MEI as an unchecked run of the same steps."""
    from mei.optimization import MEI, optimize
    from mei.stoppers import NumIterations
    from mei.tracking import Tracker

    config = base_config(postprocessing=None)
    checked, _, _ = gradient_ascent(None, MODEL, config, 3, shape=SHAPE)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    mei = MEI(MODEL, x, torch.optim.SGD([x], lr=0.1))
    _, unchecked = optimize(mei, NumIterations(50), Tracker())
    assert torch.equal(checked, unchecked)


def test_annotations_do_not_refuse_unannotated_or_loose_components():
    config = base_config(
        stopper=entry("custom_components.EvaluationThreshold", threshold=1e9),
        initial=entry("custom_components.legacy_initial"),
        optimizer=entry("torch.optim.SGD", lr=1, momentum=0),  # ints for floats
        regularization=entry("mei.regularization.LpNorm", weight=1, p=2),
    )
    resolve_config(config)


def test_an_ensemble_of_integer_members_blames_the_dtype():
    class Rounded(nn.Module):
        def forward(self, x):
            return integer_output(x)

    with pytest.raises(ModelError, match=r"ensemble member 0 \(Rounded\) returned .*torch.int64"):
        gradient_ascent(None, EnsembleModel(Rounded()), base_config(), 0, shape=SHAPE)
