"""A lab module written the way public lab code is written, end to end on DataJoint 0.14 +
NNFabrik 0.2.1 + MariaDB (issue 9, "Tests", last bullet).

The lab is ``nnvision_lab.py``: NNFabrik's core tables and a ``TrainedModel`` on them, a
``Recording``/``Units`` selector, an ``MEIObjective`` whose target function reduces several
units to one number, mei's tables subclassed with ``mixins.*Mixin``, and a dataset of two
sessions whose images differ in size. Method rows ask for ``"device": "cuda"`` (added here,
where there may be no GPU) and use the original's legacy ops, ``n_meis`` and transparency.

The module is imported once (it declares its tables at import, as lab modules do); its schema
is unique to the run and dropped at the end. The numbers are checked against direct calls of
``mei.methods.gradient_ascent`` with the key's model, config and seed.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import datajoint as dj
import numpy as np
import pytest
import torch
from compat_lab import missing_device
from mei_testkit import unique_name

from mei.errors import DeviceUnavailableError
from mei.methods import gradient_ascent

pytestmark = pytest.mark.generation(0)

TESTS = Path(__file__).resolve().parent
SEED = 42
STEPS = 20
BACKGROUND_SEED = 0
"""numpy's global seed before each transparent MEI: the original's backgrounds draw from it."""


def _config(**entries):
    config = {
        "device": "cuda",
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 5}}],
    }
    config.update(entries)
    return config


BLUR = {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1.0}}
NORM = {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 8.0}}
CLIP = {"path": "mei.legacy.ops.ClipRange", "kwargs": {"x_min": -2, "x_max": 2}}
METHODS = {
    "blur and norm": _config(precondition=BLUR, postprocessing=NORM),
    "jitter": _config(
        optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.05}},
        transform={"path": "mei.legacy.ops.Jitter", "kwargs": {"max_jitter": 2}},
        precondition=BLUR,
        postprocessing=CLIP,
    ),
    "three MEIs": _config(n_meis=3, precondition=BLUR, postprocessing=NORM),
}
N_MEIS = 3
UNIT_METHODS = 2
"""Methods run on single units (all but "three MEIs")."""


def _transparent(height: int, width: int) -> dict:
    """Transparency on a white-noise background of one session's image size."""
    return _config(
        transparency=True,
        transparency_weight=0.5,
        background={
            "path": "mei.legacy.ops.WhiteNoiseBackground",
            "kwargs": {"mean": 0.0, "std": 1.0, "shape": [height, width]},
        },
        regularization={"path": "mei.legacy.ops.RegTransparency", "kwargs": {"weight": 0.1}},
        precondition={
            "path": "mei.legacy.ops.GaussianBlur",
            "kwargs": {"sigma": 1.0, "mei_only": True},
        },
        postprocessing=CLIP,
    )


