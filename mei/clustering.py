"""Most discriminative stimuli (Burg et al., ICLR 2024): cluster units by the stimuli that
tell their clusters apart.

:func:`mds_clustering` alternates two steps from an initial clustering (e.g. k-means on the
units' readout weights, or any labels): optimize one most discriminative stimulus (MDS) per
cluster with :class:`~mei.modules.ClusterContrast`, all clusters in one batched run; then
give each unit the cluster whose MDS drives it most (:func:`reassign`). Clusters that no unit
chooses disappear (merge) and the loop ends when no unit changes cluster.

:func:`mds` is the same as a method function (``method_fn = "mei.clustering.mds"``): a method
row's config, with an ``"mds"`` entry for the clustering, in; the stimuli of all clusters, one
score and the clustering out. ``mei.main.MDSTemplate`` stores its results.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from .config import MethodConfig, check_seed, resolve_config, settings_entry
from .errors import ConfigError, InputError, list_names, shorten
from .methods import get_input_shape, prepared_model, run_batch, with_response
from .modules import ClusterContrast
from .typing import Dataloaders


@dataclass
class MDSResult:
    """``labels``: one cluster index per unit (``0 .. K-1``), the clustering the stimuli
    were optimized for; ``stimuli``: the MDS of each cluster, ``(K, C, ...)``; ``scores``:
    each MDS's objective; ``history``: the labels after each round (the initial labels
    first); ``converged``: whether the last round changed no unit's cluster."""

    labels: list[int]
    stimuli: Tensor
    scores: list[float]
    history: list[list[int]] = field(default_factory=list)
    converged: bool = False


def clusters_of(labels: Sequence[int]) -> list[list[int]]:
    """The units of each cluster, clusters ordered by label (empty labels skipped)."""
    found: dict[int, list[int]] = {}
    for unit, label in enumerate(labels):
        found.setdefault(int(label), []).append(unit)
    return [found[k] for k in sorted(found)]


def reassign(responses: Tensor) -> list[int]:
    """Each unit's new cluster: the stimulus that drives it most. ``responses`` is
    ``(K, N)``, unit ``n``'s response to cluster ``k``'s stimulus. Labels are renumbered
    ``0 ..`` in order of the clusters that keep units (the others are merged away)."""
    chosen = responses.argmax(dim=0).tolist()
    order = {k: i for i, k in enumerate(sorted(set(chosen)))}
    return [order[k] for k in chosen]


