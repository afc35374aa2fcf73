"""Exciting variants of stored MEIs in an ``ExcitingVariantsTemplate`` table, on every setup:
a phase-invariant complex cell and a simple cell with known MEIs, their variants stored with
each variant's response, and the same numbers as a direct run of the method."""

from __future__ import annotations

import math

import datajoint as dj
import pytest
import run_path_lab
import torch
from compat_lab import missing_device
from mei_testkit import engine_models, stored_files

from mei.dj.backend import backend
from mei.dj.tables import MEIMethodMixin
from mei.errors import ComponentError, ConfigError, DeviceUnavailableError
from mei.main import ExcitingVariantsTemplate
from mei.modules import ConstrainedOutputModel
from mei.variants import exciting_variants

SEED = 7
SHAPE = (1, 1, 15, 15)
NORM = 5.0
MEI_CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 50}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": NORM}},
}
VARIANTS_CONFIG = {
    **MEI_CONFIG,
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 3.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 300}},
    "variants": {"n_variants": 8, "fraction": 0.85},
}


def _declare(schema):
    """The lab: a model of a complex cell (unit 0) and a simple cell (unit 1) sharing a
    quadrature pair of Gabors, their MEI table, and the variants table on it."""
    lab = run_path_lab.declare(schema, n_units=2, model=engine_models().PhaseCells, shape=SHAPE)

    class Variants(ExcitingVariantsTemplate):
        mei_table = lab.MEI

    schema(Variants)
    lab.Variants = Variants
    return lab


def _files(store):
    """Every file in the store (0.14 keeps NNFabrik's model states and all tables' files in
    one folder tree): the tests compare the files before and after the variants' populate."""
    return set(stored_files(store))


