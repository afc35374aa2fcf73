"""The original library's legacy model wrappers: an ensemble average and pretrained VGG-19s.

torchvision is imported only when a VGG-19 is made.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class Ensemble:
    """The response averaged over ``models`` (copies of them, in eval mode on ``device``).

    Each model is called as ``model(x, readout_key, eye_pos=eye_pos, behavior=behavior)``
    and its output restricted to ``neuron_idx``. ``average_batch``: also average over the
    images of the batch (output: one value per neuron); otherwise one row per image.
    ``eye_pos`` (1 x 2) and ``behavior`` (1 x 3) are moved to ``device``. The copies are in
    ``.models``, so the originals' gradients are left alone.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        readout_key: Any,
        eye_pos: Tensor | None = None,
        behavior: Tensor | None = None,
        neuron_idx: Any = slice(None),
        average_batch: bool = True,
        device: str | torch.device = "cuda",
    ):
        self.models = [copy.deepcopy(m) for m in models]
        self.readout_key = readout_key
        self.eye_pos = None if eye_pos is None else eye_pos.to(device)
        self.behavior = None if behavior is None else behavior.to(device)
        self.neuron_idx = neuron_idx
        self.average_batch = average_batch
        self.device = device
        for m in self.models:
            m.to(device)
            m.eval()

    def __call__(self, x: Tensor) -> Tensor:
        responses = torch.stack(
            [
                m(x, self.readout_key, eye_pos=self.eye_pos, behavior=self.behavior)[
                    :, self.neuron_idx
                ]
                for m in self.models
            ]
        )  # models x images x neurons
        return responses.mean(0).mean(0) if self.average_batch else responses.mean(0)


def _vgg19_features(use_batchnorm: bool) -> nn.Sequential:
    try:
        from torchvision import models
    except ImportError as e:
        raise ImportError(
            f"the VGG-19 models need torchvision: pip install torchvision ({e})"
        ) from e
    # ImageNet weights, as the original's ``pretrained=True``
    if use_batchnorm:
        features: nn.Sequential = models.vgg19_bn(weights="IMAGENET1K_V1").features
    else:
        features = models.vgg19(weights="IMAGENET1K_V1").features
    return features


class VGG19Core:
    """A pretrained VGG-19 (ImageNet weights; with batch norm if ``use_batchnorm``) cut after
    its feature layer ``layer`` (0-based), in eval mode on ``device``: maps images to that
    layer's (N, C, H, W) features."""

    def __init__(self, layer: int, use_batchnorm: bool = True, device: str | torch.device = "cuda"):
        features = _vgg19_features(use_batchnorm)
        if not 0 <= layer < len(features):
            raise ValueError(f"layer out of range: {layer!r} (VGG-19 has {len(features)} layers)")
        self.model = features[: layer + 1]
        self.model.to(device)
        self.model.eval()

    def __call__(self, x: Tensor, **ignored: Any) -> Tensor:
        out: Tensor = self.model(x)
        return out


class VGG19:
    """The mean over the batch and space of channel ``channel`` of :class:`VGG19Core`'s
    features at ``layer``: a scalar to maximize."""

    def __init__(
        self,
        layer: int,
        channel: int,
        use_batchnorm: bool = True,
        device: str | torch.device = "cuda",
    ):
        self.model = VGG19Core(layer, use_batchnorm, device)
        self.channel = channel

    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x)[:, self.channel, :, :].mean()
