"""Initial guesses: where the optimization starts.

An initial guess is called as ``initial(*shape, generator=g)`` and returns a CPU tensor of that
shape. The engine draws every MEI's start on the CPU from a generator seeded with the run's
seed, then moves it to the device: a seed gives the same start on any device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class InitialGuessCreator(ABC):
    """Base class of initial guesses (the original library's name)."""

    @abstractmethod
    def __call__(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        """Return a starting input of ``shape``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__qualname__}({args})"


class RandomNormal(InitialGuessCreator):
    """Standard normal noise, optionally scaled: ``mean + std * N(0, 1)``."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.mean = mean
        self.std = std

    def __call__(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(*shape, generator=generator) * self.std + self.mean


class RandomNormalNullChannel(RandomNormal):
    """Normal noise with one channel (dimension 1) set to ``null_value``."""

    def __init__(self, null_channel: int, null_value: float = 0.0):
        super().__init__()
        self.null_channel = null_channel
        self.null_value = null_value

    def __call__(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        if len(shape) < 2 or not -shape[1] <= self.null_channel < shape[1]:
            raise ValueError(
                f"null_channel {self.null_channel} does not exist in an input of shape {shape}"
            )
        initial = super().__call__(*shape, generator=generator)
        initial[:, self.null_channel, ...] = self.null_value
        return initial

    def __repr__(self) -> str:
        return (
            f"RandomNormalNullChannel(null_channel={self.null_channel!r}, "
            f"null_value={self.null_value!r})"
        )


class RandomUniform(InitialGuessCreator):
    """Uniform noise in ``[low, high)``."""

    def __init__(self, low: float = -1.0, high: float = 1.0):
        if not high > low:
            raise ValueError(f"high must be greater than low, got low={low!r}, high={high!r}")
        self.low = low
        self.high = high

    def __call__(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.rand(*shape, generator=generator) * (self.high - self.low) + self.low


class FromTensor(InitialGuessCreator):
    """Start from a given tensor (e.g. a stored MEI), broadcast to the requested shape."""

    def __init__(self, tensor: Any):  # anything torch.as_tensor takes
        self.tensor = torch.as_tensor(tensor).detach().clone().float()

    def __call__(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        try:
            return self.tensor.to("cpu").expand(*shape).clone()
        except RuntimeError:
            raise ValueError(
                f"the initial tensor of shape {tuple(self.tensor.shape)} does not fit the "
                f"input shape {tuple(shape)}"
            ) from None

    def __repr__(self) -> str:
        return f"FromTensor(tensor=<{tuple(self.tensor.shape)} tensor>)"


class FromFile(FromTensor):
    """Start from a tensor saved with ``torch.save`` at ``path`` (e.g. a fetched MEI file)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"initial guess file {str(path)!r} does not exist")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, Tensor):
            raise ValueError(f"{str(path)!r} holds a {type(loaded).__name__}, not a tensor")
        super().__init__(loaded)
        self.path = str(path)

    def __repr__(self) -> str:
        return f"FromFile(path={self.path!r})"
