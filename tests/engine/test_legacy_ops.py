"""The original library's legacy package (``mei.legacy``, ``mei.background_helper``).

Legacy ops keep the original's whole-batch semantics (one random shift per batch, the batch's
scalar penalty), so they are not run through the per-element checks of ``component_base``.
Here: answers known by hand, the call conventions, and the engine interface
(``elementwise``, ``per_row``, ``for_elements``): a row of a batched run equals, bitwise, a
run of that row alone.
"""

from __future__ import annotations

import inspect
import io
import math
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mei.background_helper as bg
from mei.legacy import ops
from mei.legacy.core import gradient_ascent
from mei.legacy.exceptions import FeatureVisException, MissingMaskSource, NotElementwise
from mei.legacy.models import Ensemble, VGG19Core
from mei.legacy.utils import Combine, Compose, varargin

SHAPE = (3, 1, 9, 11)
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def rand(shape=SHAPE, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def gen(seed):
    return torch.Generator().manual_seed(seed)


MASK = (torch.rand(9, 11, generator=gen(1)) > 0.5).long()

#: one constructor call per tensor op; the inputs are (B, 1, 9, 11) (one row for batch1)
CASES = {
    "TotalVariation": dict(weight=0.5),
    "TotalVariation-iso": dict(weight=0.5, isotropic=True),
    "RegTransparency": dict(weight=0.3),
    "LpNorm": dict(weight=0.5, p=6),
    "Similarity": dict(),
    "Similarity-cosine": dict(metric="cosine", weight=2.0),
    "Similarity-neg_euclidean": dict(metric="neg_euclidean", combine_op=torch.mean),
    "BoxContrast": dict(filter_size=3, box_constraint=0.5, padding=1),
    "BoxContrastPixelL2": dict(upper=0.5, lower=-0.3, p=3, l1_weight=0.1),
    "Transparency": dict(weight=0.4),
    "Jitter": dict(max_jitter=(2, 1)),
    "RandomCrop": dict(height=5, width=7),
    "BatchedCrops": dict(height=5, width=6, step_size=2, sigma=1.5),
    "ChangeRange": dict(x_min=-0.5, x_max=2.0),
    "Resize": dict(scale_factor=1.5),
    "Resize-nearest": dict(scale_factor=0.5, resize_method="nearest"),
    "GrayscaleToRGB": dict(),
    "Identity": dict(),
    "ChangeNorm": dict(norm=3.0),
    "ClipRange": dict(x_min=-0.4, x_max=0.9),
    "FourierSmoothing": dict(freq_exp=2),
    "DivideByMeanOfAbsolute": dict(),
    "MultiplyBy": dict(const=0.3, decay_factor=0.05),
    "GaussianBlur": dict(sigma=(1.0, 1.5), decay_factor=0.05),
    "GaussianBlur-constant": dict(sigma=0.7, truncate=3, pad_mode="constant"),
    "GaussianBlurforRing": dict(sigma=1.0, key=None, ring_mask=MASK),
    "GaussianBlurforCenter": dict(sigma=1.0, key=None, decay_factor=0.1, center_mask=MASK),
    "GaussianBlurforSurround": dict(sigma=1.0, key=None, center_mask=MASK.bool()),
    "ChangeStd": dict(std=0.5),
    "ChangeStd-keep-mean": dict(std=0.5, zero_mean=False),
}
BATCH1 = {"BatchedCrops"}
BACKGROUNDS = {"NatImgBackground", "NatImgBackgroundHighNorm", "WhiteNoiseBackground"}
RANDOM = {"Jitter", "RandomCrop"}


def build(case):
    return getattr(ops, case.split("-")[0])(**CASES[case])


def shape_for(case, batch=3):
    return (1, *SHAPE[1:]) if case in BATCH1 else (batch, *SHAPE[1:])


def is_regularizer(op):
    return op._scalar


def legacy_op_classes():
    return {
        name
        for name in ops.__all__
        if inspect.isclass(obj := getattr(ops, name))
        and issubclass(obj, ops.LegacyOp)
        and obj is not ops.LegacyOp
    }


def test_every_legacy_op_has_a_case():
    covered = {case.split("-")[0] for case in CASES} | BACKGROUNDS
    assert legacy_op_classes() - covered == set()


def test_the_original_public_names_are_all_here():
    original = {
        "TotalVariation", "RegTransparency", "LpNorm", "Similarity", "BoxContrast",
        "BoxContrastPixelL2", "Transparency", "NatImgBackground", "NatImgBackgroundHighNorm",
        "WhiteNoiseBackground", "Jitter", "RandomCrop", "BatchedCrops", "ChangeRange", "Resize",
        "GrayscaleToRGB", "Identity", "ChangeNorm", "ClipRange", "FourierSmoothing",
        "DivideByMeanOfAbsolute", "MultiplyBy", "GaussianBlurforRing", "GaussianBlurforCenter",
        "GaussianBlurforSurround", "GaussianBlur", "ChangeStd",
    }  # fmt: skip
    assert original <= legacy_op_classes()
    assert hasattr(ops, "fetch_download_path")


# ------------------------------------------------------------------------------------------
# Call conventions, repr, dtypes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_called_positionally_or_by_keyword_ignoring_unknown_keywords(case):
    op, x = build(case), rand(shape_for(case))
    torch.manual_seed(3)
    positional = op(x, 4)
    torch.manual_seed(3)
    keyword = op(x, iteration=4, model=None, anything="else")
    assert torch.equal(positional, keyword)


@pytest.mark.parametrize("case", sorted(CASES))
def test_repr_shows_every_constructor_argument(case):
    op = build(case)
    text = repr(op)
    assert text.startswith(type(op).__name__ + "(")
    if type(op).__init__ is not object.__init__:
        for name in list(inspect.signature(type(op).__init__).parameters)[1:]:
            assert f"{name}=" in text
    for name, value in CASES[case].items():
        if not isinstance(value, torch.Tensor):
            assert f"{name}={value!r}" in text


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_output_dtype_follows_the_input(case, dtype):
    torch.manual_seed(0)
    out = build(case)(rand(shape_for(case), dtype), 2)
    assert out.dtype == dtype
    if is_regularizer(build(case)):
        assert out.dim() == 0  # the original's scalar, whatever the batch


# ------------------------------------------------------------------------------------------
# The engine interface
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(c for c in CASES if build(c).elementwise))
def test_elementwise_ops_act_on_each_row(case, dtype):
    """Equal up to rounding: torch's batched kernels may order a batch's arithmetic
    differently from a single row's (on CPU float32 the batched convolution of GaussianBlur
    differs from the single-row one in the last bit; float64 sigmoid and std likewise)."""
    op, x = build(case), rand(dtype=dtype)
    rows = torch.cat([op(x[b : b + 1], 3) for b in range(len(x))])
    tol = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(op(x, 3), rows, rtol=tol, atol=tol)
    assert op.for_elements([gen(0), gen(1), gen(2)]) is op


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case", sorted(c for c in CASES if build(c).per_row and not build(c).elementwise)
)
def test_a_row_of_a_batched_call_equals_a_single_row_call(case, dtype):
    op, x = build(case), rand(dtype=dtype)
    seeds = [5, 6, 7]
    batched = op.for_elements([gen(s) for s in seeds])
    for i in (1, 2, 3):  # the generators advance from call to call, as single runs' do
        out = batched(x, i)
        singles = [op.for_elements([gen(s)]) for s in seeds]
        for _ in range(1, i):
            for b, single in enumerate(singles):
                single(x[b : b + 1], 0)
        for b, single in enumerate(singles):
            alone = single(x[b : b + 1].clone(), i)  # a run of its own: its own tensor
            if is_regularizer(op):
                assert out.shape == (3,) and alone.dim() == 0
                assert torch.equal(out[b], alone)
            else:
                assert torch.equal(out[b : b + 1], alone)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_generator_is_the_call_drawing_from_it(case):
    op, x = build(case), rand(shape_for(case))
    torch.manual_seed(21)
    expected = [op(x, i) for i in (1, 2)]
    own = op.for_elements([gen(21)])
    torch.manual_seed(99)  # the global generator no longer matters
    assert all(torch.equal(own(x, i), e) for i, e in zip((1, 2), expected, strict=True))


