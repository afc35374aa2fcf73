"""Hashing and the model cache (no database needed)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from mei.integration import ModelLoader, hash_list_of_dictionaries, make_hash

# Digests computed with NNFabrik 0.2.1's own make_hash (test_compat014.py compares live).
EXAMPLE_CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 5.0}},
    "precondition": {"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.0}},
    "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
}
NNFABRIK_DIGESTS = [
    (EXAMPLE_CONFIG, "c997e28454961eefeb2884d9b37dfcab"),
    (OrderedDict([("b", 1), ("a", [1, 2.5, "x"])]), "b973a2c1ec968213e906b2f3d5deef5c"),
    ({"b": 1, "a": [1, 2.5, "x"]}, "fb40b960608cd38c9322680d402b0ff4"),
    ({"k": {"z": (1, None, True), 1: "one"}}, "b6c39402f65fc23188fcf9857edeb6b5"),
    ("abc", "900150983cd24fb0d6963f7d28e17f72"),
    (7, "8f14e45fceea167a5a36dedd4bea2543"),
    ({}, "d41d8cd98f00b204e9800998ecf8427e"),
    ([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], "01ca444da5903920524a07bf53a82dc9"),
]


@pytest.mark.parametrize(("obj", "digest"), NNFABRIK_DIGESTS)
def test_make_hash_matches_nnfabrik(obj, digest):
    assert make_hash(obj) == digest


def test_make_hash_key_order():
    assert make_hash({"a": 1, "b": 2}) == make_hash({"b": 2, "a": 1})
    ordered = OrderedDict([("a", 1), ("b", 2)])
    assert make_hash(ordered) != make_hash(OrderedDict([("b", 2), ("a", 1)]))
    assert make_hash([1, 2]) != make_hash([2, 1])


def test_hash_list_of_dictionaries_ignores_order_and_duplicates():
    a, b = {"model_seed": 1, "x": "a"}, {"model_seed": 2, "x": "a"}
    assert hash_list_of_dictionaries([a, b]) == hash_list_of_dictionaries([b, a, b])
    assert hash_list_of_dictionaries([a, b]) == make_hash(sorted([a, b], key=make_hash))
    assert hash_list_of_dictionaries([a]) != hash_list_of_dictionaries([a, b])


class Loads:
    """A model source that counts how often it is asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, key):
        self.calls.append(key)
        torch.manual_seed(key["seed"])
        return {"train": {}}, nn.Linear(2, 1)


def test_model_loader_caches_copies_and_evicts_least_recently_used():
    loads = Loads()
    loader = ModelLoader(loads, ["seed"], cache_size_limit=2)
    dataloaders, first = loader.load({"seed": 1, "neuron_id": 5})
    _, again = loader.load({"seed": 1, "neuron_id": 6})
    assert loads.calls == [{"seed": 1}]
    assert again is not first and torch.equal(again.weight, first.weight)
    with torch.no_grad():
        first.weight.add_(1.0)  # a run that changes its model ...
    _, third = loader.load({"seed": 1})
    assert torch.equal(third.weight, again.weight)  # ... does not change the cache
    loader.load({"seed": 2})
    loader.load({"seed": 1})  # 1 is now the most recently used
    loader.load({"seed": 3})  # evicts 2
    assert len(loader.cache) == 2
    loader.load({"seed": 1})
    loader.load({"seed": 2})
    assert [k["seed"] for k in loads.calls] == [1, 2, 3, 2]
    assert (loader.hits, loader.misses) == (4, 4)
    assert "cache_size_limit=2" in repr(loader)


def test_model_loader_keeps_its_model_on_the_run_device():
    """With a device, the cached model is moved there once and each key gets a copy made
    there (a GPU worker copies the model from the host once, not per key). The meta device
    stands in for a GPU here: a real device without one."""
    loads = Loads()
    loader = ModelLoader(loads, ["seed"], cache_size_limit=2)
    _, first = loader.load({"seed": 1}, device="meta")
    assert first.weight.device.type == "meta"
    (_, cached) = loader.cache[next(iter(loader.cache))]
    assert cached.weight.device.type == "meta"  # moved in the cache, once
    _, second = loader.load({"seed": 1}, device="meta")
    assert second is not first and second.weight.device.type == "meta"
    assert loads.calls == [{"seed": 1}]
    _, on_cpu = loader.load({"seed": 2})  # no device: as loaded
    assert on_cpu.weight.device.type == "cpu"


def test_model_loader_without_cache_and_bad_input():
    loads = Loads()
    loader = ModelLoader(loads, ["seed"], cache_size_limit=0)
    loader.load({"seed": 1})
    loader.load({"seed": 1})
    assert len(loads.calls) == 2 and not loader.cache
    with pytest.raises(KeyError, match="seed"):
        loader.load({"neuron_id": 1})
    with pytest.raises(ValueError, match="cache_size_limit must be >= 0, got -1"):
        ModelLoader(loads, ["seed"], cache_size_limit=-1)
