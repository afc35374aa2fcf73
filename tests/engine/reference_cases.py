"""Cases whose results sinzlab/mei computed, recorded by ``scripts/record_reference.py``.

Pure torch: this module is imported both by the recording script (with the original library
as ``mei``) and by ``test_reference_numbers.py`` (with this library). Each case is a model,
fixed dataloaders, a method config and seeds; the original's results are stored in
``tests/engine/reference/<case>.pt``.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

Batch = namedtuple("Batch", ["inputs", "targets"])

#: Two sessions with images of different sizes, as a lab with two scans has.
SESSIONS = {"session-a": (1, 16, 16), "session-b": (1, 12, 20)}
N_UNITS = 4
STEPS = 100


class Images(Dataset):
    def __init__(self, shape: tuple[int, ...], n: int = 8):
        generator = torch.Generator().manual_seed(sum(shape))
        self.inputs = torch.randn(n, *shape, generator=generator)
        self.targets = torch.rand(n, N_UNITS, generator=generator)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Batch:
        return Batch(self.inputs[i], self.targets[i])


def dataloaders() -> dict[str, dict[str, DataLoader]]:
    """NNFabrik-style loaders; shuffling ones draw from torch's global generator when read."""
    return {
        tier: {
            key: DataLoader(Images(shape), batch_size=4, shuffle=tier == "train")
            for key, shape in SESSIONS.items()
        }
        for tier in ("train", "validation", "test")
    }


class TwoSessionNet(nn.Module):
    """A conv core shared by the sessions and one linear readout per session."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1234)
        self.core = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ELU(), nn.Conv2d(6, 6, 3, padding=1), nn.ELU()
        )
        self.readouts = nn.ModuleDict(
            {
                key.replace("-", "_"): nn.Linear(6 * shape[1] * shape[2], N_UNITS)
                for key, shape in SESSIONS.items()
            }
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor, data_key: str = "session-a", **kwargs: Any) -> torch.Tensor:
        features = self.core(x).flatten(1)
        return nn.functional.elu(self.readouts[data_key.replace("-", "_")](features)) + 1


def mean_of_units(responses: torch.Tensor) -> torch.Tensor:
    """A target function that reduces the selected responses to one number."""
    return responses.mean()


def _base(**entries: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device": "cpu",
        "initial": {"path": "mei.initial.RandomNormal", "kwargs": {}},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
        "objectives": [
            {"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}},
            {"path": "mei.objectives.PostProcessedInputObjective", "kwargs": {"interval": 50}},
        ],
    }
    config.update(entries)
    return config


_BLUR = {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1.0}}
_NORM = {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 8.0}}

#: name -> (config, selection, seeds); selection: (data_key, unit(s), target_fn or None).
CASES: dict[str, tuple[dict[str, Any], tuple[str, Any, Any], list[int]]] = {
    "blur_norm": (
        _base(precondition=_BLUR, postprocessing=_NORM),
        ("session-a", 1, None),
        [0, 7],
    ),
    "jitter_blur_clip": (
        _base(
            optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.05}},
            transform={"path": "mei.legacy.ops.Jitter", "kwargs": {"max_jitter": 2}},
            precondition=_BLUR,
            postprocessing={
                "path": "mei.legacy.ops.ClipRange",
                "kwargs": {"x_min": -1, "x_max": 1},
            },
        ),
        ("session-a", 2, None),
        [3],
    ),
    "second_session": (
        _base(precondition=_BLUR, postprocessing=_NORM),
        ("session-b", 0, None),
        [11],
    ),
    "reducing_target_fn": (
        _base(postprocessing=_NORM),
        ("session-a", [0, 3], mean_of_units),
        [5],
    ),
    "n_meis": (
        _base(
            n_meis=3,
            precondition=_BLUR,
            postprocessing={"path": "mei.legacy.ops.ChangeStd", "kwargs": {"std": 0.5}},
        ),
        ("session-a", [1, 2], mean_of_units),
        [2],
    ),
    "inhibitory_mei_shape": (
        _base(inhibitory=True, mei_shape=[1, 1, 16, 16], postprocessing=_NORM),
        ("session-a", 3, None),
        [4],
    ),
    "transparency": (
        _base(
            transparency=True,
            transparency_weight=0.5,
            background={
                "path": "mei.legacy.ops.WhiteNoiseBackground",
                "kwargs": {"mean": 0.0, "std": 1.0, "shape": [16, 16]},
            },
            regularization={"path": "mei.legacy.ops.RegTransparency", "kwargs": {"weight": 0.1}},
            precondition={
                "path": "mei.legacy.ops.GaussianBlur",
                "kwargs": {"sigma": 1.0, "mei_only": True},
            },
            postprocessing={
                "path": "mei.legacy.ops.ClipRange",
                "kwargs": {"x_min": -2, "x_max": 2},
            },
        ),
        ("session-a", 0, None),
        [1],
    ),
    # only in sinzlab/mei after 51f2d13 (mei.postprocessing), called as
    # gradient_ascent(model, config, seed, shape=...)
    "pnorm_clip_keyword_call": (
        _base(
            postprocessing={
                "path": "mei.postprocessing.PNormConstraintAndClip",
                "kwargs": {
                    "norm_value": 12.0,
                    "p": 2,
                    "max_pixel_value": 1.0,
                    "min_pixel_value": -1.0,
                },
            },
        ),
        ("session-a", 1, None),
        [6],
    ),
}

#: Cases run with the keyword call and ``shape=`` instead of dataloaders.
KEYWORD_CASES = {"pnorm_clip_keyword_call"}
SHAPE = (1, 1, 16, 16)


def selected_model(constrained_output_model: Any, net: nn.Module, case: str) -> nn.Module:
    """``net``'s selection for ``case`` wrapped with the given ``ConstrainedOutputModel``
    class (the original's or this library's)."""
    data_key, units, target_fn = CASES[case][1]
    return constrained_output_model(
        net, units, target_fn=target_fn, forward_kwargs={"data_key": data_key}
    )
