"""open-retina's model and recipes for the tests that compare mei with open-retina.

open-retina (PyPI ``openretina``) is installed as .ci/run installs it: ``pip install --no-deps
openretina==1.1.1`` and ``pip install -e '.[openretina]'`` (what its model and optimizer modules
import). Without it these tests skip with the reason, except where ``MEI_REQUIRE_OPENRETINA=1``
(.ci/run sets it for the environment it installs open-retina into): there they fail.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import partial
from types import ModuleType
from typing import Any

import pytest
import torch

#: The movie the model sees: (1, green/UV, frames, height, width); its output has 22 frames.
SHAPE = (1, 2, 30, 18, 16)
SESSION = "s1"
N_NEURONS = 12
#: Hoefling et al. (2024)'s green/UV ranges, as in open-retina's MEI notebook
RANGES = [(-0.654, 6.269), (-0.913, 6.269)]


def openretina(module: str) -> ModuleType:
    """``openretina.<module>``, or a skip naming why (a failure where it is required)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(f"openretina.{module}")
    except ImportError as e:
        if os.environ.get("MEI_REQUIRE_OPENRETINA") == "1":
            raise
        pytest.skip(
            f"open-retina does not import ({e}); pip install -e '.[openretina]' && "
            "pip install --no-deps openretina==1.1.1"
        )


def model(seed: int = 1) -> torch.nn.Module:
    """open-retina's core-readout model (``ExampleCoreReadout``: a space-time separable conv
    core, a Gaussian-mask readout of ``N_NEURONS`` neurons in one session) with random
    weights large enough that the responses depend on the stimulus; in eval mode."""
    core_readout = openretina("models.core_readout")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that it is an example class
        built = core_readout.ExampleCoreReadout(
            in_shape=SHAPE[1:],
            hidden_channels=(4, 4),
            temporal_kernel_sizes=(5, 3),
            spatial_kernel_sizes=(5, 3),
            n_neurons_dict={SESSION: N_NEURONS},
            cut_first_n_frames_in_core=4,
            data_info={"input_shape": (SHAPE[1], *SHAPE[3:])},
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in built.named_parameters():
            if name.endswith(("sin_weights", "cos_weights", "weight_spatial")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            elif name.endswith("mask_mean"):  # the neurons' positions
                p.copy_(torch.rand(p.shape, generator=generator) * 1.2 - 0.6)
            elif name.endswith("features"):
                p.copy_(torch.randn(p.shape, generator=generator))
    return built.eval()


def clip_entry(norm: float = 5.0, ranges: Any = RANGES) -> dict[str, Any]:
    """mei's ``ChannelNormClip`` with open-retina's ``ChangeNormJointlyClipRangeSeparately``
    settings."""
    return {
        "path": "mei.postprocessing.ChannelNormClip",
        "kwargs": {
            "norm": norm,
            "x_min": [low for low, _ in ranges],
            "x_max": [high for _, high in ranges],
        },
    }


#: open-retina's MEI notebook (mei_example.ipynb) as a method config: a start of std 0.1,
#: clipped; SGD lr 10; 10 steps, each followed by the clip; the mean response over output
#: frames [10, 20) (its SliceMeanReducer(axis=0, start=10, length=10)).
MEI_CONFIG: dict[str, Any] = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal", "kwargs": {"std": 0.1}},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 10.0}},
    "stopper": {"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 10}},
    "postprocessing": clip_entry(),
    "postprocess_start": True,
    "response": {"path": "mei.modules.TimeWindowResponse", "kwargs": {"start": 10, "stop": 20}},
}

MDS_RANGES = [(-0.6, 6.2), (-0.9, 6.2)]
#: open-retina's MDS notebook (most_discriminative_stimulus.ipynb): norm 30, the start
#: clipped only, then each step clipped and low-passed in time (sigma 0.5, 5 frames, zero
#: padding); SGD lr 100; 10 steps; temperature 1.6 (the model: mei.modules.ClusterContrast).
MDS_CONFIG: dict[str, Any] = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal", "kwargs": {"std": 0.1}},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 100.0}},
    "stopper": {"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 10}},
    "postprocessing": {
        "path": "mei.transforms.Compose",
        "kwargs": {
            "transforms": [
                clip_entry(30.0, MDS_RANGES),
                {
                    "path": "mei.preconditioning.TemporalBlur",
                    "kwargs": {"sigma": 0.5, "kernel_size": 5, "pad_mode": "constant"},
                },
            ]
        },
    },
    "postprocess_start": clip_entry(30.0, MDS_RANGES),
    "response": {"path": "mei.modules.TimeWindowResponse", "kwargs": {"start": 10, "stop": 20}},
}
#: three groups of the model's neurons: the target group first
CLUSTERS = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10, 11]]


def optimize_stimulus(
    objective: Any,
    seed: int,
    lr: float,
    steps: int | None,
    postprocessors: list[Any],
    start_postprocessor: Any,
    stopper: Any = None,
    regularization: Any = None,
) -> torch.Tensor:
    """open-retina's recipe with its own optimizer: ``torch.manual_seed(seed)``, a start of
    ``0.1 * randn``, ``start_postprocessor.process``, ``optimize_stimulus`` with SGD."""
    optimizer = openretina("insilico.stimulus_optimization.optimizer")
    stopping = openretina("insilico.stimulus_optimization.optimization_stopper")
    torch.manual_seed(seed)
    stimulus = torch.randn(SHAPE, requires_grad=True)
    stimulus.data = start_postprocessor.process(stimulus.data * 0.1)
    optimizer.optimize_stimulus(
        stimulus,
        partial(torch.optim.SGD, lr=lr),
        objective,
        stopper if stopper is not None else stopping.OptimizationStopper(max_iterations=steps),
        stimulus_regularization_loss=regularization,
        stimulus_postprocessor=postprocessors,
    )
    return stimulus.detach()
