"""mei.plot.plot_validation: a row per MEI with its best natural images and, per model, the
responses to the MEI and to the best image, drawn from a real validation result."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("matplotlib", reason="mei.plot needs matplotlib (mei[plot])")

from tools_testkit import png_size  # noqa: E402

from mei import plot  # noqa: E402
from mei.validation import read_images, validate_meis  # noqa: E402

TILE = int(plot.TILE_INCHES * plot.DPI)
TILE_HEIGHT = int((plot.TILE_INCHES + plot.TITLE_INCHES) * plot.DPI)


class Pixels(torch.nn.Module):
    """Unit ``u`` responds ``scale`` times pixel ``u`` of a ``(1, 2, 2)`` image."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * x.flatten(1)


def _result():
    images = torch.arange(20.0).reshape(5, 1, 2, 2) % 7  # image j, pixel u: (4j + u) % 7
    loaders = {"train": {"s": DataLoader(TensorDataset(images), batch_size=2)}}
    meis = torch.zeros(2, 1, 2, 2)
    meis[0].view(-1)[0], meis[1].view(-1)[3] = 12.0, 14.0
    models = {"one": Pixels(1.0), "half": Pixels(0.5)}
    return validate_meis(models, meis, [0, 3], loaders, k=2), loaders, images


def test_rows_hold_the_mei_its_best_images_and_the_responses_per_model(tmp_path):
    result, loaders, images = _result()
    natural = read_images(loaders, result.natural_indices[0])
    assert natural.shape == (2, 2, 1, 2, 2)
    path = tmp_path / "validation.png"
    figure = plot.plot_validation(result, natural, path=path, caption=False)
    # one row per MEI: the MEI, two natural images, the responses two tiles wide
    assert png_size(path) == ((1 + 2 + 2) * TILE, 2 * TILE_HEIGHT)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    # unit 0's best images: pixel 0 of image j is (4 j) % 7, highest for j = 3 (5), then 1 (4)
    best = [int(i) for i in result.natural_indices[0, 0]]
    assert best == [3, 1]
    assert titles[0] == "unit 0\nMEI 12"
    assert titles[1] == f"image {best[0]}\n{(4 * best[0]) % 7}"
    bars = [ax for ax in figure.axes if ax.get_title() == "response per model"]
    assert len(bars) == 2
    heights = [p.get_height() for p in bars[1].patches]
    # unit 3: the MEI gives 14 and 7 on the two models; its best image (pixel 3 of image j is
    # (4 j + 3) % 7, highest for j = 4: 5) 5 and 2.5
    assert heights == [14.0, 7.0, 5.0, 2.5]
    assert [t.get_text() for t in bars[0].get_xticklabels()] == ["one", "half"]


def test_without_natural_images_and_bad_arguments():
    result, _, _ = _result()
    figure = plot.plot_validation(result, titles=["a", "b"])
    assert figure.axes[0].get_title().startswith("a\nMEI")
    with pytest.raises(ValueError, match="model must be in 0 .. 1"):
        plot.plot_validation(result, model=2)
    with pytest.raises(ValueError, match=r"\(U, k, C, H, W\) with U = 2"):
        plot.plot_validation(result, torch.zeros(3, 2, 1, 2, 2))
