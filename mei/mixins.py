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
    MEIMethodMixin,
    MEISeedMixin,
    MEITemplateMixin,
    RequiredLink,
    TrainedEnsembleModelTemplateMixin,
)

__all__ = [
    "KEYED_COMPONENTS",
    "METHOD_FN_MAX_LENGTH",
    "MEIMethodMixin",
    "MEISeedMixin",
    "MEITemplateMixin",
    "RequiredLink",
    "TrainedEnsembleModelTemplateMixin",
    "check_result",
    "run_method",
    "validate_method",
]
