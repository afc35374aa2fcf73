"""The one run path of an MEI key, used by ``make``, batched populate and workers.

For each key: validate the method, give the components that ask for it the key, apply the
MEI table's ``device`` override, call the method table's ``generate_mei`` (or, for keys that
share everything but the neuron, the method's batched form), and check the result.
:func:`compute` does this for a list of keys and returns one outcome per key.

Nothing here imports DataJoint; the tables are passed in.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
import logging
import math
import numbers
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..capture import capturing
from ..config import check_seed
from ..errors import ComponentError, ConfigError, ModelError, NonFiniteError, shorten
from ..import_helpers import resolve_path
from ..modules import ConstrainedOutputModel
from ..validation import NaturalImages, check_mei_shape, score_meis, top_natural_images
from .hashing import make_hash
from .model_cache import ModelLoader

logger = logging.getLogger(__name__)

Key = dict[str, Any]
Result = tuple[Tensor, float, Any]
"""``(mei, score, output)`` of one key, checked by :func:`check_result`."""

METHOD_FN_MAX_LENGTH = 64
"""``method_fn`` is a ``varchar(64)`` column."""

KEYED_COMPONENTS = ("initial", "transform", "regularization", "precondition", "postprocessing")
"""Config components whose ``kwargs["key"]``, when present, is set to the MEI's key at run time."""

_device: contextvars.ContextVar[str | None] = contextvars.ContextVar("mei_device", default=None)


@contextlib.contextmanager
def device_override(device: str | None) -> Iterator[None]:
    """Within the block, runs use ``device`` instead of their config's (``None``: no change).

    The MEI table sets it around ``generate_mei`` from its ``device`` attribute, so a worker
    per GPU (``mei worker --device cuda:1``) needs no change to the stored method rows.
    """
    token = _device.set(device)
    try:
        yield
    finally:
        _device.reset(token)


@contextlib.contextmanager
def run_options(table: Any) -> Iterator[None]:
    """The MEI table's run options around a method call: its ``device`` override and, with
    ``capture = True``, captured steps (:mod:`mei.capture`; no number changes)."""
    with device_override(table.device), capturing(bool(getattr(table, "capture", False))):
        yield


def load_model(table: Any, key: Key, method_config: Any) -> tuple[Any, Any]:
    """``(dataloaders, model)`` of ``key`` from the table's model cache; a :class:`ModelLoader`
    keeps its cached model on the device the run uses (the table's ``device``, else the
    config's), so that a GPU worker copies it to the device once, not once per key."""
    loader = table.model_loader
    if isinstance(loader, ModelLoader):
        device = table.device
        if device is None and isinstance(method_config, Mapping):
            device = method_config.get("device")
        loaded: tuple[Any, Any] = loader.load(key, device if isinstance(device, str) else None)
        return loaded
    return loader.load(key)  # type: ignore[no-any-return]


class Fetched(NamedTuple):
    """What ``make_fetch`` reads for a key: the method and the seed."""

    method_fn: str
    method_config: Any
    seed: int


