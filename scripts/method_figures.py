"""Draw one figure per method of the "Newer methods" page (docs/methods.md) into docs/images/

    python scripts/method_figures.py [OUT_DIR]

Runs on the CPU in about a minute, on the small models with known answers from the engine
tests (tests/engine/models.py): a separable space-time neuron (video MEI as a frame strip and
a GIF), UV/green constraints, Fourier vs pixel parameterization, diverse MEIs of a neuron with
two preferred stimuli, and the most discriminative stimuli of two cell types.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from models import (  # noqa: E402  (the test models live next to the tests)
    GaborNeuron,
    SeparableVideoNeurons,
    TwoCellTypes,
    TwoStimulusNeuron,
    base_config,
    gabor,
)

from mei.clustering import mds_clustering  # noqa: E402
from mei.methods import gradient_ascent  # noqa: E402
from mei.modules import ConstrainedOutputModel, TimeWindowResponse  # noqa: E402
from mei.plot import plot_frames, plot_meis, save_gif  # noqa: E402


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _sgd(lr: float, steps: int, norm: float, **extra: object) -> dict:
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": lr}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": steps}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": norm}},
    )
    config.update(extra)
    return config


def video(out: Path) -> None:
    neurons = SeparableVideoNeurons(frames=8, size=15, thetas=(0.6, 2.2))
    model = TimeWindowResponse(neurons, start=-1)
    config = _sgd(
        1.0,
        100,
        10.0,
        precondition={"path": "mei.preconditioning.TemporalBlur", "kwargs": {"sigma": 0.5}},
    )
    meis = [
        gradient_ascent(None, ConstrainedOutputModel(model, u), config, u, shape=(1, 1, 8, 15, 15))
        for u in (0, 1)
    ]
    movies = torch.cat([m for m, _, _ in meis] + [neurons.kernels[u : u + 1] for u in (0, 1)])
    plot_frames(
        movies,
        suptitle="video MEIs (rows 1-2) and the neurons' space-time filters (rows 3-4)",
        path=out / "video-meis.png",
    )
    save_gif(movies[:2], out / "video-meis.gif", fps=4)


def channels(out: Path) -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(1, 2, 12, 12, generator=g) * 0.05
    weight[0, 0, 4:8, 4:8] += 1.0
    weight[0, 1, 2:5, 6:10] -= 1.0

    class UVGreen(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) @ weight.flatten(1).T

    clip = {
        "path": "mei.postprocessing.ChannelNormClip",
        "kwargs": {"norm": 5.0, "x_min": [-0.654, -0.913], "x_max": [6.269, 6.269]},
    }
    mei, score, _ = gradient_ascent(
        None, UVGreen(), _sgd(0.5, 50, 5.0, postprocessing=clip), 0, shape=(1, 2, 12, 12)
    )
    plot_meis(
        mei,
        scores=[score],
        suptitle="UV/green MEI, norm 5, green [-0.654, 6.269], UV [-0.913, 6.269]",
        path=out / "channel-norm-clip.png",
    )


def fourier(out: Path) -> None:
    fourier = {"path": "mei.parameterization.Fourier", "kwargs": {"fixed_norm": True}}
    images, titles = [], []
    for steps in (5, 20):
        for name, parameterization in (("pixel", None), ("Fourier", fourier)):
            extra = {} if parameterization is None else {"parameterization": parameterization}
            mei, _, _ = gradient_ascent(
                None, GaborNeuron(), _sgd(0.1, steps - 1, 10.0, **extra), 0, shape=(1, 1, 21, 21)
            )
            images.append(mei)
            titles.append(f"{name}, {steps} steps, cos {_cos(mei, gabor()):.2f}")
    plot_meis(
        torch.cat(images),
        titles=titles,
        ncols=2,
        suptitle="Gabor neuron, SGD lr 0.1",
        path=out / "fourier-vs-pixel.png",
    )


def diverse(out: Path) -> None:
    neuron = TwoStimulusNeuron()
    model = ConstrainedOutputModel(neuron, 0, target_fn=torch.mean)
    plain = _sgd(1.0, 200, 5.0, n_meis=2)
    diverse = dict(
        plain, regularization={"path": "mei.regularization.Diversity", "kwargs": {"weight": 2.0}}
    )
    meis = [gradient_ascent(None, model, c, 0, shape=(1, 1, 15, 15))[0] for c in (plain, diverse)]
    plot_meis(
        torch.cat(meis),
        titles=["n_meis=2 #0", "n_meis=2 #1", "+ Diversity #0", "+ Diversity #1"],
        ncols=4,
        suptitle="a neuron with two preferred stimuli",
        path=out / "diverse-meis.png",
    )


def mds(out: Path) -> None:
    model = TwoCellTypes()
    initial = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    result = mds_clustering(
        model, initial, _sgd(2.0, 100, 5.0), shape=(1, 1, 15, 15), temperature=1.0
    )
    plot_meis(
        torch.cat([result.stimuli, model.filters]),
        titles=[f"MDS of cluster {k}" for k in range(len(result.stimuli))]
        + ["type 0 filter", "type 1 filter"],
        ncols=len(result.stimuli),
        suptitle=f"MDS: 5 clusters -> {len(set(result.labels))}",
        path=out / "mds.png",
    )


def open_retina(out: Path) -> None:
    """open-retina's MEI recipe (docs/open-retina.md) on its core-readout model with random
    weights (tests/openretina_testkit.py): two neurons' MEIs, green and UV over time at the
    pixel that moves most, and both channels' frames at the peak frame."""
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(ROOT / "tests"))
    import openretina_testkit as ort

    try:
        model = ort.model()
    except BaseException as e:  # pytest's skip when open-retina is not installed
        print(f"open_retina: skipped, open-retina does not import ({e})")
        return
    config = {
        **ort.MEI_CONFIG,
        "stopper": {"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 50}},
    }
    figure, axes = plt.subplots(2, 3, figsize=(10, 5.5), width_ratios=(2, 1, 1))
    colors = {0: ("green", "tab:green"), 1: ("UV", "tab:purple")}
    for row, neuron in zip(axes, (5, 9), strict=True):
        selected = ConstrainedOutputModel(model, neuron, forward_kwargs={"data_key": ort.SESSION})
        mei = gradient_ascent(None, selected, config, 3, shape=ort.SHAPE)[0][0]  # (2, T, H, W)
        energy = (mei - mei.mean(1, keepdim=True)).abs().sum((0, 1))
        y, x = divmod(int(energy.argmax()), mei.shape[-1])
        peak = int(mei[:, :, y, x].abs().sum(0).argmax())
        for c, (name, color) in colors.items():
            row[0].plot(mei[c, :, y, x].numpy(), color=color, label=name)
        row[0].axvline(peak, color="gray", linestyle=":")
        row[0].set(title=f"neuron {neuron}: pixel ({y}, {x}) over time", xlabel="frame")
        row[0].legend(loc="upper left", fontsize=8)
        bound = float(mei[:, peak].abs().max())
        for c, (name, _) in colors.items():
            row[1 + c].imshow(mei[c, peak].numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
            row[1 + c].set(title=f"{name}, frame {peak}", xticks=[], yticks=[])
    figure.suptitle("open-retina's MEI recipe as a method config, on its core-readout model")
    figure.tight_layout()
    figure.savefig(out / "open-retina-meis.png", dpi=80)
    plt.close(figure)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    for draw in (video, channels, fourier, diverse, mds, open_retina):
        draw(out)
        print(f"{draw.__name__}: done")


if __name__ == "__main__":
    main()
