"""What mei's tables do: the logic behind the templates and tables of :mod:`mei.main`.

Each mixin holds one table's definition and methods; :mod:`mei.dj.templates` combines it with
the DataJoint tier (``dj.Manual``, ``dj.Lookup``, ``dj.Computed``). Definitions are written once
and get their few generation-specific type names from the :class:`~mei.dj.backend.Backend`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from ..config import check_seed
from ..errors import ConfigError, shorten
from ..modules import ConstrainedOutputModel, EnsembleModel
from . import populate as _populate
from . import run
from .backend import backend, exclusive, populate_session
from .explain import empty_inputs, why_nothing_to_compute
from .hashing import find_unhashable, hash_list_of_dictionaries, make_hash
from .helpers import get_mappings, import_module
from .model_cache import ModelLoader
from .run import KEYED_COMPONENTS, METHOD_FN_MAX_LENGTH, Key, validate_method
from .store import check_store

logger = logging.getLogger(__name__)

__all__ = [
    "CSRFV1ObjectiveTemplateMixin",
    "ExcitingVariantsTemplateMixin",
    "KEYED_COMPONENTS",
    "METHOD_FN_MAX_LENGTH",
    "MDSTemplateMixin",
    "MEIMethodMixin",
    "MEISeedMixin",
    "MEITemplateMixin",
    "MEIValidationTemplateMixin",
    "NeuronSetTemplateMixin",
    "RequiredLink",
    "TrainedEnsembleModelTemplateMixin",
]


def _one_dataset(dataset_table: Any, key: Mapping[str, Any]) -> Key:
    """The key of the one row of ``dataset_table`` that ``key`` restricts it to."""
    datasets = backend().keys(dataset_table() & key)
    if len(datasets) != 1:
        raise ValueError(
            f"key {dict(key)!r} must restrict {dataset_table.__name__} to exactly one "
            f"entry, it matches {len(datasets)}"
        )
    return datasets[0]


def _insert_set(table: Any, dataset_key: Key, name: str, members: list[Key], comment: str) -> Key:
    """Insert the set of ``members`` into ``table`` (master ``{name}_hash``,
    ``{name}_comment``; part ``Member``) in one transaction, keyed by the members' hash;
    an existing set is left as it is. Returns the set's key."""
    primary_key = dict(dataset_key, **{f"{name}_hash": hash_list_of_dictionaries(members)})
    if table & primary_key:
        return primary_key
    with table.connection.transaction:
        table.insert1(dict(primary_key, **{f"{name}_comment": comment}))
        table.Member().insert([{**primary_key, **member} for member in members])
    return primary_key


def _say_why_nothing(table: Any) -> None:
    """Warn when a linked table is empty, so ``populate()`` has nothing to compute and would
    otherwise return silently."""
    if empty_inputs(table):
        logger.warning(
            "%s.populate: nothing to compute: %s",
            type(table).__name__,
            why_nothing_to_compute(table),
        )


if TYPE_CHECKING:

    class _Table:
        """What a DataJoint table gives the mixins (for the type checker only)."""

        connection: Any
        database: str
        primary_key: list[str]
        heading: Any
        method_table: Any
        seed_table: Any

        def __and__(self, restriction: Any) -> Any: ...
        def __contains__(self, key: Any) -> bool: ...
        def insert1(self, row: Mapping[str, Any], **kwargs: Any) -> None: ...
        def insert(self, rows: Any, **kwargs: Any) -> None: ...

else:
    _Table = object


class RequiredLink:
    """A link to another table that the user's subclass must set, e.g. ``dataset_table``.

    Reading it before it is set raises an ``AttributeError`` that says what to assign. With
    ``alias``, a class attribute of that (older) name stands in for it: ``objective_table``,
    the name sinzlab/mei used for ``selector_table`` from 2020 to 2024.
    """

    def __init__(self, example: str, *, alias: str | None = None):
        self.example = example
        self.alias = alias
        self.name = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type) -> Any:
        if self.alias is not None:  # the link's older name, set by a lab's older code
            value = getattr(owner, self.alias, None)
            if value is not None:
                return value
        raise AttributeError(
            f"{owner.__name__}.{self.name} is not set: assign the table class in your subclass, "
            f"e.g. `{self.name} = {self.example}`, before decorating it with your schema"
        )

    def __repr__(self) -> str:
        alias = f", alias={self.alias!r}" if self.alias else ""
        return f"{type(self).__name__}(example={self.example!r}{alias})"


def _primary_key(table: Any) -> list[str]:
    return list(table().primary_key if isinstance(table, type) else table.primary_key)


class TrainedEnsembleModelTemplateMixin(_Table):
    """An ensemble of trained models of one dataset, identified by ``ensemble_hash``.

    Links: ``dataset_table`` (the dataset every member was trained on) and
    ``trained_model_table`` (a table with ``load_model(key, include_dataloader,
    include_state_dict)``, such as NNFabrik's ``TrainedModelBase`` subclasses).
    """

    definition = """
    # contains ensemble ids
    -> self.dataset_table
    ensemble_hash                   : char(32)      # the hash of the ensemble
    ---
    ensemble_comment        = ''    : varchar(256)  # a short comment describing the ensemble
    """

    class Member(_Table):
        """One trained model of an ensemble."""

        definition = """
        # contains assignments of trained models to a specific ensemble id
        -> master
        -> master.trained_model_table
        """

    dataset_table: Any = RequiredLink("Dataset")
    trained_model_table: Any = RequiredLink("TrainedModel")
    ensemble_model_class = EnsembleModel

    def create_ensemble(self, key: Mapping[str, Any], comment: str = "") -> Key:
        """Make an ensemble of every trained model that matches ``key``; return its key.

        ``key`` must restrict ``dataset_table`` to exactly one entry; the members are the rows
        of ``trained_model_table`` of that dataset that also match ``key``. ``ensemble_hash``
        is :func:`mei.dj.hashing.hash_list_of_dictionaries` of the members' primary keys, so
        the same members always give the same ensemble. Creating an existing ensemble again
        returns its key and changes nothing.
        """
        dataset_key = _one_dataset(self.dataset_table, key)
        members = backend().keys(self.trained_model_table() & dataset_key & key)
        if not members:
            raise ValueError(
                f"no rows of {self.trained_model_table.__name__} match {dict(key)!r} for "
                f"dataset {dataset_key!r}: an ensemble needs at least one trained model"
            )
        return _insert_set(self, dataset_key, "ensemble", members, comment)

    def member_keys(self, key: Mapping[str, Any] | None = None) -> list[Key]:
        """The trained model keys of one ensemble, in a fixed order (sorted by their hash)."""
        ensembles = backend().keys(self & key if key is not None else self)
        if len(ensembles) != 1:
            raise ValueError(
                f"key {key!r} must select exactly one ensemble of {type(self).__name__}, "
                f"it selects {len(ensembles)}"
            )
        names = _primary_key(self.trained_model_table)
        members = [{n: m[n] for n in names} for m in backend().keys(self.Member() & ensembles[0])]
        return sorted(members, key=make_hash)

    def load_model(
        self,
        key: Mapping[str, Any] | None = None,
        include_dataloader: bool = True,
        include_state_dict: bool = True,
    ) -> Any:
        """``(dataloaders, EnsembleModel)`` of one ensemble (the model alone without loaders).

        Each member comes from ``trained_model_table().load_model(key=member_key,
        include_dataloader=..., include_state_dict=...)``; the dataloaders are the first
        member's. ``key=None`` uses the ensemble this table is restricted to.
        """
        table = self.trained_model_table()
        loaded = [
            table.load_model(
                key=member,
                include_dataloader=include_dataloader,
                include_state_dict=include_state_dict,
            )
            for member in self.member_keys(key)
        ]
        if not include_dataloader:
            return self.ensemble_model_class(*loaded)
        dataloaders = loaded[0][0]
        return dataloaders, self.ensemble_model_class(*(model for _, model in loaded))