def validate_method(
    method_fn: str,
    method_config: Any,
    *,
    check_config: bool = True,
    import_func: Callable[[str], Any] | None = None,
) -> Any:
    """Import ``method_fn`` and check ``method_config`` against it; return the function.

    Raises :class:`mei.errors.ConfigError` when the path does not import, is too long for the
    table, the config is not a mapping, or the function's ``validate_config`` rejects it.
    Whether the config's ``device`` exists on this machine is not checked (a ``validate_config``
    that takes ``check_device`` is called with ``check_device=False``): method rows are data,
    added from any machine and run by workers on others; a worker checks its devices before it
    reserves a key (:func:`mei.dj.populate.check_devices`).
    Runs pass ``check_config=False``: the method validates its config itself when called, so
    checking it here too would resolve every component twice per key. ``import_func`` imports
    the dotted path (default :func:`mei.import_helpers.resolve_path`; a method table's
    ``import_func``).
    """
    if not isinstance(method_fn, str):
        raise ConfigError(f"method_fn must be a dotted path string, got {method_fn!r}")
    if len(method_fn) > METHOD_FN_MAX_LENGTH:
        raise ConfigError(
            f"method_fn must be at most {METHOD_FN_MAX_LENGTH} characters, got {len(method_fn)}",
            path=method_fn,
        )
    if not isinstance(method_config, Mapping):
        raise ConfigError(
            f"method_config must be a mapping, got {type(method_config).__name__}",
            path=method_fn,
        )
    try:
        fn = (import_func or resolve_path)(method_fn)
    except (ImportError, ValueError, AttributeError) as e:
        raise ConfigError(f"method_fn cannot be imported: {e}", path=method_fn) from e
    if not callable(fn):
        raise ConfigError(f"method_fn is not callable: {fn!r}", path=method_fn)
    validate = getattr(fn, "validate_config", None)
    if check_config and validate is not None:
        if _takes_keyword(validate, "check_device"):
            validate(method_config, check_device=False)
        else:  # a lab's own validate_config
            validate(method_config)
    return fn


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` declares a parameter ``name`` that can be passed by keyword."""
    try:
        parameter = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):  # no signature (a builtin, a C extension)
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def insert_key(
    method_config: MutableMapping[str, Any],
    key: Mapping[str, Any],
    names: Iterable[str] = KEYED_COMPONENTS,
) -> None:
    """Give ``key`` to the components of ``method_config`` (in place) that ask for it.

    A component named in ``names`` whose ``kwargs`` contain ``"key"`` gets ``kwargs["key"] =
    key``, as the original library did before every run.
    """
    for name in names:
        component = method_config.get(name)
        if isinstance(component, MutableMapping):
            kwargs = component.get("kwargs")
            if isinstance(kwargs, MutableMapping) and "key" in kwargs:
                kwargs["key"] = key


def run_config(
    method_config: Mapping[str, Any],
    key: Mapping[str, Any],
    *,
    insert_key_in_ops: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """The config a run of ``key`` gets: a copy whose components asking for ``kwargs["key"]``
    get the key and, inside :func:`device_override`, that device.

    ``insert_key_in_ops(config, key)`` gives the key to the components (in place; default
    :func:`insert_key`; a method table passes its own ``insert_key_in_ops``).
    """
    config = copy.deepcopy(dict(method_config))
    (insert_key_in_ops or insert_key)(config, dict(key))
    device = _device.get()
    if device is not None:
        config["device"] = device
    return config


def check_result(method_fn: str, result: Any, key: Mapping[str, Any]) -> Result:
    """``result`` of ``method_fn`` for ``key`` as ``(mei, score, output)``, checked.

    ``mei`` becomes a detached CPU tensor, whatever its shape: a method that makes several
    MEIs per key (the original's ``n_meis``) returns them as one ``(n_meis, C, H, W)`` tensor
    with one score, and all are stored. ``score`` becomes a float; raises
    :class:`mei.errors.ComponentError` for a malformed result and
    :class:`mei.errors.NonFiniteError` for a score that is not finite, naming ``key``.
    """
    if not isinstance(result, tuple) or len(result) != 3:
        raise ComponentError(
            f"{method_fn} must return (mei, score, output), got {type(result).__name__} "
            f"for key {dict(key)!r}"
        )
    mei, score, output = result
    if not isinstance(mei, Tensor):
        raise ComponentError(
            f"{method_fn} must return the MEI as a tensor, got {type(mei).__name__} "
            f"for key {dict(key)!r}"
        )
    if isinstance(score, Tensor) and score.numel() == 1:
        score = score.item()
    if not isinstance(score, numbers.Real):
        raise ComponentError(
            f"{method_fn} must return a real score, got {score!r} for key {dict(key)!r}"
        )
    if not math.isfinite(score):
        raise NonFiniteError(f"{method_fn} returned the score {score} for key {dict(key)!r}")
    return mei.detach().cpu(), float(score), output


def run_method(
    method_fn: str,
    method_config: Mapping[str, Any],
    dataloaders: Any,
    model: Any,
    key: Mapping[str, Any],
    seed: int,
    *extra: Any,
    import_func: Callable[[str], Any] | None = None,
    insert_key_in_ops: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None,
) -> Result:
    """Call ``method_fn(dataloaders, model, run_config(...), seed, *extra)``; return its checked
    result. ``extra`` are further arguments of the method (a ring MEI's ``ring_mask``);
    ``import_func`` and ``insert_key_in_ops`` those of a method table (see
    :func:`validate_method` and :func:`run_config`)."""
    fn = validate_method(method_fn, method_config, check_config=False, import_func=import_func)
    config = run_config(method_config, key, insert_key_in_ops=insert_key_in_ops)
    result = fn(dataloaders, model, config, check_seed(seed, "mei_seed"), *extra)
    return check_result(method_fn, result, key)


def builtin(fn: Any) -> Any:
    """Mark mei's own ``generate_mei`` (and the method table's other hooks), so that
    :func:`overrides_generate_mei` can tell them from a lab's."""
    fn.__mei_builtin__ = True
    return fn


HOOKS = ("generate_mei", "import_func", "insert_key_in_ops")
"""The method table's methods that a run goes through; a lab may override each."""


def overrides_generate_mei(method_table: Any) -> bool:
    """Whether a lab's method table replaced mei's ``generate_mei``, ``import_func`` or
    ``insert_key_in_ops`` (then every key goes through its ``generate_mei``, one at a time)."""
    cls = method_table if isinstance(method_table, type) else type(method_table)
    return not all(getattr(getattr(cls, h, None), "__mei_builtin__", False) for h in HOOKS)


def compute_key(table: Any, key: Key, fetched: Sequence[Any]) -> Result:
    """One key: load (or reuse) the model, select the unit, ``generate_mei``, check.

    ``table`` is the MEI table; ``fetched`` what its ``make_fetch`` returned for ``key``.
    """
    method_fn, method_config, seed = fetched
    dataloaders, model = load_model(table, key, method_config)
    model = selected_model(table.selector_table(), model, key)
    add_params = getattr(table, "add_params_to_model", None)
    if callable(add_params):
        # the sinzlab/mei fork's hook: the MEI table gives the selected model what a CEI or
        # VEI is relative to (model.mei_mean, model.mei_variance) before the run
        add_params(model, key)
    return _generate(table, method_fn, dataloaders, model, key, seed)


def _generate(
    table: Any, method_fn: str, dataloaders: Any, model: Any, key: Key, seed: Any
) -> Result:
    """The method table's ``generate_mei`` for ``key`` under the table's device override,
    checked."""
    with run_options(table):
        entity = table.method_table().generate_mei(dataloaders, model, dict(key), int(seed))
    if not isinstance(entity, Mapping) or not {"mei", "score", "output"} <= set(entity):
        raise ComponentError(
            f"generate_mei must return a dict with 'mei', 'score' and 'output', got "
            f"{type(entity).__name__} for key {dict(key)!r}"
        )
    return check_result(method_fn, (entity["mei"], entity["score"], entity["output"]), key)


def selected_model(selector: Any, model: Any, key: Key) -> Any:
    """``selector.get_output_selected_model(model, key)``; selector tables written for the
    original library between 2020 and 2024 call it ``get_objective``."""
    select = getattr(selector, "get_output_selected_model", None)
    if select is None:
        select = getattr(selector, "get_objective", None)
    if select is None:
        raise ComponentError(
            f"the selector table {type(selector).__name__} has no "
            "get_output_selected_model(model, key) (nor the older get_objective)"
        )
    return select(model, key)


def population_model(
    selector: Any, model: Any, key: Mapping[str, Any], members: Sequence[Mapping[str, Any]]
) -> ConstrainedOutputModel:
    """The model of a set of neurons: ``ConstrainedOutputModel(model, units)``, output ``(B,
    len(members))``, column ``i`` the unit the selector gives ``members[i]`` (selector keys).

    Each neuron's unit comes from ``selector.get_output_selected_model(model, {**key,
    **member})``, which must select one int unit of ``model`` itself, all with the same
    ``forward_kwargs`` and no ``target_fn``; otherwise :class:`mei.errors.ComponentError`.
    """
    if not members:
        raise ComponentError(f"the set of neurons of key {dict(key)!r} has no members")
    selected = [selected_model(selector, model, {**key, **m}) for m in members]
    plan = _batch_plan(model, selected)
    if plan is None or any(s.has_target_fn for s in selected):
        raise ComponentError(
            f"the selector {type(selector).__name__} must give every neuron of the set "
            "ConstrainedOutputModel(model, unit) with an int unit of the model it was given, "
            "the same forward_kwargs (e.g. one data_key) and no target_fn, to make one model of "
            f"the set; got {selected[0]!r} for {dict(members[0])!r}"
        )
    _, forward_kwargs, units = plan
    return ConstrainedOutputModel(model, units, forward_kwargs=forward_kwargs)


def check_clusters(
    method_fn: str, result: Result, n_members: int, key: Mapping[str, Any]
) -> list[int]:
    """The cluster of each member from a set method's checked ``result``: ``output["labels"]``,
    one int in ``0 .. K-1`` per member, ``K`` the number of stimuli; else
    :class:`mei.errors.ComponentError` naming ``key``."""
    stimuli, _, output = result
    labels = output.get("labels") if isinstance(output, Mapping) else None
    n_stimuli = len(stimuli) if stimuli.dim() > 0 else 0
    if (
        not isinstance(labels, Sequence)
        or len(labels) != n_members
        or not all(isinstance(v, numbers.Integral) and 0 <= int(v) < n_stimuli for v in labels)
    ):
        raise ComponentError(
            f"{method_fn} must return one stimulus per cluster and output['labels'], the "
            f"cluster (0 .. {n_stimuli - 1}) of each of the {n_members} neurons of the set, "
            f"for key {dict(key)!r}; got {n_stimuli} stimuli and labels {shorten(labels)}"
        )
    return [int(v) for v in labels]


def compute_set_key(
    table: Any, key: Key, fetched: Sequence[Any]
) -> tuple[Tensor, float, Any, list[int]]:
    """One key of a table of results for sets of neurons (:class:`mei.dj.tables.MDSTemplateMixin`):
    load (or reuse) the model, make the model of the set (:func:`population_model`),
    ``generate_mei``, check; returns ``(stimuli, score, output, cluster of each member)``.

    ``fetched`` is what the table's ``make_fetch`` returned: method, config, seed, members.
    """
    method_fn, method_config, seed, members = fetched
    dataloaders, model = load_model(table, key, method_config)
    selector = table.neuron_set_table.selector_table()
    model = population_model(selector, model, key, members)
    result = _generate(table, method_fn, dataloaders, model, key, seed)
    return (*result, check_clusters(method_fn, result, len(members), key))


def _same_function(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` compute the same: the same object, or partials of the same
    function with equal arguments (selectors often build ``partial(target, **config)`` per
    key)."""
    if a is b:
        return True
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        try:
            return bool(
                _same_function(a.func, b.func) and a.args == b.args and a.keywords == b.keywords
            )
        except Exception:  # arguments that cannot be compared (e.g. tensors)
            return False
    return False


def _batch_plan(model: Any, selected: Sequence[Any]) -> tuple[Any, Any, list[int]] | None:
    """``(target_fn, forward_kwargs, units)`` if every selected model picks one int unit of
    ``model`` the same way, else ``None``."""
    if not all(isinstance(s, ConstrainedOutputModel) for s in selected):
        return None
    first = selected[0]
    for s in selected:
        if (
            s.model is not model
            or not isinstance(s.constraint, numbers.Integral)
            or not _same_function(s.target_fn, first.target_fn)
            or s.forward_kwargs != first.forward_kwargs
        ):
            return None
    return first.target_fn, first.forward_kwargs, [int(s.constraint) for s in selected]


def _keyed(method_config: Mapping[str, Any], names: Iterable[str] = KEYED_COMPONENTS) -> bool:
    """Whether some component named in ``names`` receives the MEI's key (then configs differ
    per key)."""
    return any(
        isinstance(method_config.get(n), Mapping)
        and "key" in (method_config[n].get("kwargs") or {})
        for n in names
    )


def _compute_batched(table: Any, keys: Sequence[Key], fetched: Fetched) -> list[Result] | None:
    """The results of ``keys`` from one batched run, or ``None`` if they cannot share one."""
    method_fn, method_config, seed = fetched
    names = getattr(table.method_table, "optional_names", KEYED_COMPONENTS)
    if overrides_generate_mei(table.method_table) or _keyed(method_config, names):
        return None
    if method_config.get("n_meis", 1) != 1:
        return None  # several MEIs per key (the original's n_meis): one run per key
    if method_config.get("mei_class_name", "MEI") not in ("MEI", None):
        return None  # a CEI or VEI is relative to its own unit's MEI: one run per key
    if callable(getattr(table, "add_params_to_model", None)):
        return None  # the lab's hook gives each key's model its own parameters
    batched = getattr(
        validate_method(method_fn, method_config, check_config=False), "batched", None
    )
    if batched is None:
        return None
    dataloaders, model = load_model(table, keys[0], method_config)
    selector = table.selector_table()
    plan = _batch_plan(model, [selected_model(selector, model, k) for k in keys])
    if plan is None:
        return None
    target_fn, forward_kwargs, units = plan
    with run_options(table):
        config = run_config(method_config, keys[0])
        results = batched(
            dataloaders,
            model,
            config,
            seed,
            units,
            target_fn=target_fn,
            forward_kwargs=forward_kwargs,
        )
    return [check_result(method_fn, r, k) for r, k in zip(results, keys, strict=True)]


def fetch_all(table: Any, keys: Sequence[Key]) -> list[Fetched]:
    """``make_fetch`` of every key; with mei's own ``make_fetch``, once per method and seed."""
    if not getattr(getattr(type(table), "make_fetch", None), "__mei_builtin__", False):
        return [Fetched(*table.make_fetch(k)) for k in keys]
    names = [*table.method_table.primary_key, *table.seed_table.primary_key]
    cache: dict[str, Fetched] = {}
    fetched = []
    for key in keys:
        sub = make_hash({n: key[n] for n in names})
        if sub not in cache:
            cache[sub] = Fetched(*table.make_fetch(key))
        fetched.append(cache[sub])
    return fetched