@pytest.mark.parametrize("case", sorted(RANDOM))
def test_random_ops_draw_from_the_given_generator_only(case):
    op, x = build(case), rand()
    state = torch.get_rng_state()
    op.for_elements([gen(1), gen(2), gen(3)])(x, 1)
    op.for_elements([gen(1)])(x, 1)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("case", ["Similarity", "BatchedCrops"])
def test_ops_coupling_rows_refuse_one_generator_per_row(case):
    op = build(case)
    assert op.per_row is False and not op.elementwise
    with pytest.raises(NotElementwise, match=case):
        op.for_elements([gen(0), gen(1)])
    assert issubclass(NotElementwise, NotImplementedError)
    x = rand(shape_for(case))
    assert torch.equal(op.for_elements([gen(0)])(x, 1), op(x, 1))


def test_a_batch_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="prepared for 2 elements"):
        ops.Jitter(1).for_elements([gen(0), gen(1)])(rand(), 1)


def test_elementwise_and_per_row_are_class_attributes():
    for name in legacy_op_classes():
        cls = getattr(ops, name)
        assert isinstance(vars(ops.LegacyOp)["elementwise"], bool)
        assert isinstance(cls.elementwise, bool) and isinstance(cls.per_row, bool)
    names = {n for n in legacy_op_classes() if getattr(ops, n).elementwise}
    assert {"ChangeNorm", "ClipRange", "GaussianBlur", "ChangeRange", "MultiplyBy"} <= names
    assert {"Identity", "ChangeStd"} <= names
    assert {"FourierSmoothing", "DivideByMeanOfAbsolute", "GaussianBlurforRing"} <= names
    assert not names & {"Jitter", "RandomCrop", "TotalVariation", "Similarity", "BatchedCrops"}