class CSRFV1ObjectiveTemplateMixin(_Table):
    """Maps the neurons of ``csrf_v1`` datasets to model outputs (a selector table).

    Filled by ``populate()`` from the dataset's pickled datafiles
    (:func:`mei.dj.helpers.get_mappings`): one row per neuron with its position in the output
    of its session's readout. Links: ``dataset_table`` (an NNFabrik-style ``Dataset`` with
    ``dataset_fn`` and ``dataset_config``); only datasets whose ``dataset_fn`` equals
    :attr:`dataset_fn` are read.
    """

    definition_template = """
    # neuron ids of csrf_v1 datasets and their positions in the model's output
    -> self.dataset_table
    neuron_id       : {uint16}  # neuron identifier
    ---
    neuron_position : {uint16}  # index of the neuron in its session's model output
    session_id      : varchar(13)  # session (the model's data_key)
    """

    dataset_table: Any = RequiredLink("Dataset")
    dataset_fn = "csrf_v1"
    constrained_output_model: Any = ConstrainedOutputModel

    @property
    def definition(self) -> str:
        return self.definition_template.format(**backend().types)

    @property
    def _key_source(self) -> Any:
        """The datasets made by :attr:`dataset_fn`, under DataJoint's own hook name, as in the
        original: a lab's subclass may narrow it with ``super()._key_source & ...``."""
        return self.dataset_table() & {"dataset_fn": self.dataset_fn}

    @property
    def key_source(self) -> Any:
        """The datasets made by :attr:`dataset_fn` (:attr:`_key_source`)."""
        return self._key_source

    def make(self, key: Key, get_mappings: Any = get_mappings) -> None:
        """Insert one row per neuron of the dataset ``key`` (read by ``get_mappings``)."""
        dataset_config = (self.dataset_table() & key).fetch1("dataset_config")
        self.insert(get_mappings(dataset_config, key))

    def get_output_selected_model(self, model: Any, key: Key) -> Any:
        """``model``'s output for the neuron of ``key``: its position in the output for its
        session, the session passed to the model as ``data_key``."""
        position, session_id = (self & key).fetch1("neuron_position", "session_id")
        return self.constrained_output_model(
            model, int(position), forward_kwargs={"data_key": session_id}
        )


class MEIMethodMixin(_Table):
    """MEI methods: a method function (dotted path) and its config, keyed by the config hash."""

    definition_template = """
    # contains methods for generating MEIs and their configurations.
    method_fn                           : varchar(64)   # name of the method function
    method_hash                         : varchar(32)   # hash of the method config
    ---
    method_config                       : {blob}      # method configuration object
    method_ts       = CURRENT_TIMESTAMP : {timestamp}     # UTZ timestamp at time of insertion
    method_comment                      : varchar(256)  # a short comment describing the method
    """

    @property
    def definition(self) -> str:
        return self.definition_template.format(**backend().types)

    def add_method(
        self, method_fn: str, method_config: Mapping[str, Any], comment: str = ""
    ) -> Key:
        """Validate and insert a method; return its key ``{method_fn, method_hash}``.

        ``method_hash`` is NNFabrik's ``make_hash(method_config)``, so rows made by the original
        library match. The config is checked first (the path imports through
        :attr:`import_func`, the function's ``validate_config`` accepts it; whether its
        ``device`` exists on this machine is left to the workers): a broken config never
        reaches the table. Adding the
        same function with the same config again returns the existing key and changes nothing
        (the comment included); a different config with the same hash raises
        :class:`mei.errors.ConfigError`, and so does a config ``make_hash`` cannot hash (one
        holding a torch tensor: store a nested list or a numpy array instead).
        """
        validate_method(method_fn, method_config, import_func=self.import_func)
        key = {"method_fn": method_fn, "method_hash": _method_hash(method_fn, method_config)}
        existing = self & key
        if existing:
            stored = existing.fetch1("method_config")
            try:
                same = bool(stored == method_config)
            except (TypeError, ValueError):  # e.g. array values: the equal hash decides
                same = True
            if not same:
                raise ConfigError(
                    f"method_config hashes to {key['method_hash']}, the hash of the different "
                    f"stored config {shorten(stored, 500)}",
                    path=method_fn,
                )
            return key
        self.insert1(dict(key, method_config=method_config, method_comment=comment))
        return key

    import_func = staticmethod(run.builtin(import_module))
    """Imports ``method_fn`` from its dotted path; a lab may replace it (as in the original)."""
    optional_names: tuple[str, ...] = KEYED_COMPONENTS
    """The config components that :meth:`insert_key_in_ops` gives the MEI's key."""

    @run.builtin
    def insert_key_in_ops(self, method_config: MutableMapping[str, Any], key: Key) -> None:
        """Give ``key`` to the components of ``method_config`` that ask for it, in place.

        Every component named in :attr:`optional_names` whose ``kwargs`` hold ``"key"`` gets
        ``kwargs["key"] = key``. Runs call it on a copy of the stored config, never on the
        stored one.
        """
        run.insert_key(method_config, key, self.optional_names)

    def _run(
        self, dataloaders: Any, model: Any, key: Key, seed: int, *extra: Any
    ) -> dict[str, Any]:
        method_fn, method_config = (self & key).fetch1("method_fn", "method_config")
        mei, score, output = run.run_method(
            method_fn,
            method_config,
            dataloaders,
            model,
            key,
            seed,
            *extra,
            import_func=self.import_func,
            insert_key_in_ops=self.insert_key_in_ops,
        )
        return dict(key, mei=mei, score=score, output=output)

    @run.builtin
    def generate_mei(self, dataloaders: Any, model: Any, key: Key, seed: int) -> dict[str, Any]:
        """Run the method of ``key`` on ``model``; return ``dict(key, mei=, score=, output=)``.

        Calls ``method_fn(dataloaders, model, config, seed)`` with ``method_fn`` imported by
        :attr:`import_func` and ``config`` a copy of the stored config that
        :meth:`insert_key_in_ops` gave the key (and the MEI table's ``device`` override, if
        set). The MEI table calls this for every key it computes alone
        (:func:`mei.dj.run.compute`). A lab may override it, or :attr:`import_func` or
        :meth:`insert_key_in_ops`; keys then always run one at a time through it.
        """
        return self._run(dataloaders, model, key, seed)

    def generate_ringmei(
        self, dataloaders: Any, model: Any, key: Key, seed: int, ring_mask: Any
    ) -> dict[str, Any]:
        """:meth:`generate_mei` for a ring (or surround) MEI: the method of ``key`` is called
        as ``method_fn(dataloaders, model, config, seed, ring_mask)``."""
        return self._run(dataloaders, model, key, seed, ring_mask)


