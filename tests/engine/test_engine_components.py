"""Each component's contract, on small tensors with known answers."""

import subprocess
import sys

import pytest
import torch

from mei import initial, postprocessing, preconditioning, regularization, transforms
from mei.config import resolve_config
from mei.import_helpers import resolve_path


def _batch(seed=0, shape=(3, 2, 12, 10)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_change_norm_sets_each_elements_norm():
    x = _batch() * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1, 1)
    out = postprocessing.ChangeNorm(2.5)(x, 0)
    assert torch.allclose(out.flatten(1).norm(dim=1), torch.full((3,), 2.5))
    # direction unchanged
    assert torch.allclose(
        out / out.flatten(1).norm(dim=1).view(3, 1, 1, 1),
        x / x.flatten(1).norm(dim=1).view(3, 1, 1, 1),
        atol=1e-6,
    )


def test_clip_range_and_pnorm_constraints_act_per_element():
    x = _batch() * 3
    clipped = postprocessing.ClipRange(-1, 0.5)(x, 0)
    assert clipped.min() >= -1 and clipped.max() <= 0.5
    small = x.clone()
    small[0] *= 1e-3
    out = postprocessing.PNormConstraint(norm_value=10.0, p=2)(small, 0)
    norms = out.flatten(1).norm(dim=1)
    assert torch.allclose(out[0], small[0])  # under the bound: untouched
    assert torch.allclose(norms[1:], torch.full((2,), 10.0), atol=1e-4)
    both = postprocessing.PNormConstraintAndClip(
        norm_value=10.0, p=2, max_pixel_value=0.3, min_pixel_value=-0.3
    )(x, 0)
    assert both.abs().max() <= 0.3 + 1e-7 and (both.flatten(1).norm(dim=1) <= 10.0 + 1e-4).all()


def test_change_std_per_element():
    out = postprocessing.ChangeStd(0.2)(
        _batch() * torch.tensor([1.0, 9.0, 0.3]).view(3, 1, 1, 1), 0
    )
    assert torch.allclose(out.flatten(1).std(dim=1), torch.full((3,), 0.2), atol=1e-6)


def test_gaussian_blur_keeps_constants_and_the_mean_and_smooths():
    constant = torch.full((2, 1, 9, 9), 3.0)
    assert torch.allclose(preconditioning.GaussianBlur(1.5)(constant, 0), constant)
    x = _batch()
    blurred = preconditioning.GaussianBlur(1.0)(x, 0)
    assert blurred.shape == x.shape
    assert torch.allclose(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.05)
    assert transforms_tv(blurred) < 0.5 * transforms_tv(x)
    # an impulse becomes a normalized Gaussian with the requested width
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[..., 15, 15] = 1
    kernel = preconditioning.gaussian_blur(impulse, 2.0)[0, 0]
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-5)
    ys = torch.arange(31.0) - 15
    variance = (kernel.sum(1) * ys**2).sum().item()
    assert variance == pytest.approx(4.0, rel=0.02)


def test_gaussian_blur_matches_scipy_for_the_original_truncation():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _batch(shape=(1, 1, 20, 20))
    ours = preconditioning.gaussian_blur(x, 1.3, truncate=4.0)[0, 0].numpy()
    # scipy's 'mirror' is torch's 'reflect'
    theirs = ndimage.gaussian_filter(x[0, 0].double().numpy(), 1.3, truncate=4.0, mode="mirror")
    assert abs(ours - theirs).max() < 1e-5


def test_gaussian_blur_decay_schedule():
    blur = preconditioning.GaussianBlur(2.0, decay_factor=-0.5)
    x = _batch()
    assert torch.equal(blur(x, 10), x)  # sigma reached zero: no blur
    assert not torch.equal(blur(x, 2), x)


def transforms_tv(x):
    return regularization.total_variation(x).sum().item()


