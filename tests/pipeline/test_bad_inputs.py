"""Bad inputs to mei's tables are refused before anything is written: no new rows in MEIMethod,
MEISeed or MEI, no new files in the store, and a typed error naming the offending key,
argument or value. Runs on either DataJoint generation (tables declared with mei's type map).
"""

from __future__ import annotations

import copy
import decimal
from types import SimpleNamespace

import datajoint as dj
import numpy as np
import pytest
import run_path_lab
import torch
from torch import nn

from mei.dj.backend import backend
from mei.dj.hashing import make_hash
from mei.errors import ConfigError, InputError, ModelError

GRADIENT_ASCENT = "mei.methods.gradient_ascent"
SHAPE = (1, 1, 4, 4)
CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 3}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 1.0}},
}


def changed(**entries):
    config = copy.deepcopy(CONFIG)
    config.update(entries)
    return config


def files(store) -> set:
    return {p for p in store.rglob("*") if p.is_file()}


def counts(mei_main, lab=None) -> tuple[int, ...]:
    tables = [mei_main.MEIMethod(), mei_main.MEISeed()] + ([lab.MEI()] if lab else [])
    return tuple(len(t) for t in tables)


class Linear(nn.Module):
    """Four linear units on 4 x 4 inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 4)

    def forward(self, x):
        return self.linear(x.flatten(1))


class Constant(Linear):
    """``y * 0 + 1``: a gradient path, no gradient."""

    def forward(self, x):
        return super().forward(x) * 0 + 1


class Integer(Linear):
    def forward(self, x):
        return (super().forward(x) * 10).long()


def declare(schema: dj.Schema, model_class: type) -> SimpleNamespace:
    """The minimal lab of run_path_lab with two neurons of ``model_class``."""
    return run_path_lab.declare(schema, n_units=2, model=model_class)


# (id, method_config, message pattern): add_method raises ConfigError
BAD_METHODS = [
    (
        "nan-norm",
        changed(
            postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": np.nan}}
        ),
        r"config\['postprocessing'\] \(mei.postprocessing.ChangeNorm\): argument 'norm' must be "
        r"a finite number, got nan",
    ),
    (
        "decimal-lr",
        changed(optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": decimal.Decimal("0.1")}}),
        r"config\['optimizer'\] \(torch.optim.SGD\): argument 'lr' must be an int or a float, "
        r"got Decimal\('0.1'\)",
    ),
    (
        "str-lr",
        changed(optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": "0.1"}}),
        r"config\['optimizer'\] \(torch.optim.SGD\): argument 'lr' must be float \| Tensor, "
        r"got '0.1' \(str\)",
    ),
    (
        "stopper-is-an-initial-guess",
        changed(stopper={"path": "mei.initial.RandomNormal"}),
        r"config\['stopper'\] \(mei.initial.RandomNormal\): built a RandomNormal, which does not "
        r"fit the stopper slot",
    ),
    (
        "tensor-in-config",
        changed(
            initial={"path": "mei.initial.FromTensor", "kwargs": {"tensor": torch.zeros(SHAPE)}}
        ),
        r"mei.methods.gradient_ascent: method_config\['initial'\]\['kwargs'\]\['tensor'\] \(a "
        r"tensor of shape \(1, 1, 4, 4\)\) cannot be hashed into method_hash",
    ),
    (
        "0d-array-in-config",
        changed(initial={"path": "mei.initial.FromTensor", "kwargs": {"tensor": np.array(0.5)}}),
        r"method_config\['initial'\]\['kwargs'\]\['tensor'\] \(ndarray\) cannot be hashed",
    ),
    (
        "100k-unknown-keys",
        dict(CONFIG, **{f"k{i}": 1 for i in range(100_000)}),
        r"^unknown key\(s\) \['k0', 'k1', 'k10', 'k100', 'k1000'\] and 99,995 more; allowed: ",
    ),
]


@pytest.mark.parametrize(
    ("config", "match"), [c[1:] for c in BAD_METHODS], ids=[c[0] for c in BAD_METHODS]
)
def test_add_method_refuses_bad_config_and_writes_nothing(schema, mei_main, store, config, match):
    before, stored = counts(mei_main), files(store)
    with pytest.raises(ConfigError, match=match) as info:
        mei_main.MEIMethod().add_method(GRADIENT_ASCENT, config)
    assert len(str(info.value)) < 500
    assert counts(mei_main) == before and files(store) == stored


def test_a_numpy_array_in_the_config_hashes_as_nnfabrik_does(schema, mei_main):
    """NNFabrik's make_hash iterates an array of one or more dimensions down to its numpy
    scalars and hashes their str; mei's make_hash is the same function, so this is the hash a
    lab's database holds for such a config (the digest below is nnfabrik 0.2.1's, computed on
    DataJoint 0.14 with this config)."""
    array = np.arange(16, dtype=np.float32).reshape(SHAPE)
    config = changed(initial={"path": "mei.initial.FromTensor", "kwargs": {"tensor": array}})
    key = mei_main.MEIMethod().add_method(GRADIENT_ASCENT, config)
    assert key["method_hash"] == make_hash(config) == "51db4f613dcbed4fd0a86efdb05bbc9d"
    stored = (mei_main.MEIMethod() & key).fetch1("method_config")
    assert np.array_equal(stored["initial"]["kwargs"]["tensor"], array)


@pytest.mark.parametrize(
    ("insert", "match"),
    [
        (
            lambda t: t.insert1({"mei_seed": 1.5}),
            r"^mei_seed must be an integer, got 1.5 \(float\)",
        ),
        (lambda t: t.insert1((2.5,)), r"mei_seed must be an integer, got 2.5"),
        (lambda t: t.insert1({"mei_seed": True}), r"mei_seed must be an integer, got True"),
        (lambda t: t.insert1({"mei_seed": "3"}), r"mei_seed must be an integer, got '3' \(str\)"),
        (
            lambda t: t.insert1({"mei_seed": 2**70}),
            r"mei_seed must be an integer in \[-2147483648, 2147483647\].*got "
            r"1180591620717411303424",
        ),
        (lambda t: t.insert1({"mei_seed": 2**31}), r"mei_seed must be an integer in .*2147483648"),
        (
            lambda t: t.insert([{"mei_seed": 1}, {"mei_seed": 2}, {"mei_seed": 3.5}]),
            r"mei_seed of row 2 must be an integer, got 3.5",
        ),
        (
            lambda t: t.insert({"mei_seed": s} for s in (1, 2.5)),
            r"mei_seed of row 1 must be an integer, got 2.5",
        ),
        (
            lambda t: t.insert(np.array([(1.0,), (1.5,)], dtype=[("mei_seed", "f8")])),
            r"mei_seed must be an integer, got .*1.0.* \(float64\)",
        ),
        (
            lambda t: t.insert1(np.array([(1.5,)], dtype=[("mei_seed", "f8")])[0]),
            r"mei_seed must be an integer, got .*1.5",
        ),
    ],
    ids=[
        "1.5",
        "tuple-2.5",
        "True",
        "str",
        "2**70",
        "2**31",
        "last-of-three",
        "generator",
        "float-records",
        "float-record",
    ],
)
def test_seed_insert_refuses_non_integers_and_writes_nothing(
    schema, mei_main, store, insert, match
):
    before = counts(mei_main)
    with pytest.raises(InputError, match=match) as info:
        insert(mei_main.MEISeed())
    assert info.value.argument.startswith("mei_seed")
    assert counts(mei_main) == before


def test_seed_insert_refuses_a_float_dataframe(schema, mei_main):
    pandas = pytest.importorskip("pandas")
    with pytest.raises(InputError, match=r"mei_seed must be an integer, got 1.0 \(float\)"):
        mei_main.MEISeed().insert(pandas.DataFrame({"mei_seed": [1.0, 2.0]}))
    assert len(mei_main.MEISeed()) == 0
    mei_main.MEISeed().insert(pandas.DataFrame({"mei_seed": [1, 2]}))
    assert len(mei_main.MEISeed()) == 2


def test_seed_insert_keeps_datajoint_semantics(schema, mei_main):
    seeds = mei_main.MEISeed()
    seeds.insert1({"mei_seed": np.int64(3)})
    seeds.insert1((-(2**31),))
    seeds.insert({"mei_seed": s} for s in (2**31 - 1, 5))  # a generator is read once
    seeds.insert1({"mei_seed": 3}, skip_duplicates=True)
    with pytest.raises(dj.errors.DuplicateError):
        seeds.insert1({"mei_seed": 3})
    with pytest.raises((dj.DataJointError, KeyError), match="extra"):  # DataJoint's own error
        seeds.insert1({"mei_seed": 7, "extra": 1})
    seeds.insert1({"mei_seed": 7, "extra": 1}, ignore_extra_fields=True)
    got = sorted(int(k["mei_seed"]) for k in backend().keys(seeds))
    assert got == [-(2**31), 3, 5, 7, 2**31 - 1]


@pytest.mark.parametrize(
    ("model_class", "match"),
    [
        (
            Constant,
            r"does not depend on its input: at the first step the gradient .* is zero everywhere "
            r"for batch element\(s\) \[0\]",
        ),
        (Integer, r"ensemble member 0 \(Integer\) returned a tensor of dtype torch.int64"),
    ],
    ids=["y*0+1", "int64"],
)
def test_populate_with_a_model_without_gradient_writes_nothing(
    schema, mei_main, store, model_class, match
):
    lab = declare(schema, model_class)
    mei_main.MEIMethod().add_method(GRADIENT_ASCENT, CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    before, stored = counts(mei_main, lab), files(store)
    with pytest.raises(ModelError, match=match):
        lab.MEI().populate()
    with pytest.raises(ModelError, match=match):
        lab.MEI().populate(batch_size=2)
    assert counts(mei_main, lab) == before and files(store) == stored


def test_populate_with_a_good_model_still_works(schema, mei_main, store):
    lab = declare(schema, Linear)
    array = np.full(SHAPE, 0.25, dtype=np.float32)
    config = changed(initial={"path": "mei.initial.FromTensor", "kwargs": {"tensor": array}})
    mei_main.MEIMethod().add_method(GRADIENT_ASCENT, config)
    mei_main.MEISeed().insert1({"mei_seed": np.int64(1)})
    lab.MEI().populate()
    assert len(lab.MEI()) == 2
