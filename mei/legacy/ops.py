"""The original library's ``mei.legacy.ops`` names, resolved to this library's implementations.

Method configs stored in lab databases name components such as ``mei.legacy.ops.GaussianBlur``;
they take the same keyword arguments as before. The original's bugs are fixed here:
TotalVariation compares true neighbours, FourierSmoothing uses ``torch.fft``, GaussianBlur no
longer needs scipy, and every operation acts on each batch element separately.
Importing this module imports nothing beyond torch and numpy.
"""

from ..postprocessing import ChangeNorm, ChangeStd, ClipRange
from ..preconditioning import DivideByMeanOfAbsolute, FourierSmoothing, GaussianBlur, MultiplyBy
from ..regularization import LpNorm, TotalVariation
from ..transforms import ChangeRange, GrayscaleToRGB, Identity, Jitter, RandomCrop, Resize

__all__ = [
    "ChangeNorm",
    "ChangeRange",
    "ChangeStd",
    "ClipRange",
    "DivideByMeanOfAbsolute",
    "FourierSmoothing",
    "GaussianBlur",
    "GrayscaleToRGB",
    "Identity",
    "Jitter",
    "LpNorm",
    "MultiplyBy",
    "RandomCrop",
    "Resize",
    "TotalVariation",
]
