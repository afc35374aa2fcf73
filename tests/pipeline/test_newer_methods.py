"""The newer methods from method rows, on every setup: video MEIs through the config's
``response`` entry, diverse MEIs (``n_meis`` + ``Diversity``) in the MEI table, and most
discriminative stimuli (MDS) of a set of neurons in an ``MDSTemplate`` table."""

from __future__ import annotations

import math

import datajoint as dj
import labs
import pytest
import run_path_lab
import torch
from mei_testkit import engine_models, stored_files
from torch.nn.functional import cosine_similarity

from mei.clustering import mds
from mei.dj.backend import backend
from mei.dj.run import check_clusters, population_model
from mei.errors import ComponentError, ConfigError, NonFiniteError
from mei.integration import hash_list_of_dictionaries
from mei.main import MDSTemplate, MEITemplate, NeuronSetTemplate
from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel

SEED = 7


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


# --- video MEIs: a lab's selector of a (B, T, N) model and a method row with a response ----

VIDEO_SHAPE = (1, 1, 10, 15, 15)  # an 8-frame filter answers 3 times
VIDEO_CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
    "precondition": {"path": "mei.preconditioning.TemporalBlur", "kwargs": {"sigma": 0.5}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
    "response": {
        "path": "mei.modules.TimeWindowResponse",
        "kwargs": {"start": -1, "stop": None, "reduce": "mean", "time_dim": 1},
    },
}


def _video_neurons():
    return engine_models().SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))


def test_a_video_models_selector_gets_the_windowed_mei_from_a_method_row(schema, mei_main):
    """The selector builds ``ConstrainedOutputModel(model, unit)`` of a model with responses
    ``(B, T, N)``; the method row's ``response`` reduces them over the last output frame first.
    Plain and batched populate store each neuron's filter in the movie's last 8 frames."""
    lab = run_path_lab.declare(schema, n_units=2, model=_video_neurons, shape=VIDEO_SHAPE)
    with pytest.raises(ConfigError, match=r"config\['response'\].*reduce must be"):
        mei_main.MEIMethod().add_method(
            "mei.methods.gradient_ascent",
            {**VIDEO_CONFIG, "response": {**VIDEO_CONFIG["response"], "kwargs": {"reduce": "max"}}},
        )
    method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", VIDEO_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    lab.MEI().populate()
    mei_main.MEISeed().insert1({"mei_seed": SEED + 1})
    lab.MEI().populate(batch_size=2)  # one batched run for the two neurons of the new seed
    assert len(lab.MEI()) == 4

    neurons = _video_neurons()
    loaders, ensemble = lab.TrainedEnsembleModel().load_model(
        backend().keys(lab.TrainedEnsembleModel())[0]
    )
    for seed in (SEED, SEED + 1):
        for unit in (0, 1):
            key = {**method, "mei_seed": seed, "neuron_id": unit}
            mei = lab.MEI().load_mei(key)
            assert mei.shape == VIDEO_SHAPE
            placed = torch.zeros(VIDEO_SHAPE)
            placed[0, 0, 2:] = neurons.kernels[unit, 0]
            assert _cos(mei, placed) >= 0.95
            assert _cos(mei, torch.roll(placed, -2, dims=2)) < 0.5  # not the first frames
            expected, score, _ = gradient_ascent(
                loaders, ConstrainedOutputModel(ensemble, unit), VIDEO_CONFIG, seed
            )
            torch.testing.assert_close(mei, expected, rtol=1e-5, atol=1e-5)
            assert math.isclose((lab.MEI & key).fetch1("score"), score, rel_tol=1e-5)


# --- diverse MEIs: all n_meis images of a row in the MEI table --------------------------

DIVERSE_CONFIG = {
    "device": "cpu",
    "n_meis": 2,
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 200}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 5.0}},
    "regularization": {"path": "mei.regularization.Diversity", "kwargs": {"weight": 20.0}},
}