def _method_hash(method_fn: str, method_config: Mapping[str, Any]) -> str:
    """``make_hash(method_config)``, or a :class:`ConfigError` naming what it cannot hash."""
    try:
        return make_hash(method_config)
    except TypeError as e:
        found = find_unhashable(method_config, "method_config")
        where, value = found if found is not None else ("method_config", method_config)
        kind = type(value).__name__
        if isinstance(value, Tensor):
            kind = f"a tensor of shape {tuple(value.shape)}"
        raise ConfigError(
            f"{where} ({kind}) cannot be hashed into method_hash ({e}): NNFabrik's make_hash "
            "iterates it down to 0-d elements, which it cannot hash; give a nested list or a "
            "numpy array instead, or save the tensor with torch.save and use "
            "mei.initial.FromFile",
            path=method_fn,
        ) from None


class MEISeedMixin(_Table):
    """Seeds that make MEI generation reproducible.

    Seeds are integers in the range of the ``int`` column; :meth:`insert` (and so
    ``insert1``) refuses anything else before writing anything.
    """

    definition_template = """
    # contains seeds used to make the MEI generation process reproducible
    mei_seed    : {int}   # MEI seed
    """

    @property
    def definition(self) -> str:
        return self.definition_template.format(**backend().types)

    def insert(self, rows: Any, **kwargs: Any) -> None:
        """DataJoint's ``insert``, after checking every row's ``mei_seed``.

        A seed that is not an integer (``1.5``, ``"3"``, ``True``) or lies outside the column's
        range raises :class:`mei.errors.InputError` naming it, and nothing is inserted (a
        database would round or reject it). Rows given as dicts, sequences, numpy records or a
        pandas DataFrame are checked; inserts from a query or a CSV file are left to DataJoint.
        ``insert1`` goes through this method.
        """
        rows = _check_seed_rows(rows, list(self.heading.names))
        super().insert(rows, **kwargs)


def _check_seed_rows(rows: Any, names: list[str]) -> Any:
    """``rows`` (a one-shot iterator as a list) after checking each row's ``mei_seed``."""
    module = type(rows).__module__
    if isinstance(rows, (str, bytes, Path, type)) or hasattr(rows, "heading"):
        return rows  # a CSV file or a query: DataJoint reads it
    if type(rows).__name__ == "DataFrame" and module.startswith("pandas"):
        frame = rows.reset_index() if "mei_seed" in (rows.index.names or []) else rows
        values = frame["mei_seed"].tolist() if "mei_seed" in frame.columns else []
        _check_seeds(values)
        return rows
    if module.startswith(("polars", "pyarrow")) or not isinstance(rows, Iterable):
        return rows
    if isinstance(rows, Iterator):
        rows = list(rows)
    _check_seeds(_seed_of(row, names) for row in rows)
    return rows


def _seed_of(row: Any, names: list[str]) -> Any:
    """The ``mei_seed`` of one row (a dict, a numpy record, a sequence), or ``_NO_SEED``."""
    if isinstance(row, Mapping):
        return row.get("mei_seed", _NO_SEED)
    fields = getattr(getattr(row, "dtype", None), "names", None)
    if fields is not None:
        return row["mei_seed"] if "mei_seed" in fields else _NO_SEED
    if isinstance(row, (tuple, list)) and "mei_seed" in names:
        index = names.index("mei_seed")
        return row[index] if index < len(row) else _NO_SEED
    return _NO_SEED


_NO_SEED = object()


def _check_seeds(values: Iterable[Any]) -> None:
    for i, value in enumerate(values):
        if value is not _NO_SEED:
            check_seed(value, "mei_seed" if i == 0 else f"mei_seed of row {i}")