def compute(
    table: Any, keys: Sequence[Key], *, fatal: Callable[[BaseException], bool] | None = None
) -> list[tuple[Fetched, Result] | Exception]:
    """Compute the MEIs of ``keys`` of the MEI ``table``; no transaction is open.

    Keys that share method, seed, model and selection run in one batched run when the method
    has a batched form and the lab did not override ``generate_mei``; any other key, or all
    keys of a batched run that failed, run one by one through :func:`compute_key`. Returns,
    per key, ``(fetched, (mei, score, output))`` or the exception it raised (with its
    traceback text in ``__mei_traceback__``). Exceptions for which ``fatal`` is true (a lost
    database connection) are raised instead: they are nobody's key's fault.
    """
    fetched = fetch_all(table, keys)
    if len(keys) > 1 and len({make_hash(f) for f in fetched}) == 1:
        try:
            results = _compute_batched(table, keys, fetched[0])
        except Exception:
            logger.warning(
                "batched run of %d keys failed; computing them one by one to find the "
                "failing key(s)",
                len(keys),
                exc_info=True,
            )
            results = None
        if results is not None:
            return list(zip(fetched, results, strict=True))
    outcomes: list[tuple[Fetched, Result] | Exception] = []
    for f, key in zip(fetched, keys, strict=True):
        try:
            outcomes.append((f, table.make_compute(key, *f)))
        except Exception as e:
            if fatal is not None and fatal(e):
                raise
            e.__mei_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            outcomes.append(e)
    return outcomes