# --------------------------------------------------------------------------- the lab
@pytest.fixture(scope="module")
def lab(nnfabrik_main, mei_main):
    """The lab module, declared in a schema of this run and filled the way a lab fills it:
    NNFabrik entries, trained models, an ensemble, the selectors, method rows and a seed."""
    if "nnvision_lab" in sys.modules:
        pytest.fail("nnvision_lab was imported before its schema name was chosen")
    dj.config["nnvision_lab.schema_name"] = unique_name("mei_test_nnvision_lab")
    import nnvision_lab as lab

    nnf = nnfabrik_main
    added = []
    try:
        # NNFabrik's TrainedModel.make looks the current user up in the core Fabrikant,
        # whatever its user_table: removed again at the end, or other labs' models get it
        fabrikant = nnf.Fabrikant().add_entry("lab", "lab@example.org", "mei tests")
        added.append((nnf.Fabrikant, fabrikant))
        dataset = nnf.Dataset().add_entry(
            "nnvision_lab.session_loaders",
            {"sessions": lab.SESSIONS},
            dataset_fabrikant="lab",
            dataset_comment="two sessions",
        )
        model = nnf.Model().add_entry(
            "nnvision_lab.session_cnn", {"hidden_channels": 4}, model_fabrikant="lab"
        )
        trainer = nnf.Trainer().add_entry(
            "nnvision_lab.standard_trainer", {"epochs": 2}, trainer_fabrikant="lab"
        )
        added += [(nnf.Dataset, dataset), (nnf.Model, model), (nnf.Trainer, trainer)]
        seeds = [{"seed": s} for s in (1, 2) if not nnf.Seed() & {"seed": s}]
        nnf.Seed().insert(seeds)
        added += [(nnf.Seed, s) for s in seeds]

        lab.TrainedModel().populate(dataset, model, trainer)
        lab.ensemble_key = lab.Ensemble().create_ensemble(
            dict(dataset, **model, **trainer), comment="both seeds"
        )
        lab.Recording().populate()
        mean = lab.MEITargetFunctions().add_entry("nnvision_lab.mean", {}, "mean response")
        lab.units_keys = {}
        for data_key, session in lab.SESSIONS.items():
            unit_ids = np.arange(session["n_neurons"])  # as fetched from a lab's unit table
            units = lab.MEITargetUnits().add_entry(
                unit_ids, data_key=data_key, unit_comment=data_key
            )
            lab.units_keys[data_key] = {"unit_hash": units["unit_hash"]}
        lab.MEIObjective().populate()
        assert len(lab.MEIObjective() & mean) == 2

        methods = lab.Method()
        lab.method_keys = {
            name: methods.add_method("mei.methods.gradient_ascent", config, comment=name)
            for name, config in METHODS.items()
        }
        lab.transparent_keys = {}
        for data_key, session in lab.SESSIONS.items():
            _, height, width = session["image_shape"]
            lab.transparent_keys[data_key] = methods.add_method(
                "mei.methods.gradient_ascent",
                _transparent(height, width),
                comment=f"transparent, {height}x{width} background",
            )
        mei_main.MEISeed().insert1({"mei_seed": SEED})
        yield lab
    finally:
        lab.schema.drop(force=True)
        mei_main.MEISeed().delete_quick()
        for table, key in reversed(added):
            (table() & key).delete_quick()
        del dj.config["nnvision_lab.schema_name"]


def _loaded(lab, cache, key):
    """``(dataloaders, ensemble)`` of ``key``, loaded once per ensemble, a fresh copy each."""
    ensemble = {k: key[k] for k in lab.Ensemble.primary_key}
    h = json.dumps(ensemble, sort_keys=True, default=str)
    if h not in cache:
        cache[h] = lab.Ensemble().load_model(ensemble)
    return copy.deepcopy(cache[h])


def _direct(lab, cache, selector, key):
    """``gradient_ascent`` called directly with ``key``'s model, method config and seed, on
    the CPU (as the populating table's ``device`` override runs it)."""
    dataloaders, model = _loaded(lab, cache, key)
    selected = selector().get_output_selected_model(model, key)
    config = dict((lab.Method() & key).fetch1("method_config"), device="cpu")
    if config.get("transparency"):  # after loading: NNFabrik seeds numpy when building models
        np.random.seed(BACKGROUND_SEED)
    return gradient_ascent(dataloaders, selected, config, int(key["mei_seed"]))


