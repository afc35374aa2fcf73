"""mei.plot: the files are valid PNGs/GIFs of the promised size, showing the given images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib", reason="mei.plot needs matplotlib (mei[plot])")

from tools_testkit import png_size  # noqa: E402

from mei import plot  # noqa: E402

TILE = int(plot.TILE_INCHES * plot.DPI)
TILE_HEIGHT = int((plot.TILE_INCHES + plot.TITLE_INCHES) * plot.DPI)


def caption_height(lines: int) -> int:
    """Pixels of a caption of ``lines`` lines under the tiles."""
    return round((lines * plot.CAPTION_LINE_INCHES + 0.08) * plot.DPI) if lines else 0


def caption(figure) -> str:
    """The caption under a figure's tiles (its figure-level text), as one line."""
    return " ".join(" ".join(t.get_text() for t in figure.texts).split())


def halves(n: int = 1, channels: int = 1, size: int = 16) -> torch.Tensor:
    """Images whose left half is +1 and right half -1."""
    x = torch.ones(n, channels, size, size)
    x[..., size // 2 :] = -1
    return x


def read_png(path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)[..., :3]  # (H, W, RGB) floats in [0, 1]


def pixels_of(figure, ax, image: np.ndarray) -> np.ndarray:
    """The pixels of the saved ``image`` inside ``ax`` (a few pixels in from its border)."""
    box = ax.get_window_extent()
    height = image.shape[0]
    top, bottom = int(height - box.y1) + 3, int(height - box.y0) - 3
    left, right = int(box.x0) + 3, int(box.x1) - 3
    return image[top:bottom, left:right]


def test_grid_size_titles_and_gray_contents(tmp_path):
    path = tmp_path / "grid.png"
    images = halves(10)
    figure = plot.plot_meis(images, scores=torch.arange(10) / 4, path=path)
    # 10 images: 8 per row, 2 rows of tiles with a title strip each, a one-line caption
    assert png_size(path) == (8 * TILE, 2 * TILE_HEIGHT + caption_height(1))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:3] == ["#0\nscore 0", "#1\nscore 0.25", "#2\nscore 0.5"]
    assert caption(figure) == plot.GRAY_CAPTION  # mid-gray is zero, said under the figure
    assert [ax.has_data() for ax in figure.axes] == [True] * 10 + [False] * 6
    saved = read_png(path)
    tile = pixels_of(figure, figure.axes[0], saved)
    left, right = tile[:, : tile.shape[1] // 2 - 3], tile[:, tile.shape[1] // 2 + 3 :]
    assert left.mean() > 0.95 and right.mean() < 0.05  # +1 white, -1 black, gray colormap


def test_color_images_are_drawn_in_rgb(tmp_path):
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    path = tmp_path / "red.png"
    figure = plot.plot_meis(red, titles=["red"], path=path)
    assert png_size(path) == (TILE, TILE_HEIGHT)  # no gray image, no caption
    assert caption(figure) == ""
    tile = pixels_of(figure, figure.axes[0], read_png(path))
    assert tile[..., 0].mean() > 0.95 and tile[..., 1:].mean() < 0.05
    assert figure.axes[0].get_title() == "red"


def test_other_channel_counts_get_a_tile_per_channel(tmp_path):
    figure = plot.plot_meis(halves(2, channels=2), caption=False, path=tmp_path / "two.png")
    assert [ax.get_title() for ax in figure.axes] == ["#0 ch 0", "#0 ch 1", "#1 ch 0", "#1 ch 1"]
    assert png_size(tmp_path / "two.png") == (4 * TILE, TILE_HEIGHT)


def test_a_list_of_single_meis_is_accepted(tmp_path):
    meis = [halves(1), halves(1)[0], halves(1)[0, 0]]  # (1,C,H,W), (C,H,W), (H,W)
    figure = plot.plot_meis(meis, ncols=2, caption="zero is gray", path=tmp_path / "list.png")
    assert png_size(tmp_path / "list.png") == (2 * TILE, 2 * TILE_HEIGHT + caption_height(1))
    assert caption(figure) == "zero is gray"
    assert sum(ax.has_data() for ax in figure.axes) == 3


def test_pairs_put_each_mei_above_its_reference(tmp_path):
    path = tmp_path / "pairs.png"
    meis, references = halves(3), -halves(3)
    figure = plot.plot_mei_pairs(
        meis,
        references,
        scores=[1.0, 2.0, 3.0],
        correlations=[0.9, 0.95, 1.0],
        titles=["0 gabor", "1 gabor", "2 ON center"],
        path=path,
    )
    # the caption is wrapped to the figure's width: 3 tiles hold it in 2 lines
    assert png_size(path) == (3 * TILE, 2 * TILE_HEIGHT + caption_height(2))
    top, bottom = figure.axes[0], figure.axes[3]
    assert top.get_title() == "MEI 0 gabor\nscore 1" and bottom.get_title() == "truth\nr = 0.90"
    assert figure.axes[2].get_title() == "MEI 2 ON center\nscore 3"
    assert caption(figure) == plot.GRAY_CAPTION
    saved = read_png(path)
    above, below = pixels_of(figure, top, saved), pixels_of(figure, bottom, saved)
    assert above[:, :4].mean() > 0.95 and below[:, :4].mean() < 0.05  # references are negated


def test_pairs_check_their_inputs():
    with pytest.raises(ValueError, match="got 2 MEIs and 3 references"):
        plot.plot_mei_pairs(halves(2), halves(3))
    with pytest.raises(ValueError, match="got 1 scores for 2 images"):
        plot.plot_mei_pairs(halves(2), halves(2), scores=[1.0])


def test_trace_draws_every_numeric_objective_of_every_output(tmp_path):
    outputs = [
        {
            "mei.objectives.EvaluationObjective": {
                "times": [0, 10, 20],
                "values": [1.0 * k, 2.0 * k, 3.0 * k],
            },
            "mei.objectives.PostProcessedInputObjective": {
                "times": [0],
                "values": [torch.zeros(1, 1, 4, 4)],
            },
        }
        for k in (1, 2)
    ]
    path = tmp_path / "trace.png"
    figure = plot.plot_trace(outputs, labels=["a", "b"], path=path)
    assert png_size(path) == (600, 320)  # one panel: the input objective has no numbers
    [ax] = figure.axes
    assert ax.get_title() == "model response during optimization (2 MEIs)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "model response")
    lines = ax.get_lines()
    assert [list(line.get_ydata()) for line in lines] == [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]
    assert [list(line.get_xdata()) for line in lines][0] == [0.0, 10.0, 20.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_many_traces_are_drawn_as_their_median_and_range(tmp_path):
    """32 runs: not 32 tangled lines but the median of each step and the band from the lowest
    to the highest value; runs that record other steps count where they have values."""
    outputs = [
        {"mei.objectives.EvaluationObjective": {"times": [0, 5, 10], "values": [k, 2 * k, 3 * k]}}
        for k in range(1, 32)
    ]
    outputs.append({"mei.objectives.EvaluationObjective": {"times": [0, 10], "values": [0, 60]}})
    path = tmp_path / "many.png"
    figure = plot.plot_trace(outputs, suptitle="32 neurons", path=path)
    assert png_size(path) == (600, 350)
    [ax] = figure.axes
    assert ax.get_title() == "model response during optimization (median and range of 32 MEIs)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "model response")
    [median] = ax.get_lines()
    assert list(median.get_xdata()) == [0, 5, 10]
    # step 5: the last run has no value of its own there and is interpolated (30)
    assert list(median.get_ydata()) == [15.5, 31.0, 49.5]
    [band] = ax.collections
    vertices = band.get_paths()[0].vertices
    assert vertices[:, 1].min() == 0 and vertices[:, 1].max() == 93  # lowest to highest
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["range", "median"]
    assert figure.texts[0].get_text() == "32 neurons"
    few = plot.plot_trace(outputs[:3], max_lines=3)
    assert len(few.axes[0].get_lines()) == 3  # few runs: one line each


def test_trace_with_nothing_numeric_is_an_error():
    output = {"mei.objectives.GradientObjective": {"times": [0], "values": [torch.ones(2, 2)]}}
    with pytest.raises(ValueError, match="no objective with numeric values"):
        plot.plot_trace(output)
    with pytest.raises(ValueError, match="does not record numbers"):
        plot.plot_trace(output, objectives=["mei.objectives.GradientObjective"])
    with pytest.raises(ValueError, match="must have 'times' and 'values'"):
        plot.plot_trace({"x": {"values": [1.0]}})


def movies() -> torch.Tensor:
    """(2, 1, 6, 8, 8): frame t of each movie is the constant t - 2.5 (then its negation)."""
    frames = torch.arange(6, dtype=torch.float32) - 2.5
    movie = frames.view(1, 1, 6, 1, 1).expand(1, 1, 6, 8, 8)
    return torch.cat([movie, -movie])


def test_frames_show_chosen_frames_per_mei(tmp_path):
    path = tmp_path / "frames.png"
    figure = plot.plot_frames(movies(), scores=[1.5, 2.5], max_frames=3, path=path)
    assert png_size(path) == (3 * TILE, 2 * TILE_HEIGHT + caption_height(2))
    assert [ax.get_title() for ax in figure.axes] == [
        "#0 t=0\nscore 1.5",
        "t=2",
        "t=5",
        "#1 t=0\nscore 2.5",
        "t=2",
        "t=5",
    ]
    saved = read_png(path)
    first, last = pixels_of(figure, figure.axes[0], saved), pixels_of(figure, figure.axes[2], saved)
    assert first.mean() < 0.05 and last.mean() > 0.95  # one color scale over all frames


def test_gif_has_every_frame_side_by_side(tmp_path):
    from PIL import Image

    path = plot.save_gif(movies(), tmp_path / "movie.gif", fps=10, scale=4)
    gif = Image.open(path)
    assert gif.n_frames == 6
    assert gif.size == ((8 + 1 + 8) * 4, 8 * 4)  # two movies, a 1-pixel separator
    brightness = []
    for t in range(6):
        gif.seek(t)
        frame = np.asarray(gif.convert("L"), dtype=float)
        brightness.append((frame[:, :32].mean(), frame[:, -32:].mean()))
        assert gif.info["duration"] == 100
    first, second = zip(*brightness, strict=True)
    assert list(first) == sorted(first) and first[0] < 10 and first[-1] > 245
    assert list(second) == sorted(second, reverse=True)


def test_color_gif(tmp_path):
    from PIL import Image

    movie = torch.zeros(1, 3, 2, 4, 4)
    movie[:, 1, 0] = 0.5  # dim green, then bright green
    movie[:, 1, 1] = 1.0
    gif = Image.open(plot.save_gif(movie, tmp_path / "green.gif"))
    assert gif.size == (128, 128) and gif.n_frames == 2
    gif.seek(1)
    r, g, b = np.asarray(gif.convert("RGB"), dtype=float).mean(axis=(0, 1))
    assert g > 250 and r < 5 and b < 5


def test_bad_shapes_are_explained():
    with pytest.raises(
        ValueError, match=r"expected images \(B, C, H, W\), got shape \(1, 1, 1, 4, 4, 4\)"
    ):
        plot.plot_meis(torch.zeros(1, 1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="movies must have 1 or 3 channels"):
        plot.save_gif(torch.zeros(1, 2, 3, 4, 4), "unused.gif")
    with pytest.raises(ValueError, match="fps must be positive"):
        plot.save_gif(movies(), "unused.gif", fps=0)


def test_without_matplotlib_the_import_error_names_the_extra():
    code = "import sys; sys.modules['matplotlib'] = None; import mei.plot"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImportError: mei.plot needs matplotlib" in result.stderr
    assert 'pip install "mei[plot]"' in result.stderr