# --------------------------------------------------------------------------- validation
class _Column(nn.Module):
    """A selected model as a one-unit model ``(B, ...) -> (B, 1)``: how a key whose selector
    does not pick a plain int unit of the model (a ``target_fn``, a lab's own wrapper) is
    scored. A selected model that reduces the batch (``target_fn=torch.mean``) is called once
    per input; one that gives several values per input raises :class:`~mei.errors.ModelError`."""

    def __init__(self, selected: Any):
        super().__init__()
        self.selected = selected

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        output = self.selected(x, **kwargs)
        if not isinstance(output, Tensor) or output.dim() == 0 or output.shape[0] != len(x):
            output = torch.stack(
                [torch.as_tensor(self.selected(x[i : i + 1], **kwargs)) for i in range(len(x))]
            )
        column = output.reshape(len(x), -1)
        if column.shape[1] != 1:
            raise ModelError(
                f"the selector's model ({type(self.selected).__name__}) gives "
                f"{column.shape[1]} values per input; validating an MEI needs one (its unit's)"
            )
        return column


NATURAL_CACHE_SIZE = 16
"""Natural-image rankings (one per validating model, session and settings) a validation
table object keeps."""


def _natural(table: Any, cache_key: Any, compute: Callable[[], NaturalImages]) -> NaturalImages:
    """``compute()``, kept on ``table`` under ``make_hash(cache_key)`` (a few at most)."""
    cache: dict[str, NaturalImages] = table.__dict__.setdefault("_natural_cache", {})
    name = make_hash(cache_key)
    if name not in cache:
        while len(cache) >= NATURAL_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[name] = compute()
    return cache[name]