def _fetch_mei(table, key, folder):
    """The stored MEI as a notebook gets it: ``fetch1`` with a download path, then
    ``torch.load``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = (table & key).fetch1("mei", download_path=str(folder))
    return torch.load(path)


def _session_of(lab, table, key):
    if table is lab.MEI:
        return (lab.Recording.Units() & key).fetch1("data_key")
    return (lab.MEITargetUnits() & (lab.MEIObjective() & key)).fetch1("data_key")


def _jobs(lab, table):
    return lab.schema.jobs & {"table_name": table.table_name}


def _worker_env(tmp_path):
    """A folder with the lab's ``dj_local_conf.json`` (how a worker machine is configured)
    and the environment of a worker process started there."""
    names = (
        "database.host",
        "database.user",
        "database.password",
        "database.use_tls",
        "stores",
        "safemode",
        "nnfabrik.schema_name",
        "nnvision_lab.schema_name",
    )
    folder = tmp_path / "worker"
    folder.mkdir()
    conf = {name: dj.config[name] for name in names}
    (folder / "dj_local_conf.json").write_text(json.dumps(conf, default=str))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "PYTHONWARNINGS": "ignore",
        "MEI_QUIET": "1",
    }
    for name in ("DJ_HOST", "DJ_USER", "DJ_PASS"):
        env.pop(name, None)  # the folder's configuration, not the test run's environment
    return folder, env


@pytest.fixture(scope="module")
def populated(lab, tmp_path_factory):
    """Both MEI tables filled: ``MEITextures`` by ``populate(reserve_jobs=True)`` in this
    process; ``MEI`` by a worker process (batched) and by batched populate here. Every method
    row asks for cuda; the tables' ``device`` override runs them on the CPU."""
    plain = [lab.method_keys[name] for name in METHODS]
    textures = lab.MEITextures()
    textures.device = "cpu"
    textures.populate(plain, reserve_jobs=True)
    for data_key, method_key in lab.transparent_keys.items():
        np.random.seed(BACKGROUND_SEED)
        textures.populate(method_key, lab.units_keys[data_key], reserve_jobs=True)
    assert len(_jobs(lab, lab.MEITextures)) == 0  # done and nothing failed

    # the unit table: a worker process configured like a lab's machine runs one method ...
    folder, env = _worker_env(tmp_path_factory.mktemp("lab"))
    command = [sys.executable, "-m", "mei", "worker", "nnvision_lab.MEI", "--quiet", "--json"]
    command += ["--device", "cpu", "--batch-size", "8"]
    command += ["--restrict", json.dumps(lab.method_keys["blur and norm"])]
    ran = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    n_units = sum(s["n_neurons"] for s in lab.SESSIONS.values())
    assert summary["done"] == n_units and summary["errors"] == 0, summary
    # ... and batched populate here the other (several MEIs per key need a target function
    # that reduces them to one number: not for single units)
    units = lab.MEI()
    units.device = "cpu"
    units.populate(lab.method_keys["jitter"], batch_size=8, reserve_jobs=True)
    assert len(_jobs(lab, lab.MEI)) == 0
    return lab


# --------------------------------------------------------------------------- tests
def test_the_lab_is_filled_as_a_lab_fills_it(lab):
    assert len(lab.TrainedModel()) == 2
    assert len(lab.Ensemble.Member() & lab.ensemble_key) == 2
    assert len(lab.Recording.Sessions()) == 2
    assert len(lab.Recording.Units()) == sum(s["n_neurons"] for s in lab.SESSIONS.values())
    # method rows asking for cuda were added on this machine, config and all
    for key in [*lab.method_keys.values(), *lab.transparent_keys.values()]:
        assert (lab.Method() & key).fetch1("method_config")["device"] == "cuda"
    # the MEI tables declare the original's columns
    for table in (lab.MEI, lab.MEITextures):
        attributes = table().heading.attributes
        assert attributes["mei"].is_attachment and attributes["mei"].store == "minio"
        assert attributes["output"].is_attachment and attributes["score"].type == "float"


def test_every_mei_has_its_own_sessions_image_size(populated, tmp_path):
    lab = populated
    n_units = sum(s["n_neurons"] for s in lab.SESSIONS.values())
    assert len(lab.MEI()) == UNIT_METHODS * n_units
    assert len(lab.MEITextures()) == len(METHODS) * 2 + 2
    seen = set()
    for table in (lab.MEI, lab.MEITextures):
        for key in table().fetch("KEY"):
            data_key = _session_of(lab, table, key)
            _, height, width = lab.SESSIONS[data_key]["image_shape"]
            mei = _fetch_mei(table(), key, tmp_path)
            assert mei.shape[-2:] == (height, width), (table.__name__, key)
            seen.add(data_key)
    assert seen == set(lab.SESSIONS)


def test_scores_and_meis_are_those_of_a_direct_call(populated, tmp_path):
    """``MEITextures`` (unbatched populate, this process): the same numbers, bit for bit.
    ``MEI`` (batched, partly in a worker process): equal to the single run within 1e-5."""
    lab = populated
    cache = {}
    for table, selector, exact in (
        (lab.MEITextures, lab.MEIObjective, True),
        (lab.MEI, lab.Recording.Units, False),
    ):
        for key in table().fetch("KEY"):
            mei, score, output = _direct(lab, cache, selector, key)
            stored_mei = _fetch_mei(table(), key, tmp_path / table.__name__)
            stored_score = (table() & key).fetch1("score")
            assert stored_mei.shape == mei.shape
            if exact:
                assert torch.equal(stored_mei, mei), key
                # the original's column is MySQL's single-precision `float`, which MariaDB
                # returns to 6 significant digits
                assert stored_score == float(f"{np.float32(score):.6g}"), key
                assert table().load_output(key) == output
            else:
                torch.testing.assert_close(stored_mei, mei, atol=1e-5, rtol=0)
                assert stored_score == pytest.approx(score, abs=1e-5), key