def test_total_variation_uses_true_neighbours_and_penalizes_edges():
    flat = torch.ones(1, 1, 6, 6)
    assert regularization.TotalVariation()(flat, 0).item() == 0
    edge = torch.zeros(1, 1, 6, 6)
    edge[..., 3:, :] = 1.0  # one horizontal edge of height 1 across 6 columns
    assert regularization.TotalVariation(weight=2.0)(edge, 0).tolist() == [12.0]
    ramp = torch.arange(6.0).view(1, 1, 6, 1).expand(1, 1, 6, 6)
    assert regularization.TotalVariation()(ramp, 0).item() == 30.0  # 5 steps x 6 columns
    iso = regularization.TotalVariation(isotropic=True)(edge, 0)
    assert iso.item() == pytest.approx(5.0, abs=1e-2)  # 5 interior columns see the edge
    assert regularization.TotalVariation()(torch.stack([flat[0], edge[0]]), 0).tolist() == [
        0.0,
        6.0,
    ]


def test_lp_norm_and_reference_and_weighted_sum():
    x = _batch()
    assert torch.allclose(
        regularization.LpNorm(weight=0.5, p=2)(x, 0), 0.5 * x.flatten(1).norm(dim=1)
    )
    ref = torch.zeros(2, 12, 10)
    assert torch.allclose(
        regularization.L2ToReference(ref, weight=1.0)(x, 0), (x**2).flatten(1).sum(1)
    )
    total = regularization.WeightedSum(
        [
            {"path": "mei.regularization.LpNorm", "kwargs": {"p": 2}, "weight": 2.0},
            regularization.TotalVariation(),
        ]
    )(x, 0)
    expected = 2 * x.flatten(1).norm(dim=1) + regularization.total_variation(x)
    assert torch.allclose(total, expected)


def test_fourier_smoothing_keeps_mean_and_removes_high_frequencies():
    x = _batch()
    out = preconditioning.FourierSmoothing(4.0)(x, 0)
    assert out.shape == x.shape
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)
    assert transforms_tv(out) < 0.5 * transforms_tv(x)
    assert torch.allclose(preconditioning.FourierSmoothing(0.0)(x, 0), x, atol=1e-5)


def test_multiply_and_divide_by_mean_of_absolute():
    x = _batch() * torch.tensor([1.0, 4.0, 0.5]).view(3, 1, 1, 1)
    assert torch.allclose(preconditioning.MultiplyBy(3.0)(x, 5), 3 * x)
    assert torch.allclose(preconditioning.MultiplyBy(1.0, decay_factor=-0.1)(x, 3), 0.8 * x)
    out = preconditioning.DivideByMeanOfAbsolute()(x, 0)
    assert torch.allclose(out.abs().flatten(1).mean(1), torch.ones(3))


def test_transforms_shapes_and_determinism():
    x = _batch(shape=(2, 1, 12, 10))
    assert transforms.Identity()(x, 0) is x
    assert transforms.GrayscaleToRGB()(x, 0).shape == (2, 3, 12, 10)
    with pytest.raises(
        ValueError, match=r"expects \(B, 1, H, W\) or \(B, 1, T, H, W\), got \(3, 2, 12, 10\)"
    ):
        transforms.GrayscaleToRGB()(_batch(), 0)
    assert transforms.Resize(0.5)(x, 0).shape == (2, 1, 6, 5)
    changed = transforms.ChangeRange(-1, 2)(x, 0)
    assert changed.min() > -1 and changed.max() < 2
    crop = transforms.RandomCrop(5, 4)
    assert crop(x, 0).shape == (2, 1, 5, 4) and crop.final(x).shape == (2, 1, 5, 4)
    composed = transforms.Compose(
        [
            {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}},
            transforms.GrayscaleToRGB(),
        ]
    )
    assert composed(x, 0).shape == (2, 3, 12, 10)


def test_jitter_shifts_by_the_given_amount():
    # (element b of a batch seeing what a batch of one sees: test_component_base)
    x = _batch(shape=(2, 1, 12, 10))
    assert torch.equal(transforms.jitter(x[0], 0, 0), x[0])
    shifted = transforms.jitter(x[0], 2, -1)
    assert torch.equal(shifted[..., 2:, :-1], x[0][..., :-2, 1:])
    assert transforms.Jitter(2).final(x) is x


