"""mei: most exciting inputs of neurons in PyTorch models.

The engine (this package minus :mod:`mei.main`) needs only PyTorch. The DataJoint tables live
in :mod:`mei.main` and are imported only when asked for.
"""

from .errors import ComponentError, ConfigError, MEIError, ModelError, NonFiniteError
from .methods import gradient_ascent, gradient_ascent_units

__version__ = "0.2.0"

__all__ = [
    "ComponentError",
    "ConfigError",
    "MEIError",
    "ModelError",
    "NonFiniteError",
    "gradient_ascent",
    "gradient_ascent_units",
]