class _ModelTableMixin(_Table):
    """What the computed tables that run methods on trained models share: the link to the
    trained model table, the model cache, the store of their files and the device override."""

    definition_template: str
    trained_model_table: Any = RequiredLink("TrainedEnsembleModel")
    storage = "minio"
    cache_size_limit = 10
    model_loader_class: Any = ModelLoader
    """Made as ``model_loader_class(trained_model_table, cache_size_limit=...)``."""
    device: str | None = None
    """Overrides the method configs' ``device`` when set (one worker per GPU: ``"cuda:1"``)."""
    capture: bool = False
    """Captures each run's steps as a CUDA graph where it can (:mod:`mei.capture`): the same
    numbers, less host time per step on a GPU; no key or stored config changes."""

    def __init__(self, *args: Any, cache_size_limit: int | None = None, **kwargs: Any):
        """``Table(cache_size_limit=n)`` keeps at most ``n`` models in this table object's
        cache (default: the class attribute ``cache_size_limit``, 10; ``0``: no cache)."""
        super().__init__(*args, **kwargs)
        if cache_size_limit is not None:
            if isinstance(cache_size_limit, bool) or int(cache_size_limit) < 0:
                raise ValueError(f"cache_size_limit must be >= 0, got {cache_size_limit!r}")
            self.cache_size_limit = int(cache_size_limit)
        if getattr(self, "trained_model_table", None) is not None:
            self.model_loader  # made with the table object, as in the original  # noqa: B018

    @property
    def definition(self) -> str:
        return self.definition_template.format(**backend().type_map(self.storage))

    @property
    def model_loader(self) -> Any:
        """The model cache of this table object, made with it (on first use where
        ``trained_model_table`` is not set yet): a :class:`ModelLoader` of
        ``trained_model_table``, unless ``model_loader_class`` says otherwise."""
        loader = self.__dict__.get("_model_loader")
        if loader is None:
            loader = self.model_loader_class(
                self.trained_model_table, cache_size_limit=self.cache_size_limit
            )
            self.__dict__["_model_loader"] = loader
        return loader

    @model_loader.setter
    def model_loader(self, loader: Any) -> None:
        self.__dict__["_model_loader"] = loader

    def load_output(self, key: Mapping[str, Any] | None = None) -> Any:
        """The stored ``output`` of one row, e.g. ``{objective: {"times": [], "values": []}}``."""
        return backend().load_file(self & key if key is not None else self, "output")