ValidationOutcome = tuple[float, Any, Any, int]
"""``(mei_response, natural indices, natural responses, n_images)`` of one key."""


def _check_validation(key: Key, outcome: ValidationOutcome) -> ValidationOutcome:
    response, _, responses, _ = outcome
    if not math.isfinite(response) or not all(math.isfinite(float(r)) for r in responses):
        raise NonFiniteError(
            f"the validating model's responses for key {dict(key)!r} are not finite (MEI: "
            f"{response}, best natural images: {[float(r) for r in responses]})"
        )
    if float(responses[0]) == 0.0:
        raise NonFiniteError(
            f"the best natural image's response is 0 for key {dict(key)!r}: the fraction "
            "is undefined"
        )
    return outcome


def _validate_group(
    table: Any,
    keys: Sequence[Key],
    device: Any,
    fatal: Callable[[BaseException], bool] | None = None,
) -> list[ValidationOutcome | Exception]:
    """The keys of one validating model: MEIs of one session in one forward pass, the
    natural images ranked once per session for all the model's units."""
    top_k, tier = int(table.top_k), str(table.tier)
    loader = table.model_loader
    if isinstance(loader, ModelLoader):
        dataloaders, model = loader.load(keys[0], device if isinstance(device, str) else None)
    else:
        dataloaders, model = loader.load(keys[0])
    model_key = table.batch_group(keys[0])
    selector = table.mei_table.selector_table()
    mei_table = table.mei_table()
    outcomes: list[ValidationOutcome | Exception | None] = [None] * len(keys)
    sessions: dict[str, list[tuple[int, Tensor, int]]] = {}
    kwargs_of: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        try:
            mei = mei_table.load_mei(key)
            selected = selected_model(selector, model, key)
            if (
                isinstance(selected, ConstrainedOutputModel)
                and selected.model is model
                and isinstance(selected.constraint, numbers.Integral)
                and not selected.has_target_fn
            ):
                name = make_hash(selected.forward_kwargs)
                kwargs_of[name] = selected.forward_kwargs
                sessions.setdefault(name, []).append((i, mei, int(selected.constraint)))
            else:  # scored alone, as a one-unit model
                alone = _Column(selected)
                outcomes[i] = _validate_alone(table, key, alone, mei, dataloaders, device)
        except Exception as e:
            if fatal is not None and fatal(e):
                raise
            e.__mei_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            outcomes[i] = e
    for name, items in sessions.items():
        forward_kwargs = kwargs_of[name]
        data_key = forward_kwargs.get("data_key")
        data_key = data_key if isinstance(data_key, str) else None
        meis = torch.cat([mei for _, mei, _ in items])
        units = [unit for _, mei, unit in items for _ in range(len(mei))]
        check_mei_shape(meis, dataloaders, tier=tier, data_key=data_key)
        scores = score_meis(model, meis, units, forward_kwargs=forward_kwargs, device=device)
        natural = _natural(
            table,
            (model_key, forward_kwargs, tier, top_k),
            functools.partial(
                top_natural_images,
                model,
                dataloaders,
                k=top_k,
                tier=tier,
                forward_kwargs=forward_kwargs,
                device=device,
            ),
        )
        start = 0
        for i, mei, unit in items:
            response = float(scores[start : start + len(mei)].mean())
            start += len(mei)
            try:
                indices, responses = natural.indices[unit], natural.responses[unit]
                outcome = (response, indices.tolist(), responses.tolist(), natural.n_images)
                outcomes[i] = _check_validation(keys[i], outcome)
            except Exception as e:
                e.__mei_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
                outcomes[i] = e
    return [o for o in outcomes if o is not None]