def test_variants_of_a_complex_and_a_simple_cell_are_stored_with_their_responses(
    schema, mei_main, store
):
    lab = _declare(schema)
    mei_method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", MEI_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    assert len(lab.MEI()) == 2
    before = _files(store)
    # the variants method row; the table computes only its rows, not the MEI method's
    with pytest.raises(ConfigError, match=r"config\['variants'\].*'fraction' must be"):
        mei_main.MEIMethod().add_method(
            "mei.variants.exciting_variants", {**VARIANTS_CONFIG, "variants": {"fraction": 2}}
        )
    method = mei_main.MEIMethod().add_method(
        "mei.variants.exciting_variants", VARIANTS_CONFIG, comment="variants"
    )
    # the MEI table shares the method table and leaves the variants row alone
    assert len(backend().todo(lab.MEI(), ())) == 0
    assert lab.MEI().populate(suppress_errors=True)["error_list"] == []
    assert len(lab.MEI()) == 2
    lab.Variants().populate()
    assert len(lab.Variants()) == 2
    assert len(lab.Variants.Variant()) == 16

    model = engine_models().PhaseCells()
    floor = math.sqrt(1 - 0.85**2)
    indices = {}
    for neuron in (0, 1):
        [mei_key] = backend().keys(lab.MEI() & {"neuron_id": neuron})
        assert mei_key["method_hash"] == mei_method["method_hash"]
        key = {
            **mei_key,
            "variants_method_fn": method["method_fn"],
            "variants_method_hash": method["method_hash"],
            "variants_seed": SEED,
        }
        [stored] = backend().keys(lab.Variants() & mei_key)
        assert stored == {k: key[k] for k in lab.Variants.primary_key}
        variants = lab.Variants().load_variants(key)
        assert variants.shape == (8, *SHAPE[1:])
        assert torch.equal(lab.Variants().load_mei(key), variants)
        names = ("reference", "n_variants", "diversity", "diversity_index")
        row = dict(zip(names, (lab.Variants & key).fetch1(*names), strict=True))
        mei = lab.MEI().load_mei(mei_key)
        # the reference is the model's response to the stored MEI: its norm
        assert row["reference"] == pytest.approx(float(model(mei)[0, neuron]), rel=1e-5)
        assert row["reference"] == pytest.approx(NORM, rel=1e-3)
        assert row["n_variants"] == 8
        parts = backend().to_dicts(lab.Variants.Variant() & key)
        assert sorted(int(p["variant"]) for p in parts) == list(range(8))
        responses = model(variants)[:, neuron]
        for part in parts:
            expected = float(responses[int(part["variant"])])
            assert part["response"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
            assert part["fraction"] == pytest.approx(expected / row["reference"], rel=1e-4)
            assert part["fraction"] >= 0.85 - 0.01
        # the same numbers as the method run directly on the stored MEI
        images, index, output = exciting_variants(
            None, ConstrainedOutputModel(model, neuron), VARIANTS_CONFIG, SEED, mei=mei
        )
        torch.testing.assert_close(variants, images, rtol=0, atol=1e-6)
        assert row["diversity_index"] == pytest.approx(index, rel=1e-5)
        assert row["diversity"] == pytest.approx(output["diversity"], rel=1e-5)
        stored_output = lab.Variants().load_output(key)
        assert stored_output["responses"] == pytest.approx(output["responses"], rel=1e-5)
        indices[neuron] = row["diversity_index"]
    # the known answers: the complex cell's variants are far more diverse; a linear neuron
    # under a fixed norm reaches sqrt(1 - fraction^2) at best
    assert indices[1] == pytest.approx(floor, abs=0.02)
    assert indices[0] > 0.9
    assert len(_files(store) - before) == 4  # variants and output of each row
    lab.Variants().populate()  # nothing left to do
    assert len(lab.Variants()) == 2


def bad_output_method(dataloaders, model, config, seed, mei=None):
    """Variants without their responses: the table refuses to store them."""
    return mei.repeat(2, 1, 1, 1), 0.5, {"reference": 1.0, "diversity": 0.0}


def test_a_variants_method_must_return_each_variants_response(schema, mei_main, store):
    lab = _declare(schema)
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", MEI_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    before = _files(store)
    lab.Variants.method_fns = (f"{__name__}.bad_output_method",)
    mei_main.MEIMethod().add_method(f"{__name__}.bad_output_method", {})
    with pytest.raises(ComponentError, match="one response per variant in 'responses'"):
        lab.Variants().populate()
    assert len(lab.Variants()) == 0 and len(lab.Variants.Variant()) == 0
    assert _files(store) == before


def test_a_variants_table_declares_with_the_generations_types(schema, mei_main):
    lab = _declare(schema)
    heading = lab.Variants().heading
    assert {"n_variants", "reference", "diversity", "diversity_index", "variants", "output"} <= set(
        heading.secondary_attributes
    )
    for name in ("method_hash", "mei_seed", "variants_method_fn", "variants_method_hash"):
        assert name in heading.primary_key
    assert "variants_seed" in heading.primary_key
    assert set(lab.Variants.Variant().heading.secondary_attributes) == {"response", "fraction"}
    assert lab.Variants().trained_model_table is lab.TrainedEnsembleModel


def test_a_variants_table_may_keep_its_methods_in_a_table_of_its_own(schema, mei_main):
    """With the variants' method rows in a method table of their own, the MEI table's populate
    never sees them (it computes every row of its method table)."""
    lab = _declare(schema)

    class VariantsMethod(MEIMethodMixin, dj.Lookup):
        pass

    class OwnVariants(ExcitingVariantsTemplate):
        mei_table = lab.MEI
        method_table = VariantsMethod

    schema(VariantsMethod)
    schema(OwnVariants)
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", MEI_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    quick = {
        **VARIANTS_CONFIG,
        "stopper": {**VARIANTS_CONFIG["stopper"], "kwargs": {"num_iterations": 5}},
    }
    method = VariantsMethod().add_method("mei.variants.exciting_variants", quick)
    lab.MEI().populate()
    OwnVariants().populate()
    lab.MEI().populate()  # nothing new: the variants method is not the MEI table's
    assert len(lab.MEI()) == 2 and len(OwnVariants()) == 2
    assert len(OwnVariants() & {"variants_method_hash": method["method_hash"]}) == 2


def test_the_device_check_reads_the_variants_method_not_the_meis(schema, mei_main):
    lab = _declare(schema)
    mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", MEI_CONFIG)  # on the CPU
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    quick = {
        **VARIANTS_CONFIG,
        "stopper": {**VARIANTS_CONFIG["stopper"], "kwargs": {"num_iterations": 5}},
    }
    device = missing_device()
    method = mei_main.MEIMethod().add_method(
        "mei.variants.exciting_variants", {**quick, "device": device}
    )
    with pytest.raises(DeviceUnavailableError) as error:
        lab.Variants().populate()
    assert error.value.device == device and error.value.methods == [method]
    assert len(lab.Variants()) == 0
    table = lab.Variants()
    table.device = "cpu"  # the override redirects it: then it runs, from DataJoint's job queue
    table.populate(reserve_jobs=True)
    assert len(lab.Variants()) == 2