def _method_fns_condition(attribute: str, method_fns: Sequence[str], *, keep: bool) -> str:
    """A restriction (SQL text, so that it binds to no connection: a table may be bound to
    another connection than the method table's class) to the rows whose ``attribute`` is one
    of ``method_fns`` (``keep``) or none of them."""
    for fn in method_fns:
        if not isinstance(fn, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", fn):
            raise ValueError(f"method_fns must be dotted paths, got {fn!r}")
    if not method_fns:
        return "1 = 0" if keep else "1 = 1"
    listed = ", ".join(f"'{fn}'" for fn in method_fns)
    return f"{attribute} {'IN' if keep else 'NOT IN'} ({listed})"


BATCHED_POPULATE_OPTIONS = (
    "reserve_jobs",
    "suppress_errors",
    "max_calls",
    "display_progress",
    "order",
)
"""What ``populate(batch_size=...)`` takes besides restrictions (:func:`mei.dj.populate.populate`)."""


def _plain_or_batched(
    table: Any,
    plain: Callable[..., Any],
    restrictions: tuple[Any, ...],
    batch_size: int | None,
    kwargs: dict[str, Any],
    *,
    store: bool,
) -> Any:
    """DataJoint's ``populate`` (``plain``) without ``batch_size``, after the device check
    (and, with ``store``, the store check); mei's batched populate with it, which checks both
    itself."""
    if batch_size is None:
        with populate_session(table.connection, f"{type(table).__name__}.populate"):
            _populate.check_devices(table, *restrictions)
            if store:
                check_store(table)
            return plain(*restrictions, **kwargs)
    unknown = sorted(set(kwargs) - set(BATCHED_POPULATE_OPTIONS))
    if unknown:
        raise TypeError(f"populate(batch_size=...) does not take {unknown}")
    return _populate.populate(table, *restrictions, batch_size=batch_size, **kwargs)


class MEITemplateMixin(_ModelTableMixin):
    """MEIs: one per method x trained (ensemble) model x selected unit x seed.

    Links: ``trained_model_table`` (has ``load_model(key)``), ``selector_table`` (has
    ``get_output_selected_model(model, key)``), ``method_table`` and ``seed_table``.
    ``mei`` and ``output`` are files written with ``torch.save`` into the store named by
    ``storage`` (``attach@store`` on DataJoint 0.14, ``<mei_file@store>`` on 2.x: either way
    ``fetch1("mei")`` gives a local path for ``torch.load``; :meth:`load_mei` gives the
    tensor). Models are cached across keys, at most ``cache_size_limit`` of them (a class
    attribute, or ``MEI(cache_size_limit=n)``); ``device`` redirects every method to a device.
    """

    definition_template = """
    # contains maximally exciting images (MEIs)
    -> self.method_table
    -> self.trained_model_table
    -> self.selector_table
    -> self.seed_table
    ---
    mei                 : {file}  # the MEI as a tensor
    score               : {float}         # some score depending on the used method function
    output              : {file}  # object returned by the method function
    """

    trained_model_table: Any = RequiredLink("TrainedEnsembleModel")
    selector_table: Any = RequiredLink("Selector", alias="objective_table")
    other_method_fns: tuple[str, ...] = ("mei.clustering.mds", "mei.variants.exciting_variants")
    """Method functions of the other tables (MDS, exciting variants) that this table leaves
    alone when they share its method table: one MEI per unit is not what they compute."""

    @property
    def key_source(self) -> Any:
        """DataJoint's key source (the product of the linked tables) without the method rows
        of :attr:`other_method_fns`."""
        source = super().key_source  # type: ignore[misc]
        if not self.other_method_fns:
            return source
        return source & _method_fns_condition("method_fn", self.other_method_fns, keep=False)

    @run.builtin
    def make_fetch(self, key: Key) -> tuple[str, Any, int]:
        """The method and the seed of ``key`` (cheap; fetched again before inserting)."""
        method_fn, method_config = (self.method_table() & key).fetch1("method_fn", "method_config")
        seed = (self.seed_table() & key).fetch1("mei_seed")
        return method_fn, method_config, check_seed(seed, "mei_seed")

    def make_compute(
        self, key: Key, method_fn: str, method_config: Any, seed: int
    ) -> tuple[Tensor, float, Any]:
        """Load (or reuse) the model, select the unit and run the method: no transaction.

        See :func:`mei.dj.run.compute_key`.
        """
        return run.compute_key(self, key, (method_fn, method_config, seed))

    def populate(self, *restrictions: Any, batch_size: int | None = None, **kwargs: Any) -> Any:
        """DataJoint's ``populate``; with ``batch_size``, batched (see :func:`mei.dj.populate.populate`).

        ``MEI().populate(batch_size=64, reserve_jobs=True)`` optimizes up to 64 neurons that share
        method, model and seed in one engine run and inserts one row per key. With
        ``batch_size`` the accepted keyword arguments are ``reserve_jobs``,
        ``suppress_errors``, ``max_calls``, ``display_progress`` and ``order``.

        Either way, keys whose method asks for a device this machine lacks (and no ``device``
        override redirects them) are refused before anything is reserved or computed:
        :class:`mei.errors.DeviceUnavailableError` (:func:`mei.dj.populate.check_devices`);
        so is a store that does not take files: :class:`mei.errors.StoreUnavailableError`
        (:func:`mei.dj.store.check_store`).
        """
        what = f"{type(self).__name__}.populate"
        # a second thread on this connection is refused before its first query
        with exclusive(self.connection, what):
            _say_why_nothing(self)
            plain = super().populate  # type: ignore[misc]
            return _plain_or_batched(self, plain, restrictions, batch_size, kwargs, store=True)

    def make_insert(self, key: Key, mei: Tensor, score: float, output: Any) -> None:
        """Store ``mei`` and ``output`` as files and insert the row, or neither."""
        backend().insert_with_files(
            self, dict(key, score=score), {"mei": mei, "output": output}, self.storage
        )

    def make_insert_many(self, items: Sequence[tuple[Key, Tensor, float, Any]]) -> None:
        """:meth:`make_insert` for several keys ``(key, mei, score, output)``: their files and
        rows in one insert statement, or none of them. A table with its own ``make_insert``
        gets it called once per key instead."""
        if type(self).make_insert is not MEITemplateMixin.make_insert:
            for key, *result in items:
                self.make_insert(key, *result)
            return
        backend().insert_many_with_files(
            self,
            [dict(key, score=score) for key, _, score, _ in items],
            [{"mei": mei, "output": output} for _, mei, _, output in items],
            self.storage,
        )

    def load_mei(self, key: Mapping[str, Any] | None = None) -> Tensor:
        """The stored MEI of one row as a tensor (``key=None``: this restricted table's row)."""
        mei: Tensor = backend().load_file(self & key if key is not None else self, "mei")
        return mei


def _sorted_keys(rows: Iterable[Mapping[str, Any]], names: list[str]) -> list[Key]:
    """``rows`` reduced to the attributes ``names``, in the order of their values."""
    return sorted(({n: row[n] for n in names} for row in rows), key=lambda k: [k[n] for n in names])


class NeuronSetTemplateMixin(_Table):
    """Sets of neurons of one dataset, each identified by ``neuron_set_hash``: the neurons a
    table such as :class:`MDSTemplateMixin` treats together (clusters by their most
    discriminative stimuli).

    Links: ``dataset_table`` and ``selector_table`` (the lab's selector: one row per neuron,
    with ``get_output_selected_model(model, key)``). Members are rows of the selector.
    """

    definition = """
    # sets of neurons of one dataset
    -> self.dataset_table
    neuron_set_hash                 : char(32)      # the hash of the set's neurons
    ---
    neuron_set_comment      = ''    : varchar(256)  # a short comment describing the set
    """

    class Member(_Table):
        """One neuron of a set."""

        definition = """
        # the neurons of a set
        -> master
        -> master.selector_table
        """

    dataset_table: Any = RequiredLink("Dataset")
    selector_table: Any = RequiredLink("Selector")

    def create_set(self, key: Mapping[str, Any], comment: str = "", restriction: Any = None) -> Key:
        """Make the set of the neurons of ``selector_table`` that match ``key`` (and
        ``restriction``, any DataJoint restriction, e.g. a query of reliable neurons); return
        its key.

        ``key`` must restrict ``dataset_table`` to exactly one entry. ``neuron_set_hash`` is
        :func:`mei.dj.hashing.hash_list_of_dictionaries` of the members' selector keys, so the
        same neurons always give the same set; creating an existing set again returns its key
        and changes nothing.
        """
        dataset_key = _one_dataset(self.dataset_table, key)
        query = self.selector_table() & dataset_key & key
        if restriction is not None:
            query = query & restriction
        names = _primary_key(self.selector_table)
        members = _sorted_keys(backend().keys(query), names)
        if not members:
            raise ValueError(
                f"no neurons of {self.selector_table.__name__} match {dict(key)!r} for dataset "
                f"{dataset_key!r}: a set needs at least one neuron"
            )
        return _insert_set(self, dataset_key, "neuron_set", members, comment)

    def member_keys(self, key: Mapping[str, Any] | None = None) -> list[Key]:
        """The selector keys of the neurons of one set, in the order of their values."""
        sets = backend().keys(self & key if key is not None else self)
        if len(sets) != 1:
            raise ValueError(
                f"key {key!r} must select exactly one set of {type(self).__name__}, it "
                f"selects {len(sets)}"
            )
        names = _primary_key(self.selector_table)
        return _sorted_keys(backend().keys(self.Member() & sets[0]), names)


class MDSTemplateMixin(_ModelTableMixin):
    """Most discriminative stimuli (MDS): for a set of neurons, the clusters a method finds
    and one stimulus per cluster, all in one row (Burg et al., ICLR 2024).

    One row per method x trained (ensemble) model x set of neurons x seed. Links:
    ``trained_model_table`` (has ``load_model(key)``), ``neuron_set_table`` (a
    :class:`NeuronSetTemplateMixin` table; its ``selector_table`` maps each neuron to a model
    output), ``method_table`` and ``seed_table``. Only method rows whose ``method_fn`` is in
    :attr:`method_fns` are computed. The method gets ``ConstrainedOutputModel(model, units)``,
    the set's neurons in :meth:`NeuronSetTemplateMixin.member_keys` order, and must return
    ``(stimuli (K, C, ...), score, output)`` with ``output["labels"]`` the cluster of each
    neuron (:func:`mei.clustering.mds` does). ``mds`` and ``output`` are files in the store
    ``storage``; the part ``Neuron`` holds each neuron's cluster. Row, parts and files are
    stored together or not at all.
    """

    definition_template = """
    # most discriminative stimuli (MDS): one stimulus per cluster of a set of neurons
    -> self.method_table
    -> self.trained_model_table
    -> self.neuron_set_table
    -> self.seed_table
    ---
    n_clusters          : {int}     # number of clusters, one stimulus each
    score               : {float}   # the method's score (mds: mean objective of the stimuli)
    mds                 : {file}    # the stimuli, (n_clusters, C, ...): stimulus k for cluster k
    output              : {file}    # object returned by the method function (mds: labels, ...)
    """

    class Neuron(_Table):
        """The cluster of each neuron of the set."""

        definition_template = """
        # the cluster of each neuron of the set
        -> master
        -> master.neuron_set_table.Member
        ---
        cluster             : {int}     # its cluster: the index of its stimulus in mds
        """

        @property
        def definition(self) -> str:
            return self.definition_template.format(**backend().types)

    neuron_set_table: Any = RequiredLink("NeuronSet")
    method_fns: tuple[str, ...] | None = ("mei.clustering.mds",)
    """The method functions this table computes (``None``: every method row); add your own
    set method's path to use it."""

    @property
    def key_source(self) -> Any:
        """DataJoint's key source (the product of the linked tables) for the method rows of
        :attr:`method_fns`."""
        source = super().key_source  # type: ignore[misc]
        if self.method_fns is None:
            return source
        return source & _method_fns_condition("method_fn", self.method_fns, keep=True)

    def make_fetch(self, key: Key) -> tuple[str, Any, int, list[Key]]:
        """The method, the seed and the set's neurons of ``key`` (fetched again before
        inserting)."""
        method_fn, method_config = (self.method_table() & key).fetch1("method_fn", "method_config")
        seed = (self.seed_table() & key).fetch1("mei_seed")
        members = self.neuron_set_table().member_keys(key)
        return method_fn, method_config, check_seed(seed, "mei_seed"), members

    def make_compute(
        self, key: Key, method_fn: str, method_config: Any, seed: int, members: list[Key]
    ) -> tuple[Tensor, float, Any, list[Key]]:
        """Load (or reuse) the model, make the model of the set and run the method: no
        transaction. Returns the stimuli, score, output and each neuron's cluster."""
        stimuli, score, output, labels = run.compute_set_key(
            self, key, (method_fn, method_config, seed, members)
        )
        clusters = [dict(m, cluster=label) for m, label in zip(members, labels, strict=True)]
        return stimuli, score, output, clusters

    def make_insert(
        self, key: Key, stimuli: Tensor, score: float, output: Any, clusters: list[Key]
    ) -> None:
        """Store the stimuli and ``output`` as files, insert the row and its ``Neuron``
        rows; a failure leaves none of them."""
        backend().insert_with_parts(
            self,
            dict(key, n_clusters=len(stimuli), score=score),
            {"mds": stimuli, "output": output},
            self.storage,
            [(self.Neuron(), [{**key, **c} for c in clusters])],
        )

    def populate(self, *restrictions: Any, **kwargs: Any) -> Any:
        """DataJoint's ``populate``, after refusing keys whose method asks for a device this
        machine lacks (:func:`mei.dj.populate.check_devices`) and a store that does not take
        files (:func:`mei.dj.store.check_store`)."""
        with populate_session(self.connection, f"{type(self).__name__}.populate"):
            _populate.check_devices(self, *restrictions)
            check_store(self)
            return super().populate(*restrictions, **kwargs)  # type: ignore[misc]

    def load_mds(self, key: Mapping[str, Any] | None = None) -> Tensor:
        """The stimuli of one row, ``(n_clusters, C, ...)`` (``key=None``: this restricted
        table's row); stimulus ``k`` is that of cluster ``k``."""
        stimuli: Tensor = backend().load_file(self & key if key is not None else self, "mds")
        return stimuli

    def load_mei(self, key: Mapping[str, Any] | None = None) -> Tensor:
        """:meth:`load_mds`, under the MEI table's name."""
        return self.load_mds(key)

    def load_clusters(self, key: Mapping[str, Any] | None = None) -> list[list[Key]]:
        """The neurons (selector keys) of each cluster of one row: entry ``k`` for stimulus
        ``k``, each in the order of their values."""
        rows = backend().keys(self & key if key is not None else self)
        if len(rows) != 1:
            raise ValueError(
                f"key {key!r} must select exactly one row of {type(self).__name__}, it "
                f"selects {len(rows)}"
            )
        n_clusters = int((self & rows[0]).fetch1("n_clusters"))
        names = _primary_key(self.neuron_set_table.selector_table)
        neurons = backend().to_dicts(self.Neuron() & rows[0])
        return [
            _sorted_keys((n for n in neurons if int(n["cluster"]) == k), names)
            for k in range(n_clusters)
        ]


class MEIValidationTemplateMixin(_ModelTableMixin):
    """MEIs validated: each MEI scored on a *validating* model (another member of the
    ensemble, another seed, another architecture) and compared with its unit's most exciting
    natural images of the dataset on that model.

    One row per MEI (a row of ``mei_table``) x validating model (a row of
    ``validating_model_table``, any table with ``load_model(key)``: the lab's trained model
    table to score on single models, its ensemble table to score on other ensembles). The two
    share the dataset's attributes (those of the MEI table's selector); the validating model's
    other key attributes that the MEI table also has get the prefix :attr:`prefix`
    (``ensemble_hash`` -> ``validating_ensemble_hash``). The unit is the one the MEI table's
    selector gives the key; the natural images are those of the validating model's loaders of
    :attr:`tier` (the session of the selector's ``data_key``), read on the MEI method's device
    (or the table's ``device`` override); :attr:`top_k` of them are kept per MEI.

    Models are cached (as in the MEI table) and each model's natural-image pass, done for all
    its units at once, is kept on the table object: a populate reads the dataset once per
    model and session. ``populate(batch_size=n)`` scores up to ``n`` MEIs of one validating
    model in one forward pass (:mod:`mei.dj.populate`). Numbers are those of
    :func:`mei.validation.validate_meis`.
    """

    definition_template = """
    # MEIs scored on a validating model, against the unit's most exciting natural images
    -> self.mei_table
    {validating}
    ---
    mei_response            : {float}   # the unit's response to the MEI on the validating model
    best_natural_response   : {float}   # the unit's response to its best natural image there
    fraction                : {float}   # mei_response / best_natural_response
    natural_indices         : {blob}    # dataset indices of its top_k natural images, best first
    natural_responses       : {blob}    # its responses to them
    n_images                : {int}     # natural images read
    """

    mei_table: Any = RequiredLink("MEI")
    validating_model_table: Any = RequiredLink("TrainedModel")
    prefix = "validating_"
    """Prefix of the validating model's key attributes that the MEI table has too."""
    top_k = 5
    """Natural images kept per MEI (stored best first)."""
    tier = "train"
    """The tier of the dataloaders whose images are ranked (``dataloaders[tier][data_key]``)."""
    storage: Any = None  # numbers only: no store

    # --- definition and keys -------------------------------------------------------------
    @classmethod
    def validating_renames(cls) -> dict[str, str]:
        """``{attribute here: attribute of validating_model_table}`` for the renamed ones."""
        validating = _primary_key(cls.validating_model_table)
        mei = set(_primary_key(cls.mei_table))
        shared = set(_primary_key(cls.mei_table.selector_table))
        return {f"{cls.prefix}{a}": a for a in validating if a in mei and a not in shared}

    @property
    def definition(self) -> str:
        renames = self.validating_renames()
        link = "-> self.validating_model_table"
        if renames:
            args = ", ".join(f'{new}="{old}"' for new, old in renames.items())
            link = f"-> self.validating_model_table.proj({args})"
        return self.definition_template.format(validating=link, **backend().types)

    @property
    def method_table(self) -> Any:
        """The MEI table's method table (whose rows say on which device to run)."""
        return self.mei_table.method_table

    def validating_key(self, key: Mapping[str, Any]) -> Key:
        """The key of ``key``'s validating model in ``validating_model_table``."""
        names = {old: new for new, old in self.validating_renames().items()}
        return {a: key[names.get(a, a)] for a in _primary_key(self.validating_model_table)}

    def model_names(self) -> list[str]:
        """This table's names of the validating model's key attributes."""
        renamed = {old: new for new, old in self.validating_renames().items()}
        return [renamed.get(a, a) for a in _primary_key(self.validating_model_table)]

    def batch_group(self, key: Mapping[str, Any]) -> Key:
        """Keys with the same validating model share a batch (:mod:`mei.dj.populate`)."""
        return {n: key[n] for n in self.model_names()}

    def _load_validating(self, key: Key) -> Any:
        return self.validating_model_table().load_model(key=self.validating_key(key))

    @property
    def model_loader(self) -> Any:
        """The model cache: a :class:`ModelLoader` of ``validating_model_table``'s models,
        keyed by this table's names of their attributes."""
        loader = self.__dict__.get("_model_loader")
        if loader is None:
            loader = ModelLoader(
                self._load_validating, self.model_names(), cache_size_limit=self.cache_size_limit
            )
            self.__dict__["_model_loader"] = loader
        return loader

    @model_loader.setter
    def model_loader(self, loader: Any) -> None:
        self.__dict__["_model_loader"] = loader

    # --- the tripartite make ----------------------------------------------------------------
    def make_fetch(self, key: Key) -> tuple[float, Any, int, str]:
        """The MEI's score (the MEI row it validates), its method's device, ``top_k``, ``tier``
        (cheap; fetched again before inserting)."""
        score = (self.mei_table() & key).fetch1("score")
        config = (self.method_table() & key).fetch1("method_config")
        device = config.get("device") if isinstance(config, Mapping) else None
        return float(score), device, int(self.top_k), str(self.tier)

    def make_compute(
        self, key: Key, score: float, device: Any, top_k: int, tier: str
    ) -> tuple[float, Any, Any, int]:
        """Score the MEI of ``key`` on its validating model and rank the natural images: no
        transaction. Returns the MEI's response, the natural images' indices and responses
        (best first) and the number of images read."""
        outcome = self.compute_many([key])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome[1]

    def make_insert(
        self, key: Key, mei_response: float, indices: Any, responses: Any, n_images: int
    ) -> None:
        """Insert the row of ``key``."""
        self.insert1(_validation_row(key, mei_response, indices, responses, n_images))

    def make_insert_many(self, items: Sequence[tuple[Any, ...]]) -> None:
        """:meth:`make_insert` for several keys in one insert statement."""
        if type(self).make_insert is not MEIValidationTemplateMixin.make_insert:
            for key, *result in items:
                self.make_insert(key, *result)
            return
        self.insert([_validation_row(key, *result) for key, *result in items])

    def compute_many(
        self, keys: Sequence[Key], fatal: Any = None
    ) -> list[tuple[Any, tuple[float, Any, Any, int]] | Exception]:
        """The results of ``keys`` (see :meth:`make_compute`), one outcome per key: keys of one
        validating model and session score in one forward pass (:func:`mei.dj.run.validate`);
        a key that fails gets its exception (traceback in ``__mei_traceback__``)."""
        return run.validate(self, keys, fatal=fatal)

    def populate(self, *restrictions: Any, batch_size: int | None = None, **kwargs: Any) -> Any:
        """DataJoint's ``populate``; with ``batch_size``, the MEIs of one validating model
        are scored up to ``batch_size`` at a time in one forward pass
        (:func:`mei.dj.populate.populate`: ``reserve_jobs``, ``suppress_errors``,
        ``max_calls``, ``display_progress`` and ``order`` are accepted). Keys whose method
        asks for a device this machine lacks are refused first."""
        with exclusive(self.connection, f"{type(self).__name__}.populate"):
            plain = super().populate  # type: ignore[misc]
            return _plain_or_batched(self, plain, restrictions, batch_size, kwargs, store=False)

    def load_natural_indices(self, key: Mapping[str, Any] | None = None) -> list[int]:
        """The dataset indices of one row's best natural images, best first."""
        query: Any = self & key if key is not None else self
        indices = query.fetch1("natural_indices")
        return [int(i) for i in indices]


def _validation_row(
    key: Key, mei_response: float, indices: Any, responses: Any, n_images: int
) -> dict[str, Any]:
    best = float(responses[0])
    return dict(
        key,
        mei_response=float(mei_response),
        best_natural_response=best,
        fraction=float(mei_response) / best,
        natural_indices=np.asarray(indices, dtype=np.int64),
        natural_responses=np.asarray(responses, dtype=np.float32),
        n_images=int(n_images),
    )


class ExcitingVariantsTemplateMixin(_ModelTableMixin):
    """Exciting variants of stored MEIs: images that each drive the MEI's neuron to a fixed
    fraction of the MEI's response while being as different from each other as possible,
    with their diversity index (:mod:`mei.variants`; Ding et al. 2026 call them varied
    exciting inputs: not the sinzlab/mei fork's ``"VEI"``, a variance-exciting input).

    One row per MEI row x variants method x variants seed. Links: ``mei_table`` (the lab's
    MEI table: its ``trained_model_table`` and ``selector_table`` give the model of the
    neuron), ``method_table`` and ``seed_table`` (their key attributes renamed
    ``variants_method_fn``, ``variants_method_hash`` and ``variants_seed``, next to the MEI's
    own ``method_fn``, ``method_hash`` and ``mei_seed``). Only method rows whose ``method_fn``
    is in :attr:`method_fns` are computed. The method is called as ``method_fn(dataloaders,
    model, config, seed, mei=stored_mei)`` with the neuron's model; the reference is the
    model's response to the stored MEI (:func:`mei.variants.exciting_variants` computes it),
    and it must return ``(variants (N, C, ...), score, output)`` with ``output["reference"]``,
    ``output["responses"]`` (one per variant), ``output["diversity"]`` and
    ``output["diversity_index"]``. The variants and ``output`` are files in the store
    ``storage``; the part ``Variant`` holds each variant's response. Keys are computed one by
    one (each neuron's run is a batch of its ``n_variants`` images).
    """

    definition_template = """
    # exciting variants: images driving a neuron to a fraction of its MEI's response, diverse
    -> self.mei_table
    -> self.method_table.proj(variants_method_fn="method_fn", variants_method_hash="method_hash")
    -> self.seed_table.proj(variants_seed="mei_seed")
    ---
    n_variants          : {int}     # number of variants
    reference           : {float}   # the MEI's response, which the fractions are of
    diversity           : {float}   # mean pairwise distance between the variants
    diversity_index     : {float}   # diversity in [0, 1] (see mei.variants)
    variants            : {file}    # the images, (n_variants, C, ...)
    output              : {file}    # object returned by the method function
    """

    class Variant(_Table):
        """Each variant's response."""

        definition_template = """
        # the response of each variant
        -> master
        variant             : {int}     # its index in variants
        ---
        response            : {float}   # the neuron's response to it
        fraction            : {float}   # response / reference
        """

        @property
        def definition(self) -> str:
            return self.definition_template.format(**backend().types)

    mei_table: Any = RequiredLink("MEI")
    method_fns: tuple[str, ...] | None = ("mei.variants.exciting_variants",)
    """The method functions this table computes (``None``: every method row)."""

    @property
    def trained_model_table(self) -> Any:
        """The MEI table's trained model table."""
        return self.mei_table.trained_model_table

    @property
    def key_source(self) -> Any:
        """DataJoint's key source (MEI rows x method rows x seeds) for the method rows of
        :attr:`method_fns`."""
        source = super().key_source  # type: ignore[misc]
        if self.method_fns is None:
            return source
        return source & _method_fns_condition("variants_method_fn", self.method_fns, keep=True)

    def methods_of(self, keys: Any) -> list[Key]:
        """The method rows (keys) that ``keys`` of this table use (for the device check)."""
        rows = backend().to_dicts(keys.proj("variants_method_fn", "variants_method_hash"))
        found = {(r["variants_method_fn"], r["variants_method_hash"]) for r in rows}
        return [{"method_fn": fn, "method_hash": h} for fn, h in sorted(found)]

    def make_fetch(self, key: Key) -> tuple[str, Any, int]:
        """The variants method and seed of ``key`` (fetched again before inserting)."""
        method = {
            "method_fn": key["variants_method_fn"],
            "method_hash": key["variants_method_hash"],
        }
        method_fn, method_config = (self.method_table() & method).fetch1(
            "method_fn", "method_config"
        )
        return method_fn, method_config, check_seed(key["variants_seed"], "variants_seed")

    def make_compute(
        self, key: Key, method_fn: str, method_config: Any, seed: int
    ) -> tuple[Tensor, Any, list[Key], Key]:
        """Load the stored MEI and (or reuse) the model, select the neuron and run the method:
        no transaction. Returns the variants, the output, the ``Variant`` rows and the row's
        numbers."""
        mei_key = {name: key[name] for name in _primary_key(self.mei_table)}
        mei = self.mei_table().load_mei(mei_key)
        variants, output = run.compute_variants_key(
            self, key, (method_fn, method_config, seed), mei
        )
        reference = float(output["reference"])
        rows = [
            dict(key, variant=i, response=float(r), fraction=float(r) / reference)
            for i, r in enumerate(output["responses"])
        ]
        numbers = {
            "n_variants": len(variants),
            "reference": reference,
            "diversity": float(output["diversity"]),
            "diversity_index": float(output["diversity_index"]),
        }
        return variants, output, rows, numbers

    def make_insert(
        self, key: Key, variants: Tensor, output: Any, rows: list[Key], numbers: Key
    ) -> None:
        """Store the variants and ``output`` as files, insert the row and its ``Variant``
        rows; a failure leaves none of them."""
        backend().insert_with_parts(
            self,
            dict(key, **numbers),
            {"variants": variants, "output": output},
            self.storage,
            [(self.Variant(), rows)],
        )

    def populate(self, *restrictions: Any, **kwargs: Any) -> Any:
        """DataJoint's ``populate``, after refusing keys whose variants method asks for a
        device this machine lacks (:func:`mei.dj.populate.check_devices`) and a store that
        does not take files (:func:`mei.dj.store.check_store`)."""
        with populate_session(self.connection, f"{type(self).__name__}.populate"):
            _populate.check_devices(self, *restrictions)
            check_store(self)
            return super().populate(*restrictions, **kwargs)  # type: ignore[misc]

    def load_variants(self, key: Mapping[str, Any] | None = None) -> Tensor:
        """The variants of one row, ``(n_variants, C, ...)`` (``key=None``: this restricted
        table's row)."""
        variants: Tensor = backend().load_file(self & key if key is not None else self, "variants")
        return variants

    def load_mei(self, key: Mapping[str, Any] | None = None) -> Tensor:
        """:meth:`load_variants`, under the MEI table's name."""
        return self.load_variants(key)
