"""mei.main's tables: adding methods, links, import and activation (both DataJoint generations)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections import OrderedDict
from pathlib import Path

import datajoint as dj
import pytest
from mei_testkit import METHOD_CONFIG, unique_name

from mei import mixins
from mei.dj import run
from mei.dj.backend import backend
from mei.errors import ComponentError, ConfigError, NonFiniteError
from mei.integration import make_hash
from mei.main import MEITemplate, TrainedEnsembleModelTemplate

GRADIENT_ASCENT = "mei.methods.gradient_ascent"


def _broken(change):
    config = copy.deepcopy(METHOD_CONFIG)
    change(config)
    return config


@pytest.mark.parametrize(
    ("method_fn", "config", "match"),
    [
        ("mei.methods.no_such_method", METHOD_CONFIG, "cannot be imported"),
        ("not_a_path", METHOD_CONFIG, "cannot be imported"),
        ("mei.methods." + "x" * 60, METHOD_CONFIG, "at most 64 characters"),
        (GRADIENT_ASCENT, [1, 2], "must be a mapping"),
        (GRADIENT_ASCENT, _broken(lambda c: c.update(bogus=1)), "unknown key"),
        (GRADIENT_ASCENT, _broken(lambda c: c.pop("stopper")), "missing required key"),
        (
            GRADIENT_ASCENT,
            _broken(lambda c: c["stopper"].update(path="mei.stoppers.Nope")),
            r"config\['stopper'\] \(mei.stoppers.Nope\)",
        ),
        (
            GRADIENT_ASCENT,
            _broken(lambda c: c["optimizer"]["kwargs"].update(lrr=1)),
            r"config\['optimizer'\].*'lrr'",
        ),
    ],
)
def test_add_method_rejects_broken_input(schema, mei_main, method_fn, config, match):
    with pytest.raises(ConfigError, match=match):
        mei_main.MEIMethod().add_method(method_fn, config)
    assert len(mei_main.MEIMethod()) == 0


def test_add_method_hash_and_duplicates(schema, mei_main):
    methods = mei_main.MEIMethod()
    config = copy.deepcopy(METHOD_CONFIG)
    key = methods.add_method(GRADIENT_ASCENT, config, comment="first")
    assert config == METHOD_CONFIG  # the caller's config is not changed
    assert key == {"method_fn": GRADIENT_ASCENT, "method_hash": make_hash(METHOD_CONFIG)}
    row = (methods & key).fetch1()
    assert row["method_config"] == METHOD_CONFIG
    assert row["method_comment"] == "first" and row["method_ts"] is not None

    # the same method again, keys in another order: a no-op returning the same key
    reordered = OrderedDict(reversed(list(METHOD_CONFIG.items())))
    assert methods.add_method(GRADIENT_ASCENT, dict(reordered), comment="second") == key
    assert len(methods) == 1 and (methods & key).fetch1("method_comment") == "first"
    # an OrderedDict keeps its order in the hash: another method
    assert methods.add_method(GRADIENT_ASCENT, reordered)["method_hash"] != key["method_hash"]

    # a config with the same hash but other content is refused (str(1) == "1"); the
    # method has no validate_config, so both configs pass validation
    custom = "mei_testkit.overflowing_method"
    methods.add_method(custom, {"a": 1})
    assert make_hash({"a": "1"}) == make_hash({"a": 1})
    with pytest.raises(ConfigError, match="hash of the different stored config"):
        methods.add_method(custom, {"a": "1"})
    assert len(methods) == 3


def test_links_must_be_set(schema):
    class Dataset(dj.Manual):
        definition = f"""
        dataset_id : {backend().type_map("minio")["int"]}
        """

    schema(Dataset)

    class Ensemble(TrainedEnsembleModelTemplate):
        dataset_table = Dataset

    with pytest.raises(dj.DataJointError) as error:
        schema(Ensemble)
    assert "Ensemble.trained_model_table is not set" in str(error.value.__context__)

    class MEI(MEITemplate):
        selector_table = Dataset

    with pytest.raises(dj.DataJointError) as error:
        schema(MEI)
    assert "MEI.trained_model_table is not set" in str(error.value.__context__)


@pytest.mark.generation(2)
def test_type_map_and_definitions():
    assert backend().generation == 2
    assert backend().type_map("minio")["file"] == "<mei_file@minio>"
    assert backend().type_map("local")["blob"] == "<blob>"
    with pytest.raises(ValueError, match="store must be a store name"):
        backend().type_map("my store")


def _run(code: str, port: int | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this session's DataJoint settings; ``port``
    replaces the server's port."""
    environment = {
        **os.environ,
        "DJ_USER": dj.config["database.user"],
        "DJ_PASS": os.environ.get("DJ_PASS", ""),
        **env,
    }
    if backend().generation == 2:
        environment.update(
            DJ_BACKEND=dj.config["database.backend"],
            DJ_HOST=dj.config["database.host"],
            DJ_PORT=str(port or dj.config["database.port"]),
            DJ_USE_TLS="false",
        )
        return _python(code, environment, cwd=None)
    # 0.14 reads no TLS setting from the environment, but dj_local_conf.json in the cwd
    host = dj.config["database.host"].rsplit(":", 1)[0]
    environment["DJ_HOST"] = f"{host}:{port}" if port else dj.config["database.host"]
    with tempfile.TemporaryDirectory() as cwd:
        (Path(cwd) / "dj_local_conf.json").write_text(json.dumps({"database.use_tls": False}))
        return _python(code, environment, cwd=cwd)