def test_diverse_meis_of_a_row_are_all_stored_and_loaded(schema, lab, mei_main):
    """A selector that reduces a group of images to one value (``target_fn=torch.mean``), a
    method row with ``n_meis`` and ``Diversity``: each row holds both images, pushed apart,
    and ``load_mei`` returns them as the method computed them."""

    class GroupSelector(dj.Computed):
        definition = lab.Selector.definition
        dataset_table = lab.Dataset
        make = lab.Selector.make

        def get_output_selected_model(self, model, key):
            unit = (self & key).fetch1("output_unit")
            return ConstrainedOutputModel(model, unit, target_fn=torch.mean)

    class DiverseMEI(MEITemplate):
        trained_model_table = lab.TrainedEnsembleModel
        selector_table = GroupSelector

    schema(GroupSelector)
    schema(DiverseMEI)
    ensemble = lab.TrainedEnsembleModel().create_ensemble(lab.ensemble_restriction)
    GroupSelector().populate()
    diverse = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", DIVERSE_CONFIG)
    plain_config = {k: v for k, v in DIVERSE_CONFIG.items() if k != "regularization"}
    plain = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", plain_config)
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    DiverseMEI().populate()
    assert len(DiverseMEI()) == 2 * len(GroupSelector())

    loaders, model = lab.TrainedEnsembleModel().load_model(ensemble)
    for unit in range(len(GroupSelector())):
        key = {**ensemble, "mei_seed": SEED, "neuron_id": 100 + unit}
        images = DiverseMEI().load_mei({**key, **diverse})
        assert images.shape == (2, 1, 8, 8)
        expected, _, _ = gradient_ascent(
            loaders,
            ConstrainedOutputModel(model, unit, target_fn=torch.mean),
            DIVERSE_CONFIG,
            SEED,
        )
        assert torch.equal(images, expected)
        twins = DiverseMEI().load_mei({**key, **plain})
        assert twins.shape == (2, 1, 8, 8)
        # a linear neuron has one optimum: without Diversity both images go there
        assert _cos(twins[0], twins[1]) > 0.99
        assert _cos(images[0], images[1]) < 0.7


# --- most discriminative stimuli: a set of neurons clustered, all stimuli in one row -------

N_CELLS = 12
CELL_SIDE = 15
MDS_CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 10.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 5.0}},
    "mds": {"n_clusters": 5, "init": "interleaved", "temperature": 5.0},
}


def _declare_mds(schema, lab):
    """The lab's code: a set table on its selector, an MDS table on its ensembles."""

    class NeuronSet(NeuronSetTemplate):
        dataset_table = lab.Dataset
        selector_table = lab.Selector

    class MDS(MDSTemplate):
        trained_model_table = lab.TrainedEnsembleModel
        neuron_set_table = NeuronSet

    schema(NeuronSet)
    schema(MDS)
    return NeuronSet, MDS


@pytest.fixture
def cell_lab(make_lab):
    """Twelve neurons of two cell types with known filters (the engine tests' TwoCellTypes,
    fitted by the lab's trainer), the ensemble made and the selector filled."""
    lab = make_lab(
        n_units=N_CELLS,
        dataset={"cell_types": True, "side": CELL_SIDE, "n_samples": 1024},
    )
    lab.ensemble = lab.TrainedEnsembleModel().create_ensemble(lab.ensemble_restriction)
    lab.Selector().populate()
    lab.truth = engine_models().TwoCellTypes(n=N_CELLS, size=CELL_SIDE, seed=0)
    return lab


def _mds_files(store, table):
    """The files of ``table``'s rows in the store (0.14 keeps NNFabrik's model states there)."""
    if backend().generation == 2:
        return stored_files(store / "_schema" / table.database)
    names = (".mds_", ".output_")
    return [p for p in stored_files(store / table.database) if any(n in p.name for n in names)]


