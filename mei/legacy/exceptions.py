"""Errors of the original library's ``mei.legacy`` package, plus two for its re-implementation."""

from __future__ import annotations


class FeatureVisException(Exception):
    """Raised by the legacy feature-visualization code when an optimization cannot go on
    (e.g. no gradient reached the input in :func:`mei.legacy.core.gradient_ascent`)."""


class NotElementwise(FeatureVisException, NotImplementedError):
    """A legacy op was asked to act on each batch row separately (``for_elements`` with one
    generator per row) but its result couples the rows of a batch (e.g. ``Similarity``,
    ``BatchedCrops``). Such ops have ``per_row = False``; run those MEIs one at a time."""


class MissingMaskSource(FeatureVisException, ValueError):
    """A masked blur (``GaussianBlurforRing``/``Center``/``Surround``) was given neither its
    mask nor a table to read the mask from."""
