"""The lab's pipeline, built the same way on both DataJoint generations.

On 2.x the lab is the hand-written one of ``lab2.py``; on 0.14 it is made of real NNFabrik
tables (``lab014.py``). :func:`build` declares and fills it and returns a namespace whose
fields let a scenario drive it without knowing the generation:

``Dataset``, ``TrainedModel``, ``TrainedEnsembleModel``, ``Selector``, ``MEI``
    the tables (plus the generation's own: 2.x ``Trainer``, ``ModelSeed``; 0.14 ``nnf``, the
    NNFabrik module with ``Fabrikant``, ``Model``, ``Trainer``, ``Seed``)
``generation``
    ``backend().generation``
``dataset_key``
    the primary key of the one dataset
``keys``
    restrictions by name: ``dataset``, ``trainer`` (the fitting trainer), ``diverging`` (the
    trainer whose models have NaN weights), ``missing_trainer`` (a trainer that does not exist)
``ensemble_restriction``, ``diverging_restriction``
    dataset and trainer: ``create_ensemble(lab.ensemble_restriction)`` makes the ensemble of
    the fitting trainer's models (one per seed)
``model_key(seed)``
    the primary key of the fitting trainer's trained model for ``seed``
``add_dataset(n_units)``
    add another dataset (nothing trained on it); returns its key
``jobs_table``
    0.14: the schema's ``~jobs`` table; 2.x: ``None`` (``MEI().jobs``)

:func:`jobs` and :func:`mei_files` read the job queue and the store the generation's way.
"""

from __future__ import annotations

import collections
import collections.abc
from types import SimpleNamespace

import datajoint as dj
from mei_testkit import N_UNITS

from mei.dj.backend import backend


def alias_collections() -> None:
    """NNFabrik 0.2.1 uses ``collections.Iterable`` & co., gone since Python 3.10."""
    for name in ("Iterable", "Mapping", "Sequence"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def declare(schema: dj.Schema) -> SimpleNamespace:
    """Declare the lab's tables in ``schema`` (nothing inserted); return them by name."""
    if backend().generation == 2:
        import lab2

        return lab2.declare(schema)
    alias_collections()
    import lab014  # imports nnfabrik, which connects: only once DataJoint is configured
    import nnfabrik.main

    return lab014.declare(nnfabrik.main.my_nnfabrik(schema, use_common_fabrikant=False))


def build(
    schema: dj.Schema,
    *,
    n_units: int = N_UNITS,
    seeds: tuple[int, ...] = (1, 2),
    diverging: bool = True,
    dataset: dict | None = None,
) -> SimpleNamespace:
    """Declare the lab in ``schema`` and fill it: one dataset of ``n_units`` linear neurons, a
    model, a fitting trainer (and, with ``diverging``, one whose models have NaN weights), the
    ``seeds``; then train every model. ``dataset``: further arguments of the dataset function
    (:func:`mei_testkit.linear_dataset`), e.g. ``{"cell_types": True, "side": 15}``."""
    lab = declare(schema)
    lab.generation = backend().generation
    config = {"n_units": n_units, **(dataset or {})}
    if lab.generation == 2:
        _fill2(lab, config, seeds, diverging)
    else:
        _fill014(lab, config, seeds, diverging)
    lab.dataset_key = dict(lab.keys["dataset"])
    lab.ensemble_restriction = {**lab.keys["dataset"], **lab.keys["trainer"]}
    lab.diverging_restriction = {**lab.keys["dataset"], **lab.keys.get("diverging", {})}
    lab.TrainedModel().populate()
    return lab


def _fill2(lab, config, seeds, diverging):
    lab.Dataset.insert1({"dataset_id": 1, "dataset_config": config})
    lab.Trainer.insert1({"trainer_id": 1, "trainer_config": {}})
    if diverging:
        lab.Trainer.insert1({"trainer_id": 2, "trainer_config": {"diverge": True}})
    lab.ModelSeed.insert({"model_seed": s} for s in seeds)
    lab.keys = {
        "dataset": {"dataset_id": 1},
        "trainer": {"trainer_id": 1},
        "missing_trainer": {"trainer_id": 99},
    }
    if diverging:
        lab.keys["diverging"] = {"trainer_id": 2}
    lab.model_key = lambda seed: {"dataset_id": 1, "trainer_id": 1, "model_seed": seed}

    def add_dataset(n_units):
        dataset_id = len(lab.Dataset()) + 1
        lab.Dataset.insert1({"dataset_id": dataset_id, "dataset_config": {"n_units": n_units}})
        return {"dataset_id": dataset_id}

    lab.add_dataset = add_dataset
    lab.jobs_table = None


def _fill014(lab, config, seeds, diverging):
    from mei.integration import make_hash

    nnf = lab.nnf
    nnf.Fabrikant().add_entry("tester", "tester@example.org", "mei tests")
    dataset = nnf.Dataset().add_entry(
        "mei_testkit.linear_dataset", config, dataset_fabrikant="tester"
    )
    model = nnf.Model().add_entry("mei_testkit.linear_model", {}, model_fabrikant="tester")
    trainer = nnf.Trainer().add_entry("mei_testkit.lstsq_trainer", {}, trainer_fabrikant="tester")
    assert trainer["trainer_hash"] == make_hash({})
    lab.keys = {
        "dataset": dataset,
        "trainer": trainer,
        "missing_trainer": {"trainer_hash": "0" * 32},
    }
    if diverging:
        lab.keys["diverging"] = nnf.Trainer().add_entry(
            "mei_testkit.lstsq_trainer", {"diverge": True}, trainer_fabrikant="tester"
        )
    nnf.Seed().insert({"seed": s} for s in seeds)
    lab.model_key = lambda seed: {**dataset, **model, **trainer, "seed": seed}

    def add_dataset(n_units):
        return nnf.Dataset().add_entry(
            "mei_testkit.linear_dataset", {"n_units": n_units}, dataset_fabrikant="tester"
        )

    lab.add_dataset = add_dataset
    lab.jobs_table = nnf.schema.jobs


def jobs(lab: SimpleNamespace, status: str) -> list[dict]:
    """The MEI table's jobs with ``status`` (``reserved``, ``error``), read from DataJoint's own
    job table (2.x: the table's ``~~`` jobs table; 0.14: the schema's ``~jobs``), each with
    ``key`` (the MEI key as a dict), ``error_message`` and ``error_stack``."""
    table = lab.MEI()
    if lab.generation == 2:
        query = {"reserved": table.jobs.reserved, "error": table.jobs.errors}[status]
        rows = query.to_dicts()
        return [dict(r, key={k: r[k] for k in table.primary_key}) for r in rows]
    query = lab.jobs_table & {"table_name": table.table_name, "status": status}
    return [dict(r, key=dict(r["key"])) for r in query.fetch(as_dict=True)]


def mei_files(store, lab: SimpleNamespace) -> list:
    """The stored MEI and output files of the lab's schema (0.14 keeps NNFabrik's model states
    in the same store)."""
    from mei_testkit import stored_files

    database = lab.MEI.database
    if lab.generation == 2:
        return stored_files(store / "_schema" / database)
    return [p for p in stored_files(store / database) if ".mei_" in p.name or ".output_" in p.name]