def test_mds_rows_hold_every_stimulus_and_the_clusters_of_the_set(
    schema, cell_lab, mei_main, store
):
    lab = cell_lab
    NeuronSet, MDS = _declare_mds(schema, lab)
    everyone = NeuronSet().create_set(lab.dataset_key, comment="all neurons")
    method = mei_main.MEIMethod().add_method("mei.clustering.mds", MDS_CONFIG, comment="MDS")
    # a method row of another kind is not computed by the MDS table
    mei_main.MEIMethod().add_method(
        "mei.methods.gradient_ascent", {k: v for k, v in MDS_CONFIG.items() if k != "mds"}
    )
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    MDS().populate()
    assert len(MDS()) == 1
    key = {**lab.ensemble, **everyone, **method, "mei_seed": SEED}
    assert backend().keys(MDS()) == [key]

    stimuli = MDS().load_mds(key)
    assert stimuli.shape == (2, 1, CELL_SIDE, CELL_SIDE)
    assert torch.equal(MDS().load_mei(key), stimuli)
    assert (MDS & key).fetch1("n_clusters") == 2
    # the clusters are the two cell types
    clusters = MDS().load_clusters(key)
    ids = [[int(n["neuron_id"]) - 100 for n in cluster] for cluster in clusters]
    types = lab.truth.types
    assert sorted(ids) == [list(range(6)), list(range(6, 12))]
    assert all(len({types[u] for u in cluster}) == 1 for cluster in ids)
    assert len(MDS.Neuron & key) == N_CELLS
    # each stimulus is the known optimum of a linear contrast between the two types: the
    # direction of its type's mean weights minus the other's (filters known, gains drawn)
    weights = lab.truth.weights
    for k, cluster in enumerate(ids):
        own = types[cluster[0]]
        mine = weights[[u for u in range(N_CELLS) if types[u] == own]].mean(0)
        other = weights[[u for u in range(N_CELLS) if types[u] != own]].mean(0)
        assert _cos(stimuli[k], mine - other) >= 0.99
        assert _cos(stimuli[k], lab.truth.filters[own]) > 0.5
        assert _cos(stimuli[k], lab.truth.filters[1 - own]) < -0.4
    # the stored output is the method's, and equals a direct run of the method
    output = MDS().load_output(key)
    assert output["converged"] is True
    assert [output["labels"][u] for u in range(N_CELLS)] == [
        next(k for k, c in enumerate(ids) if u in c) for u in range(N_CELLS)
    ]
    loaders, ensemble = lab.TrainedEnsembleModel().load_model(lab.ensemble)
    expected = mds(
        loaders, ConstrainedOutputModel(ensemble, list(range(N_CELLS))), MDS_CONFIG, SEED
    )
    assert torch.equal(stimuli, expected[0])
    assert output == expected[2]
    assert math.isclose((MDS & key).fetch1("score"), expected[1], rel_tol=1e-5)
    assert len(_mds_files(store, MDS)) == 2  # the stimuli and the output
    MDS().populate()  # nothing left to do
    assert len(MDS()) == 1


def test_neuron_sets_are_made_once_and_restricted(schema, cell_lab, mei_main):
    lab = cell_lab
    NeuronSet, MDS = _declare_mds(schema, lab)
    few = NeuronSet().create_set(
        lab.dataset_key, "first", restriction="neuron_id in (111, 100, 106)"
    )
    members = NeuronSet().member_keys(few)
    assert [int(m["neuron_id"]) for m in members] == [100, 106, 111]
    assert few == dict(lab.dataset_key, neuron_set_hash=hash_list_of_dictionaries(members))
    again = NeuronSet().create_set(
        lab.dataset_key, "other", restriction="neuron_id in (100, 106, 111)"
    )
    assert again == few and (NeuronSet & few).fetch1("neuron_set_comment") == "first"
    assert len(NeuronSet()) == 1
    with pytest.raises(ValueError, match="a set needs at least one neuron"):
        NeuronSet().create_set(lab.dataset_key, restriction="neuron_id > 1000")
    lab.add_dataset(n_units=2)
    with pytest.raises(ValueError, match="exactly one entry, it matches 2"):
        NeuronSet().create_set({})

    # the MDS of a set of three: the units come from the selector, in member order
    mei_main.MEIMethod().add_method("mei.clustering.mds", {**MDS_CONFIG, "mds": {"n_clusters": 2}})
    mei_main.MEISeed().insert1({"mei_seed": SEED})
    MDS().populate()
    [key] = backend().keys(MDS())
    clusters = MDS().load_clusters(key)
    assert sorted(int(n["neuron_id"]) for c in clusters for n in c) == [100, 106, 111]
    assert {int(n["neuron_id"]) for n in clusters[0]} in ({100}, {106, 111})


