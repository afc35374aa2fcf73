"""mei's DataJoint tables: templates for your schema and two ready tables.

The tables are defined in :mod:`mei.dj.templates`; this module is where the original library
kept them, and stays their public address. Importing it connects to nothing.
"""

from .dj.templates import (
    CSRFV1ObjectiveTemplate,
    CSRFV1SelectorTemplate,
    ExcitingVariantsTemplate,
    MDSTemplate,
    MEIMethod,
    MEISeed,
    MEITemplate,
    MEIValidationTemplate,
    NeuronSetTemplate,
    TrainedEnsembleModelTemplate,
    activate,
    schema,
)

__all__ = [
    "CSRFV1ObjectiveTemplate",
    "CSRFV1SelectorTemplate",
    "ExcitingVariantsTemplate",
    "MDSTemplate",
    "MEIMethod",
    "MEISeed",
    "MEITemplate",
    "MEIValidationTemplate",
    "NeuronSetTemplate",
    "TrainedEnsembleModelTemplate",
    "activate",
    "schema",
]