GRAD_SKIP = {"ClipRange"}  # piecewise constant in places: no useful gradcheck


@pytest.mark.parametrize("case", sorted(set(CASES) - GRAD_SKIP))
def test_gradcheck(case):
    op = build(case)
    x = rand(shape_for(case, batch=2), torch.float64).requires_grad_(True)

    def fn(inp):  # a fresh generator per evaluation: every evaluation draws the same shift
        return op.for_elements([gen(4)])(inp, 2)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Answers known by hand
# ------------------------------------------------------------------------------------------


def grid(h=4, w=5, dtype=torch.float64):
    i = torch.arange(h, dtype=dtype)[:, None].expand(h, w)
    j = torch.arange(w, dtype=dtype)[None, :].expand(h, w)
    return i, j


def test_total_variation_compares_true_neighbours():
    i, j = grid()
    tv = ops.TotalVariation(weight=1)
    assert tv(j[None, None]).item() == 16  # 4 rows x 4 steps of 1
    # vertical steps 1, 3, 5 in each of 5 columns (the original compared with the last row: 65)
    assert tv((i**2)[None, None]).item() == 45
    assert ops.TotalVariation(weight=2, isotropic=True)((3 * i + 4 * j)[None, None]).item() == 120
    batch = torch.stack([j[None], (i**2)[None]])
    assert tv(batch).item() == (16 + 45) / 2  # the original's batch mean


def test_lp_norm_and_transparency():
    x = torch.tensor([[[[3.0, 4.0]]], [[[6.0, 8.0]]]])
    assert ops.LpNorm(weight=2, p=2)(x).item() == pytest.approx(2 * (5 + 10) / 2)
    two_channels = torch.stack([torch.zeros(3, 3), torch.full((3, 3), 0.25)])[None]
    assert ops.Transparency(weight=2)(two_channels).item() == 0.5
    value = torch.tensor(0.3)
    assert torch.equal(ops.RegTransparency(weight=2)(value), 2 * value)


def test_similarity_of_identical_images_is_one_and_a_single_image_gives_zero():
    x = rand((1, 1, 9, 11))
    assert ops.Similarity()(torch.cat([x, 2 * x + 1])).item() == pytest.approx(1, abs=1e-6)
    far = ops.Similarity(metric="neg_euclidean")(torch.cat([x, x + 1]))
    assert far.item() == pytest.approx(-math.sqrt(99), rel=1e-6)
    with pytest.warns(UserWarning, match="Only one image"):
        assert ops.Similarity()(x).item() == 0


def test_similarity_with_a_mask():
    x = rand((2, 1, 9, 11))
    mask = torch.zeros(1, 1, 9, 11)
    mask[..., :4, :] = 1
    y = x.clone()
    y[1, :, :4] = 3 * x[0, :, :4] - 1  # the same pattern inside the mask
    assert ops.Similarity(mask=mask)(y).item() == pytest.approx(1, abs=1e-5)


def test_box_contrast_of_a_constant_image():
    x = torch.ones(1, 1, 9, 11)
    box = ops.BoxContrast()  # 7 x 7 box: sum 49 over 3 x 5 positions, constraint 10
    assert box(x).item() == pytest.approx(0.1 * 39**2 + 1e-3 * 99)
    assert box(torch.zeros(1, 1, 9, 11)).item() == 0