def _python(code: str, environment: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_importing_connects_to_nothing():
    # Port 1 has no server: any connection attempt at import would fail.
    result = _run(
        """
        import sys
        import mei
        assert "datajoint" not in sys.modules, "import mei imported datajoint"
        import mei.main, mei.mixins, mei.integration, mei.populate, mei.dj.backend, mei.cli
        assert not mei.main.schema.is_activated()
        try:
            mei.main.MEISeed()
        except Exception as e:
            print("first use connects:", type(e).__name__)
        """,
        port=1,
    )
    assert result.returncode == 0, result.stderr
    assert "first use connects" in result.stdout


def test_first_use_activates_the_default_schema(connection):
    name = unique_name("mei_test_default")
    result = _run(
        """
        import mei.main
        mei.main.MEISeed().insert1({"mei_seed": 7})
        print(mei.main.schema.database, len(mei.main.MEISeed()))
        """,
        MEI_SCHEMA_NAME=name,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1].split() == [name, "1"]
    finally:
        backend().drop_schema(dj.Schema(name, create_schema=False))


def test_components_asking_for_the_key_get_it():
    config = {
        "initial": {"path": "a.B", "kwargs": {"key": None, "a": 1}},
        "postprocessing": {"path": "a.C"},
        "stopper": {"path": "a.D", "kwargs": {"key": None}},
    }
    keyed = run.run_config(config, {"neuron_id": 1})
    assert keyed["initial"]["kwargs"] == {"key": {"neuron_id": 1}, "a": 1}
    assert keyed["postprocessing"] == {"path": "a.C"}
    assert keyed["stopper"]["kwargs"] == {"key": None}  # only the original's keyed components
    assert config["initial"]["kwargs"]["key"] is None  # the stored config is not changed


@pytest.mark.parametrize(
    ("method_fn", "error", "match"),
    [
        ("mei_testkit.nan_score_method", NonFiniteError, r"score nan for key \{'neuron_id': 1\}"),
        ("mei_testkit.two_values_method", ComponentError, r"must return \(mei, score, output\)"),
    ],
)
def test_run_method_checks_results(method_fn, error, match):
    with pytest.raises(error, match=match):
        mixins.run_method(method_fn, {}, None, None, {"neuron_id": 1}, 0)


def test_credentials_are_never_printed(connection):
    """Neither errors nor reprs show the password (PostgreSQL here trusts any password; on
    MariaDB the wrong password makes the connection fail, which must not show it either)."""
    password = "pw-" + unique_name("secret")
    name = unique_name("mei_test_secret")
    result = _run(
        """
        import traceback
        import mei.main
        try:
            mei.main.MEIMethod().add_method("mei.methods.no_such_method", {})
        except Exception:
            traceback.print_exc()
        print(repr(mei.main.schema), repr(mei.main.MEIMethod()), mei.main.MEIMethod().connection)
        """,
        DJ_PASS=password,
        MEI_SCHEMA_NAME=name,
    )
    try:
        assert "Traceback" in result.stdout + result.stderr
        assert password not in result.stdout + result.stderr
    finally:
        schema = dj.Schema(name, create_schema=False) if _schema_exists(name) else None
        if schema is not None:
            backend().drop_schema(schema)


def _schema_exists(name: str) -> bool:
    return name in dj.list_schemas()


@pytest.mark.parametrize(
    "name",
    [
        "mei.main.TrainedEnsembleModelTemplate",
        "mei.main.TrainedEnsembleModelTemplate.Member",
        "mei.main.MEITemplate",
        "mei.main.MEIMethod",
        "mei.main.MEISeed",
        "mei.main.activate",
        "mei.main.schema",
        "mei.mixins.TrainedEnsembleModelTemplateMixin",
        "mei.mixins.MEIMethodMixin",
        "mei.mixins.MEISeedMixin",
        "mei.mixins.MEITemplateMixin",
        "mei.integration.make_hash",
        "mei.integration.hash_list_of_dictionaries",
        "mei.integration.ModelLoader",
        "mei.integration.ModelLoader.load",
        "mei.integration.import_module",
        "mei.integration.get_mappings",
        "mei.integration.load_pickled_data",
        "mei.main.CSRFV1ObjectiveTemplate",
        "mei.main.CSRFV1SelectorTemplate",
        "mei.mixins.CSRFV1ObjectiveTemplateMixin",
        "mei.mixins.CSRFV1SelectorTemplateMixin",
        "mei.mixins.CSRFV1ObjectiveTemplateMixin.get_output_selected_model",
        "mei.mixins.MEIMethodMixin.generate_mei",
        "mei.mixins.MEIMethodMixin.generate_ringmei",
        "mei.mixins.MEIMethodMixin.insert_key_in_ops",
        "mei.mixins.MEIMethodMixin.optional_names",
        "mei.mixins.MEIMethodMixin.import_func",
        "mei.mixins.MEITemplateMixin.model_loader_class",
    ],
)
def test_api_surface(name):
    package, module, attributes = name.split(".", 2)
    obj = importlib.import_module(f"{package}.{module}")
    for attribute in attributes.split("."):
        obj = getattr(obj, attribute)  # fails when a public name disappears