def _validate_alone(
    table: Any, key: Key, model: Any, mei: Tensor, dataloaders: Any, device: Any
) -> ValidationOutcome:
    top_k, tier = int(table.top_k), str(table.tier)
    check_mei_shape(mei, dataloaders, tier=tier)
    score = float(score_meis(model, mei, [0] * len(mei), device=device).mean())
    natural = top_natural_images(model, dataloaders, [0], k=top_k, tier=tier, device=device)
    outcome = (score, natural.indices[0].tolist(), natural.responses[0].tolist(), natural.n_images)
    return _check_validation(key, outcome)


def validate(
    table: Any, keys: Sequence[Key], *, fatal: Callable[[BaseException], bool] | None = None
) -> list[tuple[Any, ValidationOutcome] | Exception]:
    """Validate the MEIs of ``keys`` of a validation ``table``
    (:class:`mei.dj.tables.MEIValidationTemplateMixin`); no transaction is open.

    Keys with the same validating model and device are computed together: the model is
    loaded once, the MEIs of one session go through it in one forward pass
    (:func:`mei.validation.score_meis`), and the natural images are ranked once per session
    for all its units (:func:`mei.validation.top_natural_images`, kept on the table object).
    Returns, per key, ``(fetched, (mei_response, indices, responses, n_images))`` or the
    exception it raised. If a group fails as a whole, its keys are computed one by one to
    find the failing ones. Exceptions for which ``fatal`` is true are raised.
    """
    fetched = [table.make_fetch(k) for k in keys]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        device = table.device if table.device is not None else fetched[i][1]
        groups.setdefault(make_hash([table.batch_group(key), device]), []).append(i)
    outcomes: list[tuple[Any, ValidationOutcome] | Exception | None] = [None] * len(keys)
    for members in groups.values():
        first = members[0]
        device = table.device if table.device is not None else fetched[first][1]
        parts = [members]
        while parts:
            part = parts.pop(0)
            try:
                results = _validate_group(table, [keys[i] for i in part], device, fatal)
            except Exception as e:
                if fatal is not None and fatal(e):
                    raise
                if len(part) > 1:
                    logger.warning(
                        "validating %d keys together failed; validating them one by one",
                        len(part),
                        exc_info=True,
                    )
                    parts = [[i] for i in part] + parts
                    continue
                e.__mei_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
                results = [e]
            for i, result in zip(part, results, strict=True):
                outcomes[i] = result if isinstance(result, Exception) else (fetched[i], result)
    return [o for o in outcomes if o is not None]