def test_a_failed_mds_key_leaves_no_row_no_part_and_no_file(
    schema, cell_lab, mei_main, store, monkeypatch
):
    lab = cell_lab
    NeuronSet, MDS = _declare_mds(schema, lab)
    NeuronSet().create_set(lab.dataset_key)
    mei_main.MEIMethod().add_method("mei.clustering.mds", MDS_CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": SEED})

    def tracked():
        """0.14: the entries of MDS files in the store's tracking table."""
        if backend().generation != 0:
            return 0
        return len(schema.external["minio"] & 'attachment_name LIKE "mds\\_%%"')

    def nothing_written():
        assert len(MDS()) == 0 and len(MDS.Neuron()) == 0
        assert _mds_files(store, MDS) == [] and tracked() == 0

    # the computation fails: an ensemble of diverged models (NaN weights)
    diverged = lab.TrainedEnsembleModel().create_ensemble(lab.diverging_restriction)
    with pytest.raises(NonFiniteError):
        MDS().populate(diverged)
    nothing_written()

    # the insert fails after the row and its files were written, at the clusters
    def full_disk(self, rows, **kwargs):
        raise RuntimeError("no space left for the clusters")

    monkeypatch.setattr(MDS.Neuron, "insert", full_disk)
    with pytest.raises(RuntimeError, match="no space left"):
        MDS().populate(lab.ensemble)
    nothing_written()
    MDS().populate(lab.ensemble, reserve_jobs=True, suppress_errors=True)
    nothing_written()
    monkeypatch.undo()

    MDS().populate(lab.ensemble)  # and once it works, everything is there
    assert len(MDS()) == 1 and len(MDS.Neuron()) == N_CELLS
    assert len(_mds_files(store, MDS)) == 2
    assert tracked() == (1 if backend().generation == 0 else 0)


def test_the_model_of_a_set_needs_one_plain_unit_per_neuron():
    model = torch.nn.Linear(3, 4)

    class Selector:
        def __init__(self, **extra):
            self.extra = extra

        def get_output_selected_model(self, model, key):
            return ConstrainedOutputModel(model, key["unit"], **self.extra)

    members = [{"unit": 2}, {"unit": 0}]
    population = population_model(Selector(), model, {}, members)
    x = torch.randn(5, 3)
    assert torch.equal(population(x), model(x)[:, [2, 0]])
    refused = [
        Selector(target_fn=torch.mean),
        Selector(forward_kwargs={"data_key": "a"}),  # fine alone ...
    ]
    with pytest.raises(ComponentError, match="no target_fn"):
        population_model(refused[0], model, {}, members)
    assert population_model(refused[1], model, {}, members).forward_kwargs == {"data_key": "a"}

    class PerSession(Selector):  # ... but not one data_key per neuron
        def get_output_selected_model(self, model, key):
            return ConstrainedOutputModel(model, key["unit"], forward_kwargs={"s": key["unit"]})

    with pytest.raises(ComponentError, match="the same forward_kwargs"):
        population_model(PerSession(), model, {}, members)
    with pytest.raises(ComponentError, match="has no members"):
        population_model(Selector(), model, {}, [])


def test_a_set_methods_clusters_are_checked():
    stimuli = torch.zeros(2, 1, 4, 4)
    assert check_clusters("m", (stimuli, 0.0, {"labels": [1, 0, 1]}), 3, {}) == [1, 0, 1]
    for output in ({"labels": [0, 1]}, {"labels": [0, 2, 1]}, {"labels": [0, 1.0, 1]}, {}, None):
        with pytest.raises(ComponentError, match=r"the cluster \(0 \.\. 1\) of each of the 3"):
            check_clusters("m", (stimuli, 0.0, output), 3, {"k": 1})


def test_an_mds_table_declares_with_the_generations_types(schema, cell_lab):
    _, MDS = _declare_mds(schema, cell_lab)
    heading = MDS().heading
    assert {"n_clusters", "score", "mds", "output"} <= set(heading.secondary_attributes)
    assert "neuron_set_hash" in heading.primary_key and "method_hash" in heading.primary_key
    assert set(MDS.Neuron().heading.secondary_attributes) == {"cluster"}
    assert labs  # the lab module is shared with the other scenarios