def mds_clustering(
    model: nn.Module,
    labels: Sequence[int],
    config: Mapping[str, Any] | MethodConfig,
    *,
    shape: Sequence[int],
    seed: int = 0,
    temperature: float = 1.0,
    rounds: int = 10,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> MDSResult:
    """Cluster the output units of ``model`` (``(B, ...) -> (B, N)``) by their most
    discriminative stimuli, starting from ``labels`` (one per unit). ``config`` is a method
    config as for :func:`~mei.methods.gradient_ascent`; every cluster's stimulus starts from
    ``seed``. At most ``rounds`` rounds of optimizing and reassigning. A ``response`` entry in
    the config reduces the model's responses (e.g. over time) before the clusters are formed:
    it wraps ``model``, or goes inside it if ``model`` selects units of a model it holds
    (:func:`mei.methods.with_response`)."""
    method = resolve_config(config)
    if method.response is not None:  # reduce over time before the clusters select units
        model = _with_population_response(model, method)
        method = dataclasses.replace(method, response=None)
    current = [int(label) for label in labels]
    current = reassign(torch.nn.functional.one_hot(torch.tensor(current)).T.float())
    history = [current]
    element = (1, *[int(s) for s in shape][1:])
    stimuli, scores, converged, optimized = torch.empty(0), [], False, current
    for _ in range(rounds):
        clusters = clusters_of(current)
        if len(clusters) < 2:
            break
        contrast = ClusterContrast(
            model, clusters, temperature=temperature, forward_kwargs=forward_kwargs
        )
        results = run_batch(method, contrast, element, [seed] * len(clusters), progress=False)
        stimuli = torch.cat([mei for mei, _, _ in results])
        scores = [score for _, score, _ in results]
        optimized = current
        with torch.no_grad(), prepared_model(model, method.device):
            responses = model(stimuli.to(method.device), **dict(forward_kwargs or {}))
        updated = reassign(responses.detach().cpu())
        history.append(updated)
        if updated == current:
            converged = True
            break
        if len(set(updated)) < 2:
            break  # everything merged into one cluster: nothing left to discriminate
        current = updated
    return MDSResult(optimized, stimuli, scores, history, converged)


def _with_population_response(model: nn.Module, method: MethodConfig) -> nn.Module:
    """``model`` with the config's ``response``: inside a unit-selecting wrapper (such as the
    ``ConstrainedOutputModel(model, units)`` of a set of neurons), else around ``model``."""
    spec = method.response
    assert spec is not None  # the caller checks
    if getattr(type(model), "inner_models", None):
        return cast(nn.Module, with_response(model, method))
    reduced: nn.Module = spec.build(model)
    return reduced


#: The ``"mds"`` entry of a config for :func:`mds`, with its defaults.
MDS_DEFAULTS: dict[str, Any] = {
    "n_clusters": 5,
    "init": "interleaved",
    "temperature": 1.0,
    "rounds": 10,
}
#: ``init``: how the ``n_clusters`` initial clusters are drawn.
MDS_INITS = ("interleaved", "random")


def mds_settings(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` split into its ``"mds"`` settings (checked, defaults filled in) and the
    rest, a method config as for :func:`~mei.methods.gradient_ascent`. Raises
    :class:`~mei.errors.ConfigError` naming the key."""
    settings = settings_entry(config, "mds", MDS_DEFAULTS)
    for name in ("n_clusters", "rounds"):
        value, least = settings[name], 2 if name == "n_clusters" else 1
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ConfigError(
                f"{name!r} must be an integer >= {least}, got {shorten(value)}", key="mds"
            )
        settings[name] = int(value)
    temperature = settings["temperature"]
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(float(temperature))
        or not float(temperature) > 0
    ):
        raise ConfigError(
            f"'temperature' must be a positive finite number, got {shorten(temperature)}",
            key="mds",
        )
    settings["temperature"] = float(temperature)
    if settings["init"] not in MDS_INITS:
        raise ConfigError(
            f"'init' must be one of {list_names(MDS_INITS)}, got {shorten(settings['init'])}",
            key="mds",
        )
    rest = {k: v for k, v in config.items() if k != "mds"}
    if rest.get("n_meis", 1) != 1:
        raise ConfigError("one stimulus per cluster: n_meis must be 1 (or left out)", key="n_meis")
    return settings, rest


def validate_mds_config(config: Mapping[str, Any], *, check_device: bool = True) -> None:
    """Raise :class:`~mei.errors.ConfigError` unless ``config`` is a config for :func:`mds`:
    a method config plus an optional ``"mds"`` entry (see :data:`MDS_DEFAULTS`)."""
    _, rest = mds_settings(config)
    resolve_config(rest, check_device=check_device)


def initial_labels(n_units: int, n_clusters: int, init: str, seed: int) -> list[int]:
    """The starting clusters of ``n_units`` units: ``"interleaved"`` gives unit ``n`` the
    cluster ``n % n_clusters`` (every cluster mixes units from all over the population);
    ``"random"`` draws each unit's cluster from a generator seeded with ``seed``."""
    if init == "interleaved":
        return [n % n_clusters for n in range(n_units)]
    generator = torch.Generator().manual_seed(int(seed))
    labels: list[int] = torch.randint(n_clusters, (n_units,), generator=generator).tolist()
    return labels


def mds(
    dataloaders: Dataloaders | None = None,
    model: nn.Module | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    *,
    shape: Sequence[int] | None = None,
) -> tuple[Tensor, float, dict[str, Any]]:
    """Most discriminative stimuli of the output units of ``model``, a method function.

    Called as the DataJoint tables call methods, ``mds(dataloaders, model, config, seed)``
    (``mei.main.MDSTemplate`` passes the model of a set of neurons,
    ``ConstrainedOutputModel(model, units)``), or ``mds(model=m, config=c, seed=s,
    shape=(1, C, H, W))``. ``model`` maps inputs ``(B, ...)`` to ``(B, N)``: the ``N`` units
    are clustered. ``config`` is a method config as for :func:`~mei.methods.gradient_ascent`
    (one MEI per element; a ``response`` entry reduces a video model's responses first) plus
    an ``"mds"`` entry: ``n_clusters`` initial clusters drawn by ``init`` (see
    :func:`initial_labels`), ``temperature`` of the contrast, at most ``rounds`` rounds of
    :func:`mds_clustering`, all stimuli starting from ``seed``. The input shape comes from
    ``shape``, the config's ``mei_shape``, or the dataloaders (as for gradient_ascent).

    Returns the stimuli ``(K, C, ...)`` (CPU; stimulus ``k`` for cluster ``k``), their mean
    objective as the score, and ``{"labels": [cluster of each unit], "scores": [objective of
    each stimulus], "history": [labels after each round, the initial ones first],
    "converged": bool}``.
    """
    if model is None or config is None or seed is None:
        missing = [
            n for n, v in (("model", model), ("config", config), ("seed", seed)) if v is None
        ]
        raise InputError(f"mds needs {', '.join(missing)}", argument=missing[0])
    seed = check_seed(seed)
    settings, rest = mds_settings(config)
    method = resolve_config(rest)
    if method.mei_shape is not None:
        shape = method.mei_shape
    if shape is None:
        if dataloaders is None:
            raise InputError("pass dataloaders or shape= to give the input shape", argument="shape")
        forward_kwargs = getattr(model, "forward_kwargs", None)
        data_key = forward_kwargs.get("data_key") if isinstance(forward_kwargs, Mapping) else None
        shape = get_input_shape(dataloaders, data_key if isinstance(data_key, str) else None)
    shape = (1, *[int(s) for s in shape][1:])
    reduced = model if method.response is None else _with_population_response(model, method)
    method = dataclasses.replace(method, response=None)
    with torch.no_grad(), prepared_model(reduced, method.device):
        probe = reduced(torch.zeros(shape, device=method.device))
    if not isinstance(probe, Tensor) or probe.dim() != 2 or probe.shape[1] < 2:
        got = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
        raise InputError(
            f"mds clusters the units of a model with outputs (B, N), N >= 2; got {got}",
            argument="model",
        )
    labels = initial_labels(probe.shape[1], settings["n_clusters"], settings["init"], seed)
    result = mds_clustering(
        reduced,
        labels,
        method,
        shape=shape,
        seed=seed,
        temperature=settings["temperature"],
        rounds=settings["rounds"],
    )
    if not result.scores:
        raise InputError(
            f"the {probe.shape[1]} units start in fewer than two clusters: nothing to "
            "discriminate (raise n_clusters)",
            argument="config",
        )
    output = {
        "labels": result.labels,
        "scores": result.scores,
        "history": result.history,
        "converged": result.converged,
    }
    return result.stimuli, sum(result.scores) / len(result.scores), output


mds.validate_config = validate_mds_config  # type: ignore[attr-defined]
