"""Draw one figure per method of the "Newer methods" page (docs/methods.md) into docs/images/

    python scripts/method_figures.py [OUT_DIR]

Runs on the CPU in about a minute, on the small models with known answers from the engine
tests (tests/engine/models.py): a separable space-time neuron (video MEI as a frame strip and
a GIF), UV/green constraints, Fourier vs pixel parameterization, diverse MEIs of a neuron with
two preferred stimuli, the most discriminative stimuli of two cell types, MEIs validated on
other models and against the best natural images of a dataset (docs/validation.md), the
exciting variants of a complex and a simple cell (docs/variants.md), the channels of a toy
conv net's inner layers, MaCo (phase-only Fourier) with its attribution map, and open-retina's
MEI recipe on its core-readout model (docs/open-retina.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from models import (  # noqa: E402  (the test models live next to the tests)
    GaborNeuron,
    PhaseCells,
    PlacedGabor,
    SeparableVideoNeurons,
    ToyConvNet,
    TwoCellTypes,
    TwoStimulusNeuron,
    base_config,
    gabor,
)

from mei.clustering import mds_clustering  # noqa: E402
from mei.methods import gradient_ascent  # noqa: E402
from mei.modules import ConstrainedOutputModel, LayerResponse, TimeWindowResponse  # noqa: E402
from mei.plot import plot_frames, plot_meis, plot_validation, save_gif  # noqa: E402
from mei.validation import read_images, validate_meis  # noqa: E402
from mei.variants import exciting_variants_units  # noqa: E402


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


def validation(out: Path) -> None:
    # three models of the same 12 neurons: the one the MEIs are made on, another seed (other
    # weight noise), and one whose weights are blurred (another architecture, say)
    models = {"made on": TwoCellTypes(seed=0), "seed 1": TwoCellTypes(seed=1)}
    blurred = TwoCellTypes(seed=0)
    blurred.weights = torch.nn.functional.avg_pool2d(
        blurred.weights.reshape(-1, 1, 15, 15), 3, stride=1, padding=1
    ).flatten(1)
    models["blurred"] = blurred
    # "natural" images: 2000 smooth noise images (white noise blurred), unit pixel variance
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2000, 1, 15, 15, generator=g)
    images = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1) * 3.0
    loaders = {"train": {"all": DataLoader(TensorDataset(images), batch_size=256)}}
    norm = float(images.flatten(1).norm(dim=1).mean())  # MEIs as strong as a typical image
    units = [0, 3, 6, 9]
    made_on = models["made on"]
    meis = torch.cat(
        [
            gradient_ascent(
                None, ConstrainedOutputModel(made_on, u), _sgd(1.0, 100, norm), u,
                shape=(1, 1, 15, 15),
            )[0]
            for u in units
        ]
    )  # fmt: skip
    result = validate_meis(models, meis, units, loaders, k=4)
    plot_validation(
        result,
        read_images(loaders, result.natural_indices[0]),
        suptitle="MEIs, best natural images, responses on three models",
        path=out / "validation.png",
    )


def variants(out: Path) -> None:
    """The MEI and 8 exciting variants at 85% of its response, of a phase-invariant complex
    cell (top) and a simple cell on the same Gabor (bottom), each titled with its response."""
    cells = PhaseCells()
    meis = [
        gradient_ascent(
            None, ConstrainedOutputModel(cells, u), _sgd(1.0, 50, 5.0), 0, shape=(1, 1, 15, 15)
        )[0]
        for u in (0, 1)
    ]
    config = _sgd(3.0, 300, 5.0, variants={"n_variants": 8, "fraction": 0.85, "weight": 30.0})
    config["precondition"] = {"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.5}}
    results = exciting_variants_units(None, cells, config, 1, [0, 1], meis=meis)
    images, titles = [], []
    for name, mei, (found, _, output) in zip(("complex", "simple"), meis, results, strict=True):
        images += [mei, found]
        titles.append(f"{name} MEI\nr={output['reference']:.2f}")
        titles += [
            f"r={r:.2f} ({f:.0%})"
            for r, f in zip(output["responses"], output["fractions"], strict=True)
        ]
    indices = [f"{index:.2f}" for _, index, _ in results]
    plot_meis(
        torch.cat(images),
        titles=titles,
        ncols=9,
        suptitle=f"exciting variants at 85%: diversity index {indices[0]} (complex cell, top), "
        f"{indices[1]} (simple cell, bottom)",
        path=out / "exciting-variants.png",
    )


def inner_units(out: Path) -> None:
    net = ToyConvNet()
    config = _sgd(1.0, 60, 5.0)
    rows = []
    for layer, position in (("core.features.0", "center"), ("core.features.2", "mean")):
        model = LayerResponse(net, layer, position)
        rows += [
            gradient_ascent(None, ConstrainedOutputModel(model, k), config, k, shape=(1, 1, 15, 15))
            for k in range(4)
        ]
    filters = torch.zeros(4, 1, 15, 15)
    filters[:, 0, 4:11, 4:11] = net.core.features[0].weight[:, 0].detach()
    titles = [f"conv1 #{k} centre, cos {_cos(rows[k][0], filters[k]):.2f}" for k in range(4)]
    titles += [f"conv2 #{k} mean" for k in range(4)]
    titles += [f"conv1 #{k} filter" for k in range(4)]
    plot_meis(
        torch.cat([m for m, _, _ in rows] + [filters]),
        titles=titles,
        ncols=4,
        suptitle="inner units of a toy conv net (LayerResponse)",
        path=out / "inner-units.png",
    )


def maco(out: Path) -> None:
    neuron = PlacedGabor(top=2, left=9)
    model = ConstrainedOutputModel(neuron, 0)
    shape = (1, 1, 32, 32)
    sgd = _sgd(0.1, 150, 32.0)
    fourier = {"path": "mei.parameterization.Fourier", "kwargs": {"fixed_norm": True}}
    pixel_mei = gradient_ascent(None, model, sgd, 0, shape=shape)[0]
    fourier_mei = gradient_ascent(None, model, dict(sgd, parameterization=fourier), 0, shape=shape)[
        0
    ]
    # MaCo: Adam on the phases (as its authors' code), no postprocessing: the magnitude
    # spectrum (1/f, pixel standard deviation 1: norm 32) is fixed
    maco_config = base_config(
        optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.1}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 150}},
        parameterization={"path": "mei.parameterization.PhaseFourier", "kwargs": {}},
    )
    del maco_config["postprocessing"]
    maco_mei, _, output = gradient_ascent(None, model, maco_config, 0, shape=shape)
    attribution = output["attribution"]["values"][0]
    images = [pixel_mei, fourier_mei, maco_mei, attribution, neuron.weight]
    titles = [
        f"pixels, cos {_cos(pixel_mei, neuron.weight):.2f}",
        f"Fourier, cos {_cos(fourier_mei, neuron.weight):.2f}",
        f"MaCo, cos {_cos(maco_mei, neuron.weight):.2f}",
        "MaCo attribution",
        "the neuron's filter",
    ]
    plot_meis(
        torch.cat(images),
        titles=titles,
        ncols=5,
        suptitle="a Gabor neuron, 150 steps: pixels and Fourier (SGD, norm 32), MaCo (Adam)",
        path=out / "maco.png",
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
    for draw in (
        video,
        channels,
        fourier,
        diverse,
        mds,
        validation,
        variants,
        inner_units,
        maco,
        open_retina,
    ):
        draw(out)
        print(f"{draw.__name__}: done")


if __name__ == "__main__":
    main()
