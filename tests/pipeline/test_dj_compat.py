"""Labs' existing sinzlab/mei code runs unchanged: the DataJoint side.

Method rows naming a device this machine lacks, workers that refuse them before reserving a
key, the original library's names and hooks (CSRF V1 objective, ring MEIs, ``import_func``,
``insert_key_in_ops``, ``ModelLoader(model_table)``, ``MEITemplate(cache_size_limit=)``),
several MEIs per key (``n_meis``) and ``fetch1("mei")`` giving a path ``torch.load`` reads. On
both DataJoint generations (2.x on PostgreSQL and MariaDB, 0.14 on MariaDB).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import compat_lab
import datajoint as dj
import pytest
import run_path_lab
import torch
from compat_lab import missing_device
from mei_testkit import METHOD_CONFIG, N_UNITS, stored_files
from worker_lab import worker_env

from mei import integration, mixins
from mei.dj import run
from mei.dj.backend import backend
from mei.dj.populate import check_devices
from mei.dj.worker import run_worker
from mei.errors import ConfigError, DeviceUnavailableError, MEIError
from mei.integration import ModelLoader
from mei.main import CSRFV1ObjectiveTemplate, MEITemplate
from mei.methods import gradient_ascent

RECORDING = "run_path_lab.recording_method"
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def path_lab(schema):
    run_path_lab.CALLS.clear()
    yield run_path_lab.declare(schema)
    run_path_lab.CALLS.clear()


def _queue_counts(table):
    return backend().jobs(table, declare=False).counts()


NO_JOBS = {"reserved": 0, "error": 0, "ignore": 0}


# --------------------------------------------------------------------------- devices
def test_a_method_row_may_name_a_device_this_machine_lacks(schema, mei_main):
    device = missing_device()
    methods = mei_main.MEIMethod()
    key = methods.add_method(
        "mei.methods.gradient_ascent", dict(METHOD_CONFIG, device=device), comment="for GPUs"
    )
    assert (methods & key).fetch1("method_config")["device"] == device
    # everything else is still checked, the device's spelling included
    for broken in ({"device": "gpu"}, {"device": device, "optimizer": {"path": "no.Such"}}):
        with pytest.raises(ConfigError):
            methods.add_method("mei.methods.gradient_ascent", {**METHOD_CONFIG, **broken})
    assert len(methods) == 1


def test_a_labs_validate_config_without_check_device_is_still_called(schema, mei_main):
    seen = []

    def validate_config(config):
        seen.append(config)
        if config.get("bad"):
            raise ConfigError("bad config")

    compat_lab.echo_method.validate_config = validate_config
    try:
        mei_main.MEIMethod().add_method("compat_lab.echo_method", {"device": "cuda"})
        with pytest.raises(ConfigError, match="bad config"):
            mei_main.MEIMethod().add_method("compat_lab.echo_method", {"bad": True})
    finally:
        del compat_lab.echo_method.validate_config
    assert seen == [{"device": "cuda"}, {"bad": True}]


def _device_lab(path_lab, mei_main, device):
    key = mei_main.MEIMethod().add_method(RECORDING, dict(run_path_lab.CONFIG, device=device))
    mei_main.MEISeed().insert1({"mei_seed": 1})
    return key


@pytest.mark.parametrize("how", ["worker", "populate", "batched populate"])
def test_a_worker_refuses_a_missing_device_before_reserving(path_lab, mei_main, how):
    device = missing_device()
    method_key = _device_lab(path_lab, mei_main, device)
    table = path_lab.MEI()
    refuse = {
        "worker": lambda: run_worker(table, batch_size=8, display_progress=False),
        "populate": lambda: table.populate(reserve_jobs=True, suppress_errors=True),
        "batched populate": lambda: table.populate(
            batch_size=8, reserve_jobs=True, suppress_errors=True
        ),
    }[how]
    with pytest.raises(DeviceUnavailableError) as error:
        refuse()
    message = str(error.value)
    assert repr(device) in message
    assert method_key["method_fn"] in message and method_key["method_hash"] in message
    assert "MEI.device" in message and "no key was reserved" in message.lower()
    assert error.value.device == device and error.value.methods == [method_key]
    assert isinstance(error.value, MEIError)  # the CLI prints it as one line
    # nothing reserved, nothing failed, nothing computed
    assert _queue_counts(table) == NO_JOBS
    assert run_path_lab.CALLS == [] and len(path_lab.MEI()) == 0

    # the override redirects every method: then it runs
    if how == "worker":
        result = run_worker(table, batch_size=8, device="cpu", display_progress=False)
        assert result["success_count"] == run_path_lab.N_UNITS
    else:
        table.device = "cpu"
        table.populate(**({"batch_size": 8} if how == "batched populate" else {}))
    assert len(path_lab.MEI()) == run_path_lab.N_UNITS
    assert {device for _, device, _ in run_path_lab.CALLS} == {"cpu"}
    assert _queue_counts(table) == NO_JOBS


def test_only_the_pending_keys_methods_count(path_lab, mei_main):
    missing = _device_lab(path_lab, mei_main, missing_device())
    here = mei_main.MEIMethod().add_method(RECORDING, dict(run_path_lab.CONFIG, device="cpu"))
    table = path_lab.MEI()
    with pytest.raises(DeviceUnavailableError):
        check_devices(table)
    # restricted to the method this machine can run, the worker runs it
    result = run_worker(table, here, batch_size=8, display_progress=False)
    assert result["success_count"] == run_path_lab.N_UNITS
    assert len(path_lab.MEI() & missing) == 0
    # an override naming a missing device is refused too, whatever the rows say
    table.device = missing_device()
    with pytest.raises(DeviceUnavailableError, match=r"device override MEI\.device") as error:
        run_worker(table, here, batch_size=8, display_progress=False)
    assert error.value.override == "MEI.device" and error.value.methods == []
    assert _queue_counts(table) == NO_JOBS


def test_the_worker_command_says_it_in_one_line(make_lab, mei_main, schema):
    lab = make_lab(seeds=(1,), diverging=False)
    lab.TrainedEnsembleModel().create_ensemble(lab.dataset_key)
    lab.Selector().populate()
    device = missing_device()
    method_key = mei_main.MEIMethod().add_method(
        "mei.methods.gradient_ascent", dict(METHOD_CONFIG, device=device)
    )
    mei_main.MEISeed().insert1({"mei_seed": 7})
    env = {
        **os.environ,
        **worker_env(schema, mei_main),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "MEI_QUIET": "1",
        "PYTHONWARNINGS": "ignore",
    }
    command = [sys.executable, "-m", "mei", "worker", "worker_lab.MEI", "--quiet"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("mei worker: error:") and method_key["method_hash"] in last
    assert repr(device) in last and "MEI.device" in last
    assert _queue_counts(lab.MEI()) == NO_JOBS and len(lab.MEI()) == 0
    ran = subprocess.run(
        [*command, "--device", "cpu"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert len(lab.MEI()) == N_UNITS


# --------------------------------------------------------------------------- the method table
def test_insert_key_in_ops_and_optional_names(schema, mei_main):
    methods = mei_main.MEIMethod()
    config = {
        "initial": {"path": "a.B", "kwargs": {"key": None}},
        "stopper": {"path": "a.C", "kwargs": {"key": None}},
        "transform": {"path": "a.D"},
    }
    methods.insert_key_in_ops(config, {"neuron_id": 3})  # in place, as the original did
    assert config["initial"]["kwargs"]["key"] == {"neuron_id": 3}
    assert config["stopper"]["kwargs"]["key"] is None  # not one of optional_names
    assert config["transform"] == {"path": "a.D"}
    assert set(methods.optional_names) == {
        "initial",
        "transform",
        "regularization",
        "precondition",
        "postprocessing",
    }


def test_a_labs_hooks_are_used_by_runs(path_lab, mei_main):
    """``import_func``, ``optional_names`` and ``insert_key_in_ops`` of a lab's method table
    take part in every run, and keys then run one at a time through ``generate_mei``."""
    imported = []

    def import_func(path):
        imported.append(path)
        return {"lab.echo": compat_lab.echo_method, "lab.recording": run_path_lab.recording_method}[
            path
        ]

    class MEIMethod(mei_main.MEIMethod):  # the same table, with the lab's hooks
        optional_names = (*mei_main.MEIMethod.optional_names, "stopper")

    MEIMethod.import_func = staticmethod(import_func)
    assert run.overrides_generate_mei(MEIMethod)

    methods = MEIMethod()
    config = {"stopper": {"path": "x.Y", "kwargs": {"key": None}}}
    key = methods.add_method("lab.echo", config)  # imported through import_func
    result = methods.generate_mei(None, None, dict(key, neuron_id=5), 11)
    assert result["output"]["config"]["stopper"]["kwargs"]["key"] == dict(key, neuron_id=5)
    assert result["output"]["seed"] == 11
    assert (methods & key).fetch1("method_config") == config  # the stored config is untouched
    assert imported == ["lab.echo", "lab.echo"]

    path_lab.MEI.method_table = MEIMethod
    try:
        methods.add_method("lab.recording", run_path_lab.CONFIG)
        mei_main.MEISeed().insert1({"mei_seed": 1})
        path_lab.MEI().populate({"method_fn": "lab.recording"}, batch_size=8)
    finally:
        del path_lab.MEI.method_table
    assert [c[0] for c in run_path_lab.CALLS] == ["single"] * run_path_lab.N_UNITS
    assert len(path_lab.MEI()) == run_path_lab.N_UNITS


def test_generate_ringmei(schema, mei_main):
    methods = mei_main.MEIMethod()
    key = methods.add_method("compat_lab.ring_method", {"value": 2.0})
    mask = torch.zeros(compat_lab.SHAPE)
    mask[..., 1:3, 1:3] = 1.0
    result = methods.generate_ringmei(None, None, dict(key, neuron_id=1), 5, mask)
    assert torch.equal(result["mei"], 2.0 * mask)
    assert result["score"] == 8.0 and result["output"] == {"seed": 5}
    assert result["neuron_id"] == 1 and result["method_hash"] == key["method_hash"]


def test_integration_helpers():
    assert integration.import_module("mei.methods.gradient_ascent") is gradient_ascent
    datafiles = {"a.pkl": {"unit_indices": [4, 2], "session_id": "s1"}}
    rows = integration.get_mappings({"datafiles": ["a.pkl"]}, {"d": 1}, load_func=datafiles.get)
    assert rows == [
        {"d": 1, "neuron_id": 4, "neuron_position": 0, "session_id": "s1"},
        {"d": 1, "neuron_id": 2, "neuron_position": 1, "session_id": "s1"},
    ]
    assert mixins.CSRFV1SelectorTemplateMixin is mixins.CSRFV1ObjectiveTemplateMixin


class _Models:
    """A trained model table as the original ModelLoader used it: a class whose instances
    have ``primary_key`` and ``load_model(key=...)``."""

    calls: list = []
    primary_key = ["model_seed"]

    def load_model(self, key):
        type(self).calls.append(key)
        torch.manual_seed(key["model_seed"])
        return {"train": {}}, torch.nn.Linear(2, 1)


def test_model_loader_takes_a_model_table_as_the_original():
    _Models.calls = []
    for loader in (ModelLoader(_Models, 1), ModelLoader(_Models, cache_size_limit=1)):
        assert loader.model_table is _Models and loader.cache_size_limit == 1
        _, first = loader.load(key={"model_seed": 1, "neuron_id": 3})
        _, again = loader.load({"model_seed": 1, "neuron_id": 4})
        assert torch.equal(first.weight, again.weight)
        loader.load({"model_seed": 2})  # evicts seed 1 (limit 1)
        loader.load({"model_seed": 1})
    assert [k["model_seed"] for k in _Models.calls] == [1, 2, 1] * 2
    assert _Models.calls[0] == {"model_seed": 1}  # only the model's part of the key
    assert ModelLoader(_Models).cache_size_limit == 10
    with pytest.raises(TypeError, match="load_model"):
        ModelLoader(object())


def test_mei_table_cache_size_limit_and_loader_class(path_lab, mei_main):
    mei_main.MEIMethod().add_method(RECORDING, run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = path_lab.MEI(cache_size_limit=0)
    assert table.model_loader.cache_size_limit == 0
    table.populate()
    assert table.model_loader.misses == run_path_lab.N_UNITS  # nothing cached
    assert path_lab.MEI().model_loader.cache_size_limit == 10
    with pytest.raises(ValueError, match="cache_size_limit must be >= 0"):
        path_lab.MEI(cache_size_limit=-1)

    made = []

    class OriginalLoader:  # a lab's loader with the original's constructor
        def __init__(self, model_table, cache_size_limit=10):
            made.append((model_table, cache_size_limit))
            self.model_table = model_table

        def load(self, key):
            return self.model_table().load_model(key=key)

    path_lab.MEI().delete_quick()
    path_lab.MEI.model_loader_class = OriginalLoader
    try:
        table = path_lab.MEI(cache_size_limit=3)
        # made with the table object, as the original did, not on first use
        assert made == [(path_lab.TrainedEnsembleModel, 3)]
        assert isinstance(table.model_loader, OriginalLoader)
        table.populate()
    finally:
        del path_lab.MEI.model_loader_class
    assert made == [(path_lab.TrainedEnsembleModel, 3)]  # populate used that one
    assert len(path_lab.MEI()) == run_path_lab.N_UNITS
    assert len(path_lab.MEI()) == run_path_lab.N_UNITS


def test_objective_table_is_the_older_name_of_selector_table(path_lab, schema, mei_main):
    class OlderMEI(MEITemplate):
        trained_model_table = path_lab.TrainedEnsembleModel
        objective_table = path_lab.Selector  # sinzlab/mei 2020-2024

    schema(OlderMEI)
    assert OlderMEI.selector_table is path_lab.Selector
    assert "neuron_id" in OlderMEI().primary_key
    mei_main.MEIMethod().add_method(RECORDING, run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    OlderMEI().populate()
    assert len(OlderMEI()) == run_path_lab.N_UNITS


def test_csrf_v1_objective_selects_the_neuron_of_its_session(schema, mei_main, tmp_path):
    lab = compat_lab.declare_csrf(schema)
    datafiles = compat_lab.write_datafiles(tmp_path)
    dataset = {"dataset_fn": "csrf_v1", "dataset_hash": "a" * 32}
    lab.Dataset.insert1(dict(dataset, dataset_config={"datafiles": datafiles}))
    other = {"dataset_fn": "other_loader", "dataset_hash": "b" * 32}
    lab.Dataset.insert1(dict(other, dataset_config={"datafiles": ["/no/such/file"]}))
    lab.CSRFV1Objective().populate()  # only the csrf_v1 dataset is read

    rows = backend().to_dicts(lab.CSRFV1Objective())
    got = {(r["session_id"], int(r["neuron_position"])): int(r["neuron_id"]) for r in rows}
    assert got == {(s, p): n for s, ids in compat_lab.SESSIONS.items() for p, n in enumerate(ids)}
    assert all(r["dataset_fn"] == "csrf_v1" for r in rows)

    lab.TrainedModel.insert1(dict(dataset, model_seed=0))
    ensemble = lab.TrainedEnsembleModel().create_ensemble(dataset)
    config = dict(
        METHOD_CONFIG,
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 1.0}},
    )
    method = mei_main.MEIMethod().add_method("mei.methods.gradient_ascent", config)
    mei_main.MEISeed().insert1({"mei_seed": 3})
    lab.MEI().populate(batch_size=8)
    model = compat_lab.SessionModel(0)
    assert len(lab.MEI()) == len(rows)
    for row in rows:
        key = dict(ensemble, **method, mei_seed=3, neuron_id=row["neuron_id"])
        mei = lab.MEI().load_mei(key).flatten()
        weights = model.readouts[row["session_id"]].weight.detach()
        cosines = torch.nn.functional.cosine_similarity(mei[None], weights, dim=1)
        # the neuron's own unit of its own session's readout, and no other
        assert cosines.argmax() == row["neuron_position"] and cosines.max() > 0.99
        other_session = next(s for s in compat_lab.SESSIONS if s != row["session_id"])
        other_weight = model.readouts[other_session].weight[row["neuron_position"]].detach()
        assert torch.nn.functional.cosine_similarity(mei, other_weight, dim=0) < 0.9


def test_csrf_v1_key_source_is_datajoints_hook_a_lab_may_narrow(schema, mei_main, tmp_path):
    lab = compat_lab.declare_csrf(schema)
    datafiles = compat_lab.write_datafiles(tmp_path)
    for fn, digit, files in [
        ("csrf_v1", "a", datafiles),
        ("csrf_v1", "c", ["/no/such/file"]),  # reading it would fail
        ("other_loader", "b", ["/no/such/file"]),
    ]:
        lab.Dataset.insert1(
            {"dataset_fn": fn, "dataset_hash": digit * 32, "dataset_config": {"datafiles": files}}
        )
    csrf = {("csrf_v1", "a" * 32), ("csrf_v1", "c" * 32)}
    for source in (lab.CSRFV1Objective()._key_source, lab.CSRFV1Objective().key_source):
        assert {(k["dataset_fn"], k["dataset_hash"]) for k in backend().keys(source)} == csrf

    @schema
    class OnlyA(CSRFV1ObjectiveTemplate):  # the original's idiom: narrow DataJoint's hook
        dataset_table = lab.Dataset

        @property
        def _key_source(self):
            return super()._key_source & {"dataset_hash": "a" * 32}

    assert [k["dataset_hash"] for k in backend().keys(OnlyA().key_source)] == ["a" * 32]
    OnlyA().populate()  # the unreadable csrf_v1 dataset "c" is not read
    rows = backend().to_dicts(OnlyA())
    assert len(rows) == sum(map(len, compat_lab.SESSIONS.values()))
    assert {r["dataset_hash"] for r in rows} == {"a" * 32}


# --------------------------------------------------------------------------- several MEIs
def test_several_meis_per_key_are_stored_and_fetched(path_lab, mei_main, tmp_path):
    compat_lab.BATCHED_CALLS.clear()
    config = {"device": "cpu", "n_meis": 3}
    method = mei_main.MEIMethod().add_method("compat_lab.several_meis_method", config)
    mei_main.MEISeed().insert1({"mei_seed": 5})
    path_lab.MEI().populate(batch_size=8)  # the batched form knows nothing of n_meis
    assert compat_lab.BATCHED_CALLS == []
    assert len(path_lab.MEI()) == run_path_lab.N_UNITS

    key = backend().keys(path_lab.MEI())[0]
    dataloaders, model = path_lab.TrainedEnsembleModel().load_model(key)
    selected = path_lab.Selector().get_output_selected_model(model, key)
    expected, score, output = compat_lab.several_meis_method(dataloaders, selected, config, 5)
    assert expected.shape == (3, 1, 4, 4)
    assert torch.equal(path_lab.MEI().load_mei(key), expected)
    assert path_lab.MEI().load_output(key) == output
    assert (path_lab.MEI & key).fetch1("score") == pytest.approx(score, rel=1e-6)
    assert key["method_hash"] == method["method_hash"]
    assert torch.equal(torch.load(_fetch_path(path_lab.MEI & key, "mei", tmp_path)), expected)


def test_check_result_keeps_every_mei():
    meis = torch.randn(4, 1, 4, 4, requires_grad=True)
    mei, score, _ = run.check_result("m", (meis, torch.tensor(1.5), {}), {"neuron_id": 1})
    assert mei.shape == (4, 1, 4, 4) and torch.equal(mei, meis.detach()) and score == 1.5
    assert not mei.requires_grad


# --------------------------------------------------------------------------- fetching files
def _fetch_path(query, attribute, folder):
    """``query.fetch1(attribute)`` into ``folder``, the generation's way."""
    if backend().generation == 2:
        with dj.config.override(download_path=str(folder)):
            return query.fetch1(attribute)
    return query.fetch1(attribute, download_path=str(folder))