VARIANTS_OUTPUT = ("reference", "responses", "diversity", "diversity_index")
"""What a variants method's ``output`` must hold (see :func:`check_variants`)."""


def check_variants(method_fn: str, result: Result, key: Mapping[str, Any]) -> dict[str, Any]:
    """The output of a variants method's checked ``result``: a dict with a positive finite
    ``reference``, one finite response per variant in ``responses`` and finite
    ``diversity`` and ``diversity_index``; else :class:`mei.errors.ComponentError` naming
    ``key``."""
    variants, _, output = result
    n = len(variants) if variants.dim() > 0 else 0

    def finite(value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return math.isfinite(float(value))

    ok = isinstance(output, Mapping) and all(name in output for name in VARIANTS_OUTPUT)
    if ok:
        responses = output["responses"]
        ok = (
            finite(output["reference"])
            and float(output["reference"]) > 0
            and isinstance(responses, Sequence)
            and len(responses) == n
            and all(finite(r) for r in responses)
            and finite(output["diversity"])
            and finite(output["diversity_index"])
        )
    if not ok:
        raise ComponentError(
            f"{method_fn} must return the variants and an output dict with a positive "
            f"'reference', one response per variant in 'responses' ({n} variants), "
            f"'diversity' and 'diversity_index', for key {dict(key)!r}; got {shorten(output)}"
        )
    return dict(output)


def compute_variants_key(
    table: Any, key: Key, fetched: Sequence[Any], mei: Tensor
) -> tuple[Tensor, dict[str, Any]]:
    """One key of a table of exciting variants (:class:`mei.dj.tables.ExcitingVariantsTemplateMixin`):
    load (or reuse) the model, select the MEI's neuron, call ``method_fn(dataloaders, model,
    config, seed, mei=mei)`` under the table's run options, check; returns ``(variants,
    output)``. ``fetched`` is what the table's ``make_fetch`` returned: method, config, seed."""
    method_fn, method_config, seed = fetched
    dataloaders, model = load_model(table, key, method_config)
    model = selected_model(table.mei_table.selector_table(), model, key)
    import_func = getattr(table.method_table, "import_func", None)
    fn = validate_method(method_fn, method_config, check_config=False, import_func=import_func)
    with run_options(table):
        config = run_config(method_config, key)
        result = check_result(
            method_fn,
            fn(dataloaders, model, config, check_seed(seed, "variants_seed"), mei=mei),
            key,
        )
    return result[0], check_variants(method_fn, result, key)
