"""Most discriminative stimuli (Burg et al., ICLR 2024): cluster units by the stimuli that
tell their clusters apart.

:func:`mds_clustering` alternates two steps from an initial clustering (e.g. k-means on the
units' readout weights, or any labels): optimize one most discriminative stimulus (MDS) per
cluster with :class:`~mei.modules.ClusterContrast`, all clusters in one batched run; then
give each unit the cluster whose MDS drives it most (:func:`reassign`). Clusters that no unit
chooses disappear (merge) and the loop ends when no unit changes cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .config import resolve_config
from .methods import run_batch
from .modules import ClusterContrast


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
    config: Mapping[str, Any],
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
    ``seed``. At most ``rounds`` rounds of optimizing and reassigning."""
    method = resolve_config(config)
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
        with torch.no_grad():
            device = method.device
            responses = model.to(device)(stimuli.to(device), **dict(forward_kwargs or {}))
        updated = reassign(responses.detach().cpu())
        history.append(updated)
        if updated == current:
            converged = True
            break
        if len(set(updated)) < 2:
            break  # everything merged into one cluster: nothing left to discriminate
        current = updated
    return MDSResult(optimized, stimuli, scores, history, converged)
