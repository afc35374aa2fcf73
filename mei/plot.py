"""Pictures of MEIs: image grids, MEIs beside references, optimization traces, movies.

Every function returns a :class:`matplotlib.figure.Figure` (or a path) and, given ``path``,
writes the file. Figures are drawn with the Agg backend on figures that pyplot does not manage,
so this module works on servers without a display and never changes pyplot's global state.
Needs matplotlib: ``pip install "mei[plot]"``.

Images can be given as a tensor or array ``(B, C, H, W)``, or as a sequence of ``(1, C, H, W)``,
``(C, H, W)`` or ``(H, W)`` images (what :func:`mei.methods.gradient_ascent` returns, one per
MEI). One channel is drawn in gray, three as RGB, any other number one panel per channel.
Each image is scaled on its own: gray and per-channel panels symmetrically around zero (zero is
mid-gray, so the sign of every pixel stays visible; a caption under the figure says so), RGB
images to the full ``[0, 1]`` range. Spatio-temporal MEIs ``(B, C, T, H, W)`` go to
:func:`plot_frames` and :func:`save_gif`. Optimization traces (:func:`plot_trace`) show each
run as a line, or, for many runs, their median and range. :func:`plot_validation` shows MEIs
beside their units' best natural images and their responses on several models.
"""

from __future__ import annotations

import math
import numbers
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError as e:  # pragma: no cover - exercised by a test that hides matplotlib
    raise ImportError(
        f"mei.plot needs matplotlib, which is not installed ({e}); install it with "
        '`pip install "mei[plot]"` (or `pip install matplotlib`)'
    ) from e

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .validation import ValidationResult

__all__ = [
    "plot_frames",
    "plot_mei_pairs",
    "plot_meis",
    "plot_trace",
    "plot_validation",
    "save_figure",
    "save_gif",
]

TILE_INCHES = 1.5
"""Width and height of one image tile, in inches (the image area, without its title)."""

TILE_GAP_INCHES = 0.05
"""Space left free on each side of an image inside its tile, in inches."""

TITLE_INCHES = 0.4
"""Height reserved above each tile for its title (two lines), in inches."""

CAPTION_LINE_INCHES = 0.17
"""Height of one line of a figure's caption, in inches."""

GRAY_CAPTION = (
    "each image is scaled on its own: mid-gray is 0, white is +m and black is -m, where m is "
    "its largest absolute value"
)
"""The caption of figures with gray images (``caption=True``)."""

MAX_TRACE_LINES = 10
""":func:`plot_trace` draws up to this many runs as lines; more as their median and range."""

OBJECTIVE_WORDS = {
    "EvaluationObjective": "model response",
    "RegularizationObjective": "regularization term",
}
"""How :func:`plot_trace` names the tracked objectives it knows (others: their class name)."""