def test_initial_guesses_are_seeded_and_shaped():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(
        initial.RandomNormal()(1, 2, 3, generator=g()),
        initial.RandomNormal()(1, 2, 3, generator=g()),
    )
    null = initial.RandomNormalNullChannel(1, 0.5)(1, 3, 4, 4, generator=g())
    assert (null[:, 1] == 0.5).all() and null[:, 0].std() > 0
    uniform = initial.RandomUniform(-2, 3)(1, 1, 50, 50, generator=g())
    assert uniform.min() >= -2 and uniform.max() < 3
    start = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(initial.FromTensor(start)(1, 1, 4, 4), start)
    with pytest.raises(ValueError, match=r"does not fit the input shape \(1, 1, 5, 5\)"):
        initial.FromTensor(start)(1, 1, 5, 5)


def test_initial_from_file_restarts_from_a_stored_mei(tmp_path):
    start = torch.randn(1, 1, 4, 4)
    torch.save(start, tmp_path / "mei.pt")
    assert torch.equal(initial.FromFile(tmp_path / "mei.pt")(1, 1, 4, 4), start)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        initial.FromFile(tmp_path / "nope.pt")


def test_legacy_initial_guess_uses_the_seeded_global_generator():
    from mei.methods import draw_initial

    old = resolve_path("custom_components.legacy_initial")()
    a = draw_initial(old, (1, 1, 4, 4), 9)
    torch.manual_seed(9)
    assert torch.equal(a, torch.randn(1, 1, 4, 4))


LEGACY = {
    "mei.legacy.ops.GaussianBlur": {"sigma": 1.0},
    "mei.legacy.ops.ChangeNorm": {"norm": 1.0},
    "mei.legacy.ops.ClipRange": {"x_min": -1, "x_max": 1},
    "mei.legacy.ops.Jitter": {"max_jitter": 1},
    "mei.legacy.ops.TotalVariation": {"weight": 0.1},
    "mei.legacy.ops.LpNorm": {"weight": 0.1, "p": 6},
    "mei.legacy.ops.FourierSmoothing": {"freq_exp": 2},
    "mei.legacy.ops.MultiplyBy": {"const": 0.1, "decay_factor": 0.01},
    "mei.legacy.ops.DivideByMeanOfAbsolute": {},
    "mei.legacy.ops.ChangeStd": {"std": 1.0},
    "mei.legacy.ops.ChangeRange": {"x_min": 0, "x_max": 1},
    "mei.legacy.ops.Resize": {"scale_factor": 1.0},
    "mei.legacy.ops.GrayscaleToRGB": {},
    "mei.legacy.ops.RandomCrop": {"height": 4, "width": 4},
    "mei.legacy.ops.Identity": {},
    "mei.postprocessing.PNormConstraint": {"norm_value": 5.0, "p": 2},
    "mei.postprocessing.PNormConstraintAndClip": {
        "norm_value": 5.0,
        "p": 2,
        "max_pixel_value": 1,
        "min_pixel_value": -1,
    },
    "mei.initial.RandomNormalNullChannel": {"null_channel": 0},
}


@pytest.mark.parametrize("path", sorted(LEGACY))
def test_legacy_paths_resolve_and_reprs_show_arguments(path):
    component = resolve_path(path)(**LEGACY[path])
    text = repr(component)
    assert text.startswith(path.rsplit(".", 1)[1] + "(")
    for name, value in LEGACY[path].items():
        assert f"{name}={value!r}" in text


def test_a_stored_lab_config_with_legacy_paths_runs():
    from models import SmallConvNet

    from mei.methods import gradient_ascent
    from mei.modules import ConstrainedOutputModel

    config = {
        "device": "cpu",
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "precondition": {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 5}},
        "transform": {"path": "mei.legacy.ops.Jitter", "kwargs": {"max_jitter": 1}},
        "regularization": {"path": "mei.legacy.ops.TotalVariation", "kwargs": {"weight": 0.01}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
    }
    assert resolve_config(config).batchable
    model = ConstrainedOutputModel(SmallConvNet(), 2)
    mei, score, output = gradient_ascent(None, model, config, 0, shape=(1, 1, 16, 16))
    evaluations = output["mei.objectives.EvaluationObjective"]["values"]
    assert len(evaluations) == 21 and score == evaluations[-1]
    assert torch.linalg.vector_norm(mei).item() == pytest.approx(5.0, rel=1e-5)  # ChangeNorm


def test_legacy_ops_imports_nothing_beyond_torch_and_numpy():
    code = (
        "import sys, torch, numpy\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"
        "import mei.legacy.ops\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['mei']"