def test_laplace_l2_and_the_pixel_bounds():
    delta = torch.zeros(1, 1, 3, 3)
    delta[..., 1, 1] = 1
    # Laplacian of a centred delta: 4 at the centre, -1 at 4 neighbours: (16 + 4) / 9 / 2
    assert ops.laplace_l2(delta).item() == pytest.approx(10 / 9)
    assert ops.laplace_l2(delta, avg=False).item() == pytest.approx(10)
    flat = ops.BoxContrastPixelL2(l2_weight=0)
    assert flat(torch.full((1, 1, 2, 2), 3.0)).item() == pytest.approx(0.1 * 4 * 1.0**2)
    # as the original: relu(-((x - lower) ** 2)) is zero, so values below `lower` are free
    assert flat(torch.full((1, 1, 2, 2), -5.0)).item() == 0
    with pytest.raises(ValueError, match="filter_size"):
        ops.BoxContrastPixelL2(filter_size=4)


def test_jitter_draws_one_shift_for_the_batch_as_the_original():
    x = torch.arange(3 * 9 * 11, dtype=torch.float32).reshape(3, 1, 9, 11)
    op, h, w = ops.Jitter(max_jitter=(2, 3)), 9, 11
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        dy = int(torch.randint(-2, 3, (1,), dtype=torch.int32).item())
        dx = int(torch.randint(-3, 4, (1,), dtype=torch.int32).item())
        after = torch.rand(1)
        torch.manual_seed(seed)
        out = op(x, 1)
        assert torch.equal(torch.rand(1), after)  # exactly those two draws
        seen.add((dy, dx))
        inside = out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
        source = x[..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
        assert torch.equal(inside, source)
    assert len(seen) > 15


def test_random_crop_draws_as_the_original():
    x = rand()
    for seed in range(10):
        torch.manual_seed(seed)
        cy = int(torch.randint(0, 5, (1,), dtype=torch.int32).item())
        cx = int(torch.randint(0, 5, (1,), dtype=torch.int32).item())
        torch.manual_seed(seed)
        assert torch.equal(ops.RandomCrop(5, 7)(x), x[..., cy : cy + 5, cx : cx + 7])


def test_batched_crops():
    x = rand((1, 2, 9, 11))
    crops = ops.BatchedCrops(height=5, width=6, step_size=(2, 5))(x)
    assert crops.shape == (3 * 2, 2, 5, 6)
    assert torch.equal(crops[1], x[0, :, 0:5, 5:11])
    masked = ops.BatchedCrops(height=5, width=7, step_size=2, sigma=1.0)(x)
    assert torch.equal(masked[0, :, 2, 3], x[0, :, 2, 3])  # the window's peak is 1
    with pytest.raises(ValueError, match="one example"):
        ops.BatchedCrops(5, 6, 2)(rand())


def test_gaussian_window_is_scipys():
    windows = pytest.importorskip("scipy.signal.windows")
    for size in range(0, 40):
        for std in (0.4, 1, 1.5, 2.25, 7.0):
            assert np.array_equal(ops.gaussian_window(size, std), windows.gaussian(size, std))


def test_gaussian_blur_is_the_originals_arithmetic():
    x = rand(dtype=torch.float32)
    blur = ops.GaussianBlur(sigma=(1.0, 1.5), decay_factor=0.25, pad_mode="replicate")
    sy, sx = 1.0 + 0.25 * 2, 1.5 + 0.25 * 2  # at iteration 3
    hy, hx = round(4 * sy), round(4 * sx)
    ny = torch.arange(-hy, hy + 1, dtype=torch.float64)
    nx = torch.arange(-hx, hx + 1, dtype=torch.float64)
    wy = torch.exp(-(ny**2) / (2 * sy * sy)).float()  # unnormalized, cast to the input's dtype
    wx = torch.exp(-(nx**2) / (2 * sx * sx)).float()
    padded = torch.nn.functional.pad(x, (hx, hx, hy, hy), mode="replicate")
    expected = torch.nn.functional.conv2d(padded, wy.view(1, 1, -1, 1))
    expected = torch.nn.functional.conv2d(expected, wx.view(1, 1, 1, -1))
    expected = expected / (wy.sum() * wx.sum())
    torch.testing.assert_close(blur(x, 3), expected, rtol=1e-6, atol=1e-6)
    constant = torch.full((1, 1, 9, 11), 2.5, dtype=torch.float64)
    torch.testing.assert_close(ops.GaussianBlur(1.0)(constant), constant)


def test_gaussian_blur_mei_only_leaves_the_transparency_channel():
    x = rand((2, 3, 9, 11))
    out = ops.GaussianBlur(1.0, mei_only=True)(x)
    assert torch.equal(out[:, -1], x[:, -1])
    assert torch.equal(out[:, :-1], ops.GaussianBlur(1.0)(x[:, :-1]))


def test_masked_blurs_multiply_the_blur_by_their_mask():
    x = rand()
    blurred = ops.GaussianBlur(1.0)(x)
    ring = ops.GaussianBlurforRing(1.0, None, ring_mask=MASK)
    assert torch.equal(ring(x), blurred * MASK)
    assert torch.equal(ops.GaussianBlurforCenter(1.0, None, center_mask=MASK)(x), blurred * MASK)
    surround = ops.GaussianBlurforSurround(1.0, None, center_mask=MASK)
    assert torch.equal(surround(x), blurred * (1 - MASK))


def test_norm_std_range_clip_multiply():
    x = torch.tensor([[[[0.0, 2.0, 4.0, 6.0]]], [[[1.0, 1.0, 1.0, 3.0]]]])
    torch.testing.assert_close(
        ops.ChangeNorm(2.0)(x).flatten(1).norm(dim=1), torch.tensor([2.0, 2.0])
    )
    # zero_mean=True (the default) only scales: std 1, mean 3 / sqrt(20 / 3), not 0
    scaled = ops.ChangeStd(1.0)(x[:1])
    assert scaled.std().item() == pytest.approx(1, rel=1e-6)
    assert scaled.mean().item() == pytest.approx(3 / math.sqrt(20 / 3), rel=1e-6)
    kept = ops.ChangeStd(1.0, zero_mean=False)(x[:1])
    assert kept.std().item() == pytest.approx(1, rel=1e-6)
    assert kept.mean().item() == pytest.approx(3, rel=1e-6)
    assert torch.equal(ops.ClipRange(1.0, 2.0)(x).unique(), torch.tensor([1.0, 2.0]))
    ranged = ops.ChangeRange(-1.0, 3.0)(torch.tensor([-50.0, 0.0, 50.0]))
    assert ranged.tolist() == [-1.0, 1.0, 3.0]
    assert ops.MultiplyBy(0.5, decay_factor=0.1)(torch.ones(1), 6).item() == pytest.approx(1.0)
    assert ops.MultiplyBy(0.5)(torch.ones(1)).item() == 0.5
    with pytest.raises(TypeError, match="iteration"):
        ops.MultiplyBy(0.5, decay_factor=0.1)(torch.ones(1))


def test_fourier_smoothing():
    constant = torch.full((1, 1, 8, 10), 1.5, dtype=torch.float64)
    torch.testing.assert_close(ops.FourierSmoothing(3)(constant), constant)
    x = rand(dtype=torch.float64)
    torch.testing.assert_close(ops.FourierSmoothing(0)(x), x)
    i, j = grid(8, 10)
    checkerboard = ((-1) ** (i + j))[None, None]  # the highest frequency: damped to zero
    assert ops.FourierSmoothing(2)(checkerboard).abs().max().item() < 1e-12


def test_divide_by_mean_of_absolute_divides_each_row_by_its_own_mean():
    x = rand()
    out = ops.DivideByMeanOfAbsolute()(x)
    torch.testing.assert_close(out.abs().flatten(1).mean(1), torch.ones(3))
    one = x[:1]
    assert torch.equal(ops.DivideByMeanOfAbsolute()(one), one / one.abs().view(1, -1).mean(-1))


def test_resize_and_grayscale():
    x = rand((2, 1, 4, 6))
    big = ops.Resize(2.0, resize_method="nearest")(x)
    assert big.shape == (2, 1, 8, 12)
    assert torch.equal(big[..., ::2, ::2], x)
    assert ops.Resize(0.7)(x).shape == (2, 1, 3, 4)  # round(2.8), round(4.2)
    rgb = ops.GrayscaleToRGB()(x)
    assert rgb.shape == (2, 3, 4, 6) and all(torch.equal(rgb[:, c], x[:, 0]) for c in range(3))
    with pytest.raises(ValueError, match="grayscale"):
        ops.GrayscaleToRGB()(rgb)


# ------------------------------------------------------------------------------------------
# Masks from the lab's MEI table (duck-typed DataJoint tables of both generations)
# ------------------------------------------------------------------------------------------

KEY = dict(
    src_method_fn="mei.methods.gradient_ascent",
    inner_ensemble_hash="inner",
    outer_ensemble_hash="outer",
    inner_method_hash="m_in",
    outer_method_hash="m_out",
    unit_id=7,
)
MEIS = {
    "outer": torch.rand(1, 2, 9, 11, generator=gen(2)),
    "inner": torch.rand(1, 2, 9, 11, generator=gen(3)) * 0.5,
}


def _saved(mei):
    buffer = io.BytesIO()
    torch.save(mei, buffer)
    return buffer.getvalue()


class Relation:
    """A DataJoint-like MEI table: ``&`` restricts, ``fetch1("mei", ...)`` answers as
    DataJoint 0.14 (a downloaded path) or 2.x (no download_path; a tensor, an object with
    ``read()``, or one with ``download(dir)``)."""

    fetched: list[dict] = []

    def __init__(self, style="dj014", restriction=None):
        self.style = style
        self.restriction = dict(restriction or {})

    def __and__(self, restriction):
        return Relation(self.style, {**self.restriction, **restriction})

    def fetch1(self, attribute, **kwargs):
        assert attribute == "mei"
        r = self.restriction
        assert set(r) == {"method_fn", "ensemble_hash", "method_hash", "unit_id"}
        assert r["method_fn"] == KEY["src_method_fn"] and r["unit_id"] == 7
        which = r["ensemble_hash"]
        assert r["method_hash"] == {"outer": "m_out", "inner": "m_in"}[which]
        Relation.fetched.append(r)
        mei = MEIS[which]
        if self.style == "dj014":
            path = Path(kwargs["download_path"]) / f"{which}.pt"
            path.write_bytes(_saved(mei))
            return str(path)
        if "download_path" in kwargs:
            raise TypeError("fetch1() got an unexpected keyword argument 'download_path'")
        if self.style == "tensor":
            return mei
        if self.style == "read":
            return types.SimpleNamespace(read=lambda: _saved(mei))

        def download(directory):
            path = Path(directory) / f"{which}-dl.pt"
            path.write_bytes(_saved(mei))
            return path

        return types.SimpleNamespace(download=download)


class MEITableForTests(Relation):
    """Named by its dotted path in a config; made with no arguments, as a table class."""

    def __init__(self):
        super().__init__("dj014")


RING = ((MEIS["outer"][0][1] - MEIS["inner"][0][1]) > 0.2) * 1
CENTER = (MEIS["inner"][0][1] > 0.3) * 1


@pytest.mark.parametrize("style", ["dj014", "tensor", "read", "download"])
def test_masks_are_fetched_from_the_mei_table(style, tmp_path):
    table = Relation(style)
    x = rand()
    blurred = ops.GaussianBlur(1.0)(x)
    ring = ops.GaussianBlurforRing(
        1.0, KEY, mask_thres_for_ring=0.2, mei_table=table, download_path=str(tmp_path)
    )
    assert torch.equal(ring.ring_mask, RING) and RING.any() and not RING.all()
    assert torch.equal(ring(x), blurred * RING)
    center = ops.GaussianBlurforCenter(1.0, KEY, mei_table=table, download_path=str(tmp_path))
    assert torch.equal(center(x), blurred * CENTER)
    surround = ops.GaussianBlurforSurround(1.0, KEY, mei_table=table, download_path=str(tmp_path))
    assert torch.equal(surround(x), blurred * (1 - CENTER))


def test_the_mei_table_by_dotted_path_and_the_download_path_from_the_environment(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(ops, "fetch_download_path", str(tmp_path))
    center = ops.GaussianBlurforCenter(
        1.0, KEY, mask_thres=0.3, mei_table=f"{__name__}.MEITableForTests"
    )
    assert torch.equal(center.center_mask, CENTER)
    assert (tmp_path / "inner.pt").exists()


@pytest.mark.parametrize(
    "cls, mask", [("GaussianBlurforRing", "ring_mask"), ("GaussianBlurforCenter", "center_mask")]
)
def test_a_missing_mask_source_is_a_clear_error(cls, mask):
    with pytest.raises(MissingMaskSource, match=rf"pass {mask}=.* or mei_table="):
        getattr(ops, cls)(1.0, KEY)
    assert issubclass(MissingMaskSource, ValueError)


# ------------------------------------------------------------------------------------------
# Backgrounds (numpy's and Python's global generators, as the original)
# ------------------------------------------------------------------------------------------


def test_white_noise_background():
    op = ops.WhiteNoiseBackground(0.0, 2.0, shape=(6, 8), strength=0.5)
    np.random.seed(3)
    first = op(None, 0)
    assert first.dtype == torch.float32 and first.shape == (6, 8)
    assert first.abs().max().item() == pytest.approx(2.12 * 0.5)
    np.random.seed(3)
    assert torch.equal(op(rand(), 5), first)
    assert op.for_elements([gen(0), gen(1)]) is op and op.per_row is False


@pytest.fixture
def fake_nnfabrik(monkeypatch):
    images = torch.arange(6 * 5 * 7, dtype=torch.float32).reshape(6, 1, 5, 7)
    calls = []

    def get_data(dataset_fn, config):
        calls.append((dataset_fn, config))
        loader = [(images[:3], None), (images[3:], None)]
        return {tier: {"scan": loader} for tier in ["train", "test", "validation"]}

    builder = types.ModuleType("nnfabrik.builder")
    builder.get_data = get_data
    package = types.ModuleType("nnfabrik")
    package.builder = builder
    monkeypatch.setitem(sys.modules, "nnfabrik", package)
    monkeypatch.setitem(sys.modules, "nnfabrik.builder", builder)
    return images[:, 0], calls


def test_natural_image_backgrounds(fake_nnfabrik):
    images, calls = fake_nnfabrik
    op = ops.NatImgBackground("lab.datasets.static", ["/data/scan.zip"], dataset_name="scan")
    out = op(None, 0)
    assert calls[0][0] == "lab.datasets.static" and calls[0][1]["paths"] == ["/data/scan.zip"]
    assert any(torch.equal(out, im) for im in images)
    assert len(op.images) == 3 * len(images)  # train, test and validation
    normed = ops.NatImgBackground("f", "p", norm=3.0, dataset_name="scan")(None, 0)
    assert normed.norm().item() <= 3.0 + 1e-5 and normed.max().item() <= 2.12
    high = ops.NatImgBackgroundHighNorm("f", "p", start_norm=1.0, end_norm=5.0, dataset_name="scan")
    got = high(None, 3)  # one draw
    assert any(torch.equal(got, im) for im in images)  # unscaled, as the original


def test_natural_image_backgrounds_need_nnfabrik(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnfabrik", None)
    with pytest.raises(ImportError, match="install nnfabrik"):
        ops.NatImgBackground("f", "p")(None, 0)


# ------------------------------------------------------------------------------------------
# utils, core, models, background_helper
# ------------------------------------------------------------------------------------------


def test_varargin_compose_combine():
    @varargin
    def f(x, iteration=None):
        return (x, iteration)

    assert f(1, iteration=2, other=3) == (1, 2)
    assert f(1, 4) == (1, 4)

    def g(x, **kwargs):
        return kwargs

    assert varargin(g) is g
    x = rand()
    composed = Compose([ops.MultiplyBy(2.0, decay_factor=1.0), ops.ClipRange(-1, 1)])
    assert torch.equal(composed(x, iteration=2, extra=0), torch.clamp(x * 3, -1, 1))
    assert composed[1].x_max == 1 and Compose([])(x) is None
    combined = Combine([ops.LpNorm(p=2), ops.TotalVariation(0.1)])
    expected = ops.LpNorm(p=2)(x) + ops.TotalVariation(0.1)(x)
    torch.testing.assert_close(combined(x, iteration=1), expected)
    assert Combine([])(x) is None


def test_core_gradient_ascent_finds_the_linear_neurons_optimum(capsys):
    w = rand((1, 1, 5, 5), seed=1)
    x0 = rand((1, 1, 5, 5), seed=2)
    opt_x, fevals, reg_terms = gradient_ascent(
        lambda x: (w * x).sum(),
        x0,
        post_update=ops.ChangeNorm(2.0),
        regularization=ops.LpNorm(weight=0.0, p=2),
        step_size=0.5,
        num_iterations=50,
        print_iters=25,
    )
    torch.testing.assert_close(opt_x, 2.0 * w / w.norm(), atol=1e-4, rtol=1e-4)
    assert len(fevals) == len(reg_terms) == 51
    assert fevals[-1] == pytest.approx(2.0 * w.norm().item(), rel=1e-4)
    assert "Iter 25" in capsys.readouterr().out
    saved, _, _ = gradient_ascent(lambda x: (w * x).sum(), x0, num_iterations=4, save_iters=2)
    assert isinstance(saved, list) and len(saved) == 2
    with pytest.raises(ValueError, match="float32"):
        gradient_ascent(lambda x: x.sum(), x0.double())
    with pytest.raises(FeatureVisException, match="Gradient did not reach x"):
        gradient_ascent(lambda x: torch.ones((), requires_grad=True), x0, num_iterations=1)


class Readout(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x, readout_key, eye_pos=None, behavior=None):
        assert readout_key == "scan"
        return self.scale * x.flatten(1)[:, :4]


def test_ensemble_averages_its_models():
    models = [Readout(1.0), Readout(3.0)]
    x = rand((2, 1, 3, 3))
    per_image = Ensemble(models, "scan", neuron_idx=slice(0, 2), average_batch=False, device="cpu")
    torch.testing.assert_close(per_image(x), 2 * x.flatten(1)[:, :2])
    averaged = Ensemble(models, "scan", device="cpu")
    torch.testing.assert_close(averaged(x), (2 * x.flatten(1)[:, :4]).mean(0))
    assert averaged.models[0] is not models[0]


def test_vgg19_needs_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="torchvision"):
        VGG19Core(3, device="cpu")


def test_background_helper():
    freqs = bg.rfft2d_freqs(6, 8)
    assert freqs.shape == (6, 5) and freqs[0, 0] == 0
    assert freqs[3, 4] == pytest.approx(math.sqrt(0.5**2 + 0.5**2))
    assert bg.rfft2d_freqs(6, 7).shape == (6, 5)  # odd width: one more column
    np.random.seed(0)
    image = bg.bg_gen()
    assert image.shape == (72, 128)
    np.random.seed(0)
    assert np.array_equal(bg.bg_gen(), image)
    in_unit = bg.bg_gen(norm_method=1)
    assert in_unit.min() >= 0 and in_unit.max() <= 1
    sigmoid = bg.bg_gen(norm_method=2)
    assert sigmoid.min() >= 0 and sigmoid.max() <= 1 and 0 < sigmoid.mean() < 1
    with pytest.raises(ValueError, match="norm_method"):
        bg.bg_gen(norm_method=3)
    noise = bg.bg_wn(0.0, 1.0, (5, 6))
    assert noise.dtype == np.float64 and np.abs(noise).max() == pytest.approx(2.12)
    loaders = {t: {"scan": [(torch.ones(2, 1, 3, 4), None)]} for t in ("train", "test")}
    stacked = bg.bg_nat_img(loaders, "scan", tiers=("train", "test"))
    assert stacked.shape == (4, 3, 4)


def test_no_warnings_from_the_ops_themselves():
    x = rand()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for case in CASES:
            if not case.startswith("Similarity"):
                build(case)(rand(shape_for(case)), 2)
        ops.Resize(2.0)(x)


def test_pairs_stored_as_lists_count_as_tuples():
    """A config read back from a database may hold lists where the original took tuples."""
    x = rand()
    assert torch.equal(ops.GaussianBlur([1.0, 2.0])(x), ops.GaussianBlur((1.0, 2.0))(x))
    torch.manual_seed(0)
    from_list = ops.Jitter([2, 1])(x)
    torch.manual_seed(0)
    assert torch.equal(from_list, ops.Jitter((2, 1))(x))
    assert repr(ops.GaussianBlur([1.0, 2.0])) == (
        "GaussianBlur(sigma=[1.0, 2.0], decay_factor=None, truncate=4, pad_mode='reflect', "
        "mei_only=False)"
    )


@pytest.mark.parametrize("case", ["GaussianBlur", "Jitter", "GaussianBlurforRing"])
def test_ops_survive_copy_and_pickle(case):
    import copy
    import pickle

    op = build(case).for_elements([gen(0)])  # a generator at its seed's start, copied along
    expected = build(case).for_elements([gen(0)])(rand(), 2)
    for clone in (copy.deepcopy(op), pickle.loads(pickle.dumps(op))):
        assert repr(clone) == repr(op)
        assert torch.equal(clone(rand(), 2), expected)