DPI = 100
"""Dots per inch of saved figures: a tile is ``TILE_INCHES * DPI`` pixels wide."""


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` (format from the suffix, e.g. ``.png``); return the path.

    The parent directory is created if needed. The size in pixels is the figure's size in
    inches times :data:`DPI`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_images(images: Any, spatial_dims: int = 2) -> list[np.ndarray]:
    """A list of ``(C, *spatial)`` arrays from a batch or a sequence of images."""
    image_dims = spatial_dims + 1
    if isinstance(images, (list, tuple)):
        result = []
        for i, image in enumerate(images):
            array = _to_numpy(image)
            while array.ndim > image_dims and array.shape[0] == 1:
                array = array[0]
            if array.ndim == image_dims - 1:
                array = array[None]
            if array.ndim != image_dims:
                raise ValueError(
                    f"image {i} must have {image_dims - 1} to {image_dims + 1} dimensions with "
                    f"a batch of one, got shape {tuple(_to_numpy(image).shape)}"
                )
            result.append(array)
        if not result:
            raise ValueError("no images to plot")
        return result
    array = _to_numpy(images)
    if array.ndim == image_dims + 1:
        batch = list(array)
    elif array.ndim == image_dims:
        batch = [array]
    elif array.ndim == image_dims - 1:
        batch = [array[None]]
    else:
        raise ValueError(
            f"expected images (B, C, {', '.join('HW' if spatial_dims == 2 else 'THW')}), "
            f"got shape {array.shape}"
        )
    if not batch:
        raise ValueError("no images to plot")
    return batch


def _display(image: np.ndarray) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Panels for one ``(C, H, W)`` image: ``(data, imshow kwargs, channel label)``."""
    channels = image.shape[0]
    if channels == 3:
        low, high = image.min(), image.max()
        rgb = (image - low) / (high - low) if high > low else np.full_like(image, 0.5)
        return [(np.transpose(rgb, (1, 2, 0)), {}, "")]
    panels = []
    for c in range(channels):
        scale = float(np.abs(image[c]).max()) or 1.0
        label = "" if channels == 1 else f"ch {c}"
        panels.append((image[c], {"cmap": "gray", "vmin": -scale, "vmax": scale}, label))
    return panels


def _format_value(value: Any) -> str:
    value = float(_to_numpy(value))
    return f"{value:.3g}"


def _check_length(name: str, values: Sequence[Any] | None, n: int) -> list[Any] | None:
    if values is None:
        return None
    values = list(_to_numpy(values)) if hasattr(values, "detach") else list(values)
    if len(values) != n:
        raise ValueError(f"got {len(values)} {name} for {n} images")
    return values


def _grid(n: int, ncols: int | None) -> tuple[int, int]:
    if ncols is not None and ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    ncols = min(n, ncols or min(n, 8))
    return math.ceil(n / ncols), ncols


def _caption_lines(caption: str | None, width: float) -> list[str]:
    """``caption`` wrapped to a figure ``width`` inches wide (7-point text)."""
    if not caption:
        return []
    return textwrap.wrap(caption, width=max(20, int(width * 100 / 4.6)))


def _caption_text(caption: str | bool, gray: bool) -> str | None:
    if caption is True:
        return GRAY_CAPTION if gray else None
    return caption or None


def _tile_figure(
    rows: int, cols: int, *, suptitle: str | None = None, caption: str | None = None
) -> tuple[Figure, list[list[Axes]]]:
    """A figure of ``rows x cols`` image tiles of :data:`TILE_INCHES`, each with a title strip,
    and ``caption`` (wrapped) under them."""
    top = 0.4 if suptitle else 0.0
    width = cols * TILE_INCHES
    lines = _caption_lines(caption, width)
    bottom_strip = len(lines) * CAPTION_LINE_INCHES + (0.08 if lines else 0.0)
    height = rows * (TILE_INCHES + TITLE_INCHES) + top + bottom_strip
    figure = _new_figure(width, height)
    axes = []
    for r in range(rows):
        row = []
        for c in range(cols):
            bottom = height - top - (r + 1) * (TILE_INCHES + TITLE_INCHES)
            inner = TILE_INCHES - 2 * TILE_GAP_INCHES
            ax = figure.add_axes(
                (
                    (c * TILE_INCHES + TILE_GAP_INCHES) / width,
                    (bottom + TILE_GAP_INCHES) / height,
                    inner / width,
                    inner / height,
                )
            )
            ax.set_axis_off()
            row.append(ax)
        axes.append(row)
    if suptitle:
        figure.suptitle(suptitle, y=1 - 0.1 / height, va="top")
    if lines:
        figure.text(
            0.5,
            0.04 / height,
            "\n".join(lines),
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.25",
            linespacing=1.2,
        )
    return figure, axes


def _draw(ax: Axes, data: np.ndarray, kwargs: dict[str, Any], title: str) -> None:
    ax.imshow(data, interpolation="nearest", **kwargs)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8, pad=2)


def plot_meis(
    meis: Any,
    *,
    scores: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    suptitle: str | None = None,
    caption: str | bool = True,
    path: str | Path | None = None,
) -> Figure:
    """A grid of MEIs (or any images), each titled with its title and, below it, its score.

    ``meis`` is ``(B, C, H, W)`` or a sequence of single images (see the module docstring).
    ``scores`` and ``titles`` have one entry per image; ``ncols`` defaults to ``min(B, 8)``.
    Images with other than 1 or 3 channels get one tile per channel. ``caption``: text under
    the figure; ``True`` (default) says how gray images are scaled, if there are any. With
    ``path``, the figure is also written there. Each tile is :data:`TILE_INCHES` square at
    :data:`DPI`.
    """
    images = _as_images(meis)
    scores = _check_length("scores", scores, len(images))
    titles = _check_length("titles", titles, len(images))
    tiles = []
    for i, image in enumerate(images):
        base = titles[i] if titles is not None else (f"#{i}" if len(images) > 1 else "")
        for data, kwargs, label in _display(image):
            title = f"{base} {label}".strip()
            if scores is not None:
                title = f"{title}\nscore {_format_value(scores[i])}".strip()
            tiles.append((data, kwargs, title))
    rows, cols = _grid(len(tiles), ncols)
    gray = any("cmap" in kwargs for _, kwargs, _ in tiles)
    figure, axes = _tile_figure(rows, cols, suptitle=suptitle, caption=_caption_text(caption, gray))
    for i, (data, kwargs, title) in enumerate(tiles):
        _draw(axes[i // cols][i % cols], data, kwargs, title)
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_mei_pairs(
    meis: Any,
    references: Any,
    *,
    scores: Sequence[float] | None = None,
    correlations: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
    labels: tuple[str, str] = ("MEI", "truth"),
    ncols: int | None = None,
    suptitle: str | None = None,
    caption: str | bool = True,
    path: str | Path | None = None,
) -> Figure:
    """Each MEI above its reference (e.g. the neuron's ground-truth filter).

    ``meis`` and ``references`` hold the same number of images (any of the accepted forms, with
    one or three channels). The MEI tile's title shows ``titles[i]`` and, below it, the score;
    the reference tile's its label and the correlation. ``ncols`` pairs per row (default
    ``min(B, 8)``); ``caption`` as for :func:`plot_meis`.
    """
    mei_images = _as_images(meis)
    reference_images = _as_images(references)
    n = len(mei_images)
    if len(reference_images) != n:
        raise ValueError(f"got {n} MEIs and {len(reference_images)} references")
    scores = _check_length("scores", scores, n)
    correlations = _check_length("correlations", correlations, n)
    titles = _check_length("titles", titles, n)
    rows, cols = _grid(n, ncols)
    gray = any(image.shape[0] == 1 for image in [*mei_images, *reference_images])
    figure, axes = _tile_figure(
        2 * rows, cols, suptitle=suptitle, caption=_caption_text(caption, gray)
    )
    for i in range(n):
        for image, kind in ((mei_images[i], 0), (reference_images[i], 1)):
            if image.shape[0] not in (1, 3):
                raise ValueError(
                    f"plot_mei_pairs draws 1- or 3-channel images, got {image.shape[0]} channels"
                )
            [(data, kwargs, _)] = _display(image)
            if kind == 0:
                title = titles[i] if titles is not None else f"#{i}"
                title = f"{labels[0]} {title}"
                if scores is not None:
                    title += f"\nscore {_format_value(scores[i])}"
            else:
                title = labels[1]
                if correlations is not None:
                    title += f"\nr = {float(correlations[i]):.2f}"
            _draw(axes[2 * (i // cols) + kind][i % cols], data, kwargs, title)
    if path is not None:
        save_figure(figure, path)
    return figure


def _scalar_trace(values: Sequence[Any]) -> np.ndarray | None:
    """The values as floats if every one is a number (or a one-element tensor/array)."""
    result = []
    for value in values:
        if isinstance(value, numbers.Real):
            result.append(float(value))
            continue
        array = _to_numpy(value) if hasattr(value, "detach") or hasattr(value, "shape") else None
        if array is None or array.size != 1:
            return None
        result.append(float(array.reshape(())))
    return np.asarray(result)


def _objective_words(name: str) -> str:
    short = name.rsplit(".", 1)[-1]
    return OBJECTIVE_WORDS.get(short, short)


def _spread(
    lines: Sequence[tuple[int, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, and the median, minimum and maximum over ``lines`` at each step (each line
    counts only over the steps it covers)."""
    steps = np.unique(np.concatenate([times for _, times, _ in lines]))
    grid = np.full((len(lines), len(steps)), np.nan)
    for row, (_, times, values) in enumerate(lines):
        order = np.argsort(times)
        times, values = times[order], values[order]
        inside = (steps >= times[0]) & (steps <= times[-1])
        grid[row, inside] = np.interp(steps[inside], times, values)
    return steps, np.nanmedian(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)


def plot_trace(
    outputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    objectives: Sequence[str] | None = None,
    suptitle: str | None = None,
    max_lines: int = MAX_TRACE_LINES,
    path: str | Path | None = None,
) -> Figure:
    """The optimization trace: each tracked objective's values over the steps.

    ``outputs`` is the ``output`` of a method (``{objective path: {"times": [...],
    "values": [...]}}``) or a sequence of them (one per run, e.g. per neuron). Up to
    ``max_lines`` runs are drawn as one line each (``labels`` name them in a legend); more
    runs as their median and the range between the lowest and the highest value at each step,
    which stays readable for hundreds of neurons. One panel per objective with numeric values,
    named in words (``EvaluationObjective``: "model response"), with the step on the x axis;
    objectives that record tensors (inputs, gradients) are left out unless named in
    ``objectives``, which is then an error.
    """
    if isinstance(outputs, Mapping):
        outputs = [outputs]
    outputs = list(outputs)
    if not outputs:
        raise ValueError("no outputs to plot")
    if max_lines < 1:
        raise ValueError(f"max_lines must be positive, got {max_lines}")
    labels = _check_length("labels", labels, len(outputs))
    for i, output in enumerate(outputs):
        if not isinstance(output, Mapping):
            raise ValueError(
                f"output {i} must be a dict {{objective: {{'times': [...], 'values': [...]}}}}, "
                f"got {type(output).__name__}"
            )
    names = list(objectives) if objectives is not None else []
    if objectives is None:
        for output in outputs:
            names += [name for name in output if name not in names]
    traces: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for name in names:
        for i, output in enumerate(outputs):
            entry = output.get(name)
            if entry is None:
                if objectives is not None:
                    raise ValueError(f"output {i} has no objective {name!r}: {sorted(output)}")
                continue
            if not isinstance(entry, Mapping) or not {"times", "values"} <= set(entry):
                raise ValueError(
                    f"output {i}[{name!r}] must have 'times' and 'values', got {entry!r:.80}"
                )
            values = _scalar_trace(entry["values"])
            if values is None:
                if objectives is not None:
                    raise ValueError(f"objective {name!r} does not record numbers")
                traces.setdefault(name, [])
                continue
            times = np.asarray([float(t) for t in entry["times"]])
            if len(times) != len(values):
                raise ValueError(
                    f"output {i}[{name!r}] has {len(times)} times and {len(values)} values"
                )
            if len(times):
                traces.setdefault(name, []).append((i, times, values))
    plotted = {name: lines for name, lines in traces.items() if lines}
    if not plotted:
        raise ValueError(
            f"no objective with numeric values to plot; objectives found: {names or 'none'}"
        )
    top = 0.3 if suptitle else 0.0
    width, panel_height = 6.0, 3.2
    height = panel_height * len(plotted) + top
    figure = _new_figure(width, height)
    for k, (name, lines) in enumerate(plotted.items()):
        bottom = height - top - (k + 1) * panel_height
        ax = figure.add_axes((0.12, (bottom + 0.5) / height, 0.84, (panel_height - 0.9) / height))
        words = _objective_words(name)
        if len(lines) <= max_lines:
            for i, times, values in lines:
                label = labels[i] if labels is not None else None
                ax.plot(times, values, marker="." if len(times) < 30 else None, label=label)
            runs = f"{len(lines)} MEI{'s' if len(lines) > 1 else ''}"
            if labels is not None:
                ax.legend(fontsize=7)
        else:
            steps, median, low, high = _spread(lines)
            ax.fill_between(steps, low, high, color="C0", alpha=0.25, linewidth=0, label="range")
            ax.plot(steps, median, color="C0", label="median")
            ax.legend(fontsize=7, loc="lower right")
            runs = f"median and range of {len(lines)} MEIs"
        ax.set_title(f"{words} during optimization ({runs})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(words, fontsize=8)
        ax.tick_params(labelsize=7)
    if suptitle:
        figure.suptitle(suptitle, y=1 - 0.1 / height, va="top")
    if path is not None:
        save_figure(figure, path)
    return figure


def _movie_batch(meis: Any) -> list[np.ndarray]:
    """A list of ``(C, T, H, W)`` arrays from ``(B, C, T, H, W)`` or a sequence of them."""
    return _as_images(meis, spatial_dims=3)


def _frame_panels(movie: np.ndarray) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The frames of one ``(C, T, H, W)`` movie, scaled together so they stay comparable."""
    channels = movie.shape[0]
    if channels not in (1, 3):
        raise ValueError(f"movies must have 1 or 3 channels, got {channels}")
    if channels == 3:
        low, high = movie.min(), movie.max()
        scaled = (movie - low) / (high - low) if high > low else np.full_like(movie, 0.5)
        return [np.transpose(scaled[:, t], (1, 2, 0)) for t in range(movie.shape[1])], {}
    scale = float(np.abs(movie).max()) or 1.0
    return [movie[0, t] for t in range(movie.shape[1])], {
        "cmap": "gray",
        "vmin": -scale,
        "vmax": scale,
    }


def plot_frames(
    meis: Any,
    *,
    scores: Sequence[float] | None = None,
    max_frames: int | None = None,
    suptitle: str | None = None,
    caption: str | bool = True,
    path: str | Path | None = None,
) -> Figure:
    """Spatio-temporal MEIs ``(B, C, T, H, W)``: one row per MEI, one tile per frame.

    All frames of one MEI share a color scale. ``max_frames`` shows that many frames evenly
    spread over ``T`` (default: all). ``caption`` as for :func:`plot_meis`.
    """
    movies = _movie_batch(meis)
    scores = _check_length("scores", scores, len(movies))
    n_frames = movies[0].shape[1]
    if any(m.shape[1] != n_frames for m in movies):
        raise ValueError(
            f"all MEIs must have the same number of frames, got {[m.shape[1] for m in movies]}"
        )
    shown = list(range(n_frames))
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        if max_frames < n_frames:
            shown = sorted(
                {round(k * (n_frames - 1) / max(max_frames - 1, 1)) for k in range(max_frames)}
            )
    gray = any(movie.shape[0] == 1 for movie in movies)
    figure, axes = _tile_figure(
        len(movies), len(shown), suptitle=suptitle, caption=_caption_text(caption, gray)
    )
    for b, movie in enumerate(movies):
        frames, kwargs = _frame_panels(movie)
        for column, t in enumerate(shown):
            title = f"t={t}"
            if column == 0:
                title = (f"#{b} " if len(movies) > 1 else "") + title
                if scores is not None:
                    title += f"\nscore {_format_value(scores[b])}"
            _draw(axes[b][column], frames[t], kwargs, title)
    if path is not None:
        save_figure(figure, path)
    return figure


def _to_uint8(frame: np.ndarray, kwargs: dict[str, Any]) -> np.ndarray:
    if "vmin" in kwargs:
        frame = (frame - kwargs["vmin"]) / (kwargs["vmax"] - kwargs["vmin"])
    return np.clip(np.round(frame * 255), 0, 255).astype(np.uint8)


def save_gif(meis: Any, path: str | Path, *, fps: float = 5.0, scale: int | None = None) -> Path:
    """Write spatio-temporal MEIs ``(B, C, T, H, W)`` as an animated GIF; return the path.

    The MEIs play side by side (separated by a 1-pixel gray line), looping forever, each with
    one color scale over all its frames. ``scale`` enlarges every pixel to ``scale x scale``
    (default: so that the shorter side is at least 128 pixels). Pillow merges identical
    consecutive frames into one longer frame.
    """
    from PIL import Image  # matplotlib depends on Pillow

    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    movies = _movie_batch(meis)
    n_frames = movies[0].shape[1]
    if any(m.shape[1:] != movies[0].shape[1:] for m in movies):
        raise ValueError("all MEIs of one GIF must have the same (T, H, W)")
    height, width = movies[0].shape[2:]
    if scale is None:
        scale = max(1, math.ceil(128 / min(height, width)))
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    color = any(m.shape[0] == 3 for m in movies)
    per_movie = []
    for movie in movies:
        frames, kwargs = _frame_panels(movie)
        frames = [_to_uint8(f, kwargs) for f in frames]
        if color and frames[0].ndim == 2:
            frames = [np.repeat(f[..., None], 3, axis=-1) for f in frames]
        per_movie.append(frames)
    images = []
    for t in range(n_frames):
        parts = []
        for k, frames in enumerate(per_movie):
            if k:
                parts.append(np.full_like(frames[t][:, :1], 128))
            parts.append(frames[t])
        frame = np.concatenate(parts, axis=1)
        frame = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
        images.append(Image.fromarray(frame))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        optimize=False,
    )
    return path


def plot_validation(
    result: ValidationResult,
    natural_images: Any = None,
    *,
    model: int = 0,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    caption: str | bool = True,
    path: str | Path | None = None,
) -> Figure:
    """MEIs validated (:func:`mei.validation.validate_meis`): one row per MEI with the MEI,
    its unit's best natural images and, on the right, the unit's responses on each validating
    model to the MEI (dark) and to its best natural image (light).

    ``natural_images``: ``(U, k, C, H, W)``, the best natural images of each unit on
    ``result.models[model]`` (``read_images(dataloaders, result.natural_indices[model])``),
    each titled with its dataset index and response; ``None`` shows the MEIs and responses
    only. ``titles`` name the rows (default: the units). The MEIs come from ``result.meis``.
    """
    if result.meis is None:
        raise ValueError("the result holds no MEIs (result.meis is None)")
    meis = _as_images(result.meis)
    n = len(meis)
    if not 0 <= model < len(result.models):
        raise ValueError(f"model must be in 0 .. {len(result.models) - 1}, got {model}")
    shown: list[list[np.ndarray]] = [[] for _ in range(n)]
    if natural_images is not None:
        array = _to_numpy(natural_images)
        if array.ndim != 5 or len(array) != n:
            raise ValueError(
                f"natural_images must be (U, k, C, H, W) with U = {n} MEIs, got {array.shape}"
            )
        shown = [list(row) for row in array]
    titles = _check_length("titles", titles, n)
    k = max((len(row) for row in shown), default=0)
    cols = 1 + k + 2  # the MEI, its natural images, the responses (two tiles wide)
    gray = any(image.shape[0] == 1 for image in meis)
    figure, axes = _tile_figure(n, cols, suptitle=suptitle, caption=_caption_text(caption, gray))
    mei_responses = _to_numpy(result.mei_responses)
    natural_responses = _to_numpy(result.natural_responses)
    natural_indices = _to_numpy(result.natural_indices).astype(int)
    names = list(result.models)
    for i in range(n):
        row = axes[i]
        base = titles[i] if titles is not None else f"unit {result.units[i]}"
        panels = _display(meis[i])
        data, kwargs, _ = panels[0]
        _draw(row[0], data, kwargs, f"{base}\nMEI {_format_value(mei_responses[model, i])}")
        for j, image in enumerate(shown[i]):
            data, kwargs, _ = _display(image)[0]
            index, response = natural_indices[model, i, j], natural_responses[model, i, j]
            _draw(row[1 + j], data, kwargs, f"image {index}\n{_format_value(response)}")
        left, right = row[-2].get_position(), row[-1].get_position()
        row[-2].remove()
        row[-1].remove()
        ax = figure.add_axes(
            (
                left.x0 + 0.35 * left.width,
                left.y0 + 0.18 * left.height,
                right.x1 - left.x0 - 0.4 * left.width,
                0.8 * left.height,
            )
        )
        x = np.arange(len(names))
        ax.bar(x - 0.2, mei_responses[:, i], 0.4, color="0.2", label="MEI")
        ax.bar(x + 0.2, natural_responses[:, i, 0], 0.4, color="0.7", label="best image")
        ax.set_xticks(x, names, fontsize=6, rotation=30 if len(names) > 3 else 0)
        ax.tick_params(axis="y", labelsize=6)
        ax.axhline(0, color="0.5", linewidth=0.5)
        ax.set_title("response per model", fontsize=8, pad=2)
        if i == 0:
            ax.legend(fontsize=6, frameon=False)
    if path is not None:
        save_figure(figure, path)
    return figure