def test_several_meis_per_key_are_stored_whole(populated, tmp_path):
    lab = populated
    method = lab.method_keys["three MEIs"]
    keys = (lab.MEITextures() & method).fetch("KEY")
    assert len(keys) == 2
    for key in keys:
        meis = _fetch_mei(lab.MEITextures(), key, tmp_path)
        assert meis.shape[:2] == (N_MEIS, 1)
        assert not torch.equal(meis[0], meis[1])  # not one image repeated


def test_several_meis_of_a_single_unit_fail_with_a_reason(populated, store):
    """Several MEIs share one score, so the selector must reduce them to one number (the
    original failed too, in ``.item()``): each key's error is recorded, nothing is stored."""
    lab = populated
    method = lab.method_keys["three MEIs"]
    table = lab.MEI()
    table.device = "cpu"
    files = sorted(p.name for p in store.rglob("*") if p.is_file())
    try:
        table.populate(method, reserve_jobs=True, suppress_errors=True)
        errors = (_jobs(lab, lab.MEI) & 'status="error"').fetch("error_message")
        assert len(errors) == len(lab.Recording.Units())
        assert all("n_meis" in e and "target_fn" in e for e in errors), errors[0]
        assert len(table & method) == 0
        assert sorted(p.name for p in store.rglob("*") if p.is_file()) == files
    finally:
        _jobs(lab, lab.MEI).delete_quick()


def test_transparent_meis_have_an_alpha_channel(populated, tmp_path):
    lab = populated
    for data_key, method_key in lab.transparent_keys.items():
        key = (lab.MEITextures() & method_key).fetch1("KEY")
        assert _session_of(lab, lab.MEITextures, key) == data_key
        mei = _fetch_mei(lab.MEITextures(), key, tmp_path)
        _, height, width = lab.SESSIONS[data_key]["image_shape"]
        assert mei.shape == (1, 2, height, width)  # the image and its transparency
    opaque = (lab.MEITextures() & lab.method_keys["blur and norm"]).fetch("KEY")[0]
    assert _fetch_mei(lab.MEITextures(), opaque, tmp_path).shape[1] == 1


def test_a_background_of_the_other_session_fails_its_keys_with_a_reason(populated, store):
    """Populated without restriction, each transparent row also meets the other session's
    objective, whose images have another size: those keys fail, the error names the
    background and the sizes, nothing is stored, and the other keys are untouched."""
    lab = populated
    table = lab.MEITextures()
    table.device = "cpu"
    before = len(table)
    files = sorted(p.name for p in store.rglob("*") if p.is_file())
    try:
        table.populate(reserve_jobs=True, suppress_errors=True)
        errors = (_jobs(lab, lab.MEITextures) & 'status="error"').fetch("error_message")
        assert len(errors) == len(lab.transparent_keys)
        for message in errors:
            assert "background (WhiteNoiseBackground)" in message, message
        assert len(table) == before
        assert sorted(p.name for p in store.rglob("*") if p.is_file()) == files
    finally:
        _jobs(lab, lab.MEITextures).delete_quick()


def test_a_cuda_row_is_refused_without_the_override_and_nothing_is_reserved(lab):
    device = missing_device()  # "cuda" on a machine without a GPU
    methods = lab.Method()
    key = methods.add_method(
        "mei.methods.gradient_ascent",
        _config(device=device, precondition=BLUR, postprocessing=NORM, n_meis=1),
        comment="for the GPU workers",
    )
    try:
        for table, populate in (
            (lab.MEITextures, lambda t: t.populate(key, reserve_jobs=True)),
            (lab.MEI, lambda t: t.populate(key, reserve_jobs=True, suppress_errors=True)),
            (lab.MEI, lambda t: t.populate(key, batch_size=8, reserve_jobs=True)),
        ):
            with pytest.raises(DeviceUnavailableError) as refused:
                populate(table())
            message = str(refused.value)
            assert repr(device) in message and key["method_hash"] in message
            assert f"{table.__name__}.device" in message
            assert "no key was reserved" in message.lower()
            assert len(_jobs(lab, table)) == 0  # nothing reserved, nothing failed
            assert len(table() & key) == 0
    finally:
        (methods & key).delete_quick()