def test_fetch1_gives_a_path_torch_load_reads(path_lab, mei_main, store, tmp_path):
    mei_main.MEIMethod().add_method(RECORDING, run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = path_lab.MEI()
    table.populate()
    key = backend().keys(table)[0]
    path = _fetch_path(path_lab.MEI & key, "mei", tmp_path)
    assert isinstance(path, str) and Path(path).parent == tmp_path
    assert torch.equal(torch.load(path), table.load_mei(key))
    output = _fetch_path(path_lab.MEI & key, "output", tmp_path)
    assert torch.load(output) == table.load_output(key)
    # fetching again reuses the downloaded file; load_mei downloads nothing
    assert _fetch_path(path_lab.MEI & key, "mei", tmp_path) == path
    assert len(list(tmp_path.iterdir())) == 2
    if backend().generation == 2:  # the file itself stays in the configured store
        [stored] = [p for p in stored_files(store) if p.name == Path(path).name]
        assert stored.read_bytes() == Path(path).read_bytes()
        assert str(stored).startswith(str(store / "_schema" / table.database))


@pytest.mark.generation(2)
def test_garbage_collection_keeps_the_files_of_rows(path_lab, mei_main):
    mei_main.MEIMethod().add_method(RECORDING, run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    table = path_lab.MEI()
    table.populate()
    keys = backend().keys(table)
    (path_lab.MEI & keys[0]).delete_quick()
    collector = dj.gc.GarbageCollector(
        dj.Schema(table.database, create_schema=False), store="minio"
    )
    result = collector.collect(dry_run=False)
    assert result["schema_paths_deleted"] == 2  # the deleted row's mei and output, only
    for key in keys[1:]:
        assert table.load_mei(key).shape == run_path_lab.SHAPE


@pytest.mark.generation(2)
def test_tables_declared_with_object_keep_working(path_lab, mei_main, schema, store):
    """A 2.x MEI table declared before mei's codec keeps ``<object@minio>``: rows are written
    with a staged insert, fetch gives DataJoint's ObjectRef, load_mei reads both."""

    class ObjectMEI(MEITemplate):
        trained_model_table = path_lab.TrainedEnsembleModel
        selector_table = path_lab.Selector

        @property
        def definition(self):
            types = dict(backend().type_map(self.storage), file="<object@minio>")
            return self.definition_template.format(**types)

    schema(ObjectMEI)
    assert ObjectMEI().heading["mei"].type == "<object@minio>"
    mei_main.MEIMethod().add_method(RECORDING, run_path_lab.CONFIG)
    mei_main.MEISeed().insert1({"mei_seed": 1})
    ObjectMEI().populate()
    path_lab.MEI().populate()
    for key in backend().keys(ObjectMEI()):
        ref = (ObjectMEI & key).fetch1("mei")
        assert torch.equal(torch.load(io.BytesIO(ref.read())), ObjectMEI().load_mei(key))
        assert torch.equal(ObjectMEI().load_mei(key), path_lab.MEI().load_mei(key))
        folder = store / backend().key_folder(ObjectMEI(), key)
        assert len(stored_files(folder)) == 2  # where recovery looks for a dead worker's files
    key = backend().keys(path_lab.MEI())[0]
    assert len(stored_files(store / backend().key_folder(path_lab.MEI(), key))) == 2


@pytest.mark.generation(2)
def test_the_codec_is_found_without_importing_mei():
    code = (
        "import sys; from datajoint.codecs import get_codec; c = get_codec('mei_file'); "
        "print(type(c).__module__, 'mei.main' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mei.dj.backend", "False"]


@pytest.mark.generation(2)
def test_the_codec_takes_objects_bytes_and_paths(schema, store, tmp_path):
    @schema
    class Files(dj.Manual):
        definition = f"""
        file_id : int32
        ---
        data : {backend().type_map("minio")["file"]}
        """

    tensor = torch.arange(6.0).reshape(2, 3)
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    torch.save(tensor, tmp_path / "saved.pth.tar")
    Files.insert1({"file_id": 1, "data": tensor})
    Files.insert1({"file_id": 2, "data": buffer.getvalue()})
    Files.insert1({"file_id": 3, "data": str(tmp_path / "saved.pth.tar")})
    folder = tmp_path / "downloads"
    with dj.config.override(download_path=str(folder)):
        paths = [(Files & {"file_id": i}).fetch1("data") for i in (1, 2, 3)]
    for path in paths:
        assert Path(path).parent == folder and torch.equal(torch.load(path), tensor)
    with pytest.raises(FileNotFoundError):
        Files.insert1({"file_id": 4, "data": str(tmp_path / "missing.pth.tar")})
    assert len(Files()) == 3
    assert len(stored_files(store / "_schema" / schema.database)) == 3
