"""The logic of mei's tables, as mixins (public address kept from the original library).

Defined in :mod:`mei.dj.tables` (the mixins) and :mod:`mei.dj.run` (running a key).
"""

from .dj.run import (
    KEYED_COMPONENTS,
    METHOD_FN_MAX_LENGTH,
    check_result,
    run_method,
    validate_method,
)
from .dj.tables import (
    CSRFV1ObjectiveTemplateMixin,
    ExcitingVariantsTemplateMixin,
    MDSTemplateMixin,
    MEIMethodMixin,
    MEISeedMixin,
    MEITemplateMixin,
    NeuronSetTemplateMixin,
    RequiredLink,
    TrainedEnsembleModelTemplateMixin,
)

CSRFV1SelectorTemplateMixin = CSRFV1ObjectiveTemplateMixin
"""The mixin's name in sinzlab/mei before June 2020."""

__all__ = [
    "CSRFV1ObjectiveTemplateMixin",
    "CSRFV1SelectorTemplateMixin",
    "ExcitingVariantsTemplateMixin",
    "KEYED_COMPONENTS",
    "METHOD_FN_MAX_LENGTH",
    "MDSTemplateMixin",
    "MEIMethodMixin",
    "MEISeedMixin",
    "MEITemplateMixin",
    "NeuronSetTemplateMixin",
    "RequiredLink",
    "TrainedEnsembleModelTemplateMixin",
    "check_result",
    "run_method",
    "validate_method",
]
