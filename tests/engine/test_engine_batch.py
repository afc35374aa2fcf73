"""A batch of MEIs gives each MEI exactly what a run of its own gives."""

import collections

import pytest
import torch
from models import LinearNeurons, SmallConvNet, base_config
from step_watch import StepCounter
from torch.utils._python_dispatch import TorchDispatchMode

from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel, UnitPerElement

SHAPE = (1, 1, 16, 16)


def _assert_batch_equals_single(model, config, units, seeds):
    batched = gradient_ascent_units(None, model, config, seeds, units, shape=SHAPE)
    assert len(batched) == len(units)
    for (mei, score, output), unit, seed in zip(batched, units, seeds, strict=True):
        single = gradient_ascent(
            None, ConstrainedOutputModel(model, unit), config, seed, shape=SHAPE
        )
        assert (mei - single[0]).abs().max().item() <= 1e-5
        assert abs(score - single[1]) <= 1e-4 * max(1.0, abs(score))
        assert output.keys() == single[2].keys()
        for key in output:
            assert output[key]["times"] == single[2][key]["times"]


def test_batched_equals_single_with_full_pipeline():
    config = base_config(
        optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.05}},
        transform={"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}},
        regularization={"path": "mei.regularization.TotalVariation", "kwargs": {"weight": 0.01}},
        precondition={"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.0}},
        postprocessing={
            "path": "mei.postprocessing.PNormConstraintAndClip",
            "kwargs": {"norm_value": 8.0, "p": 2, "max_pixel_value": 1.5, "min_pixel_value": -1.5},
        },
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 30}},
        objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 5}}],
    )
    _assert_batch_equals_single(SmallConvNet(), config, units=[0, 3, 5, 3], seeds=[1, 2, 3, 4])


def test_elements_stop_on_their_own_and_stay_fixed():
    # EarlyStopping stops elements at different steps; each must match its single run.
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.5}},
        stopper={
            "path": "mei.stoppers.EarlyStopping",
            "kwargs": {"patience": 3, "min_delta": 1e-3, "max_iter": 200},
        },
        objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
    )
    model = SmallConvNet()
    batched = gradient_ascent_units(None, model, config, 5, [0, 1, 2, 4], shape=SHAPE)
    lengths = {len(out["mei.objectives.EvaluationObjective"]["times"]) for _, _, out in batched}
    assert len(lengths) > 1, "the test needs elements that stop at different steps"
    _assert_batch_equals_single(model, config, units=[0, 1, 2, 4], seeds=[5] * 4)


def test_coupling_optimizer_falls_back_to_one_by_one():
    config = base_config(
        optimizer={"path": "torch.optim.LBFGS", "kwargs": {"lr": 0.1, "max_iter": 2}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 5}},
    )
    _assert_batch_equals_single(SmallConvNet(), config, units=[1, 2], seeds=[0, 0])


def test_batch_size_chunks_give_the_same_results():
    model = SmallConvNet()
    config = base_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 10}}
    )
    whole = gradient_ascent_units(None, model, config, 0, [0, 1, 2, 3, 4], shape=SHAPE)
    chunked = gradient_ascent_units(
        None, model, config, 0, [0, 1, 2, 3, 4], shape=SHAPE, batch_size=2
    )
    for a, b in zip(whole, chunked, strict=True):
        assert (a[0] - b[0]).abs().max() <= 1e-5


def test_norms_are_per_element_in_a_batch():
    model = LinearNeurons(shape=(1, 16, 16), n=4)
    results = gradient_ascent_units(None, model, base_config(), 0, [0, 1, 2, 3], shape=SHAPE)
    for unit, (mei, _, _) in enumerate(results):
        assert mei.norm().item() == pytest.approx(3.0, abs=1e-4)
        w = model.weight[unit].flatten()
        assert torch.nn.functional.cosine_similarity(mei.flatten(), w, dim=0) > 0.999


def test_unit_per_element_rejects_a_batch_of_the_wrong_size():
    with pytest.raises(ValueError, match="batch of 2"):
        UnitPerElement(SmallConvNet(), [0, 1])(torch.zeros(3, 1, 16, 16))


class _Written(TorchDispatchMode):
    """Counts the elements of every tensor the operators of a run make."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.elements += t.numel()
        return out


@pytest.mark.parametrize(
    "transform",
    [
        None,
        {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}},
        {"path": "mei.transforms.RandomCrop", "kwargs": {"height": 12, "width": 12}},
        {"path": "mei.legacy.ops.Jitter", "kwargs": {"max_jitter": 2}},  # one generator per row
    ],
)
def test_a_step_writes_memory_in_proportion_to_the_batch(transform):
    """A component that handles each element on its own must not take the element out of the
    batch in a way whose gradient is a whole batch of zeros (``x[b]``): B of them per step
    would make a step's memory traffic grow with B squared."""

    def written(b):
        config = base_config(
            stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 4}},
            transform=transform,
        )
        seen = 12 if transform and transform["path"].endswith("RandomCrop") else 14
        model = LinearNeurons(shape=(1, seen, seen), n=4)
        units = [i % 4 for i in range(b)]
        with _Written() as count:
            gradient_ascent_units(None, model, config, list(range(b)), units, shape=(1, 1, 14, 14))
        return count.elements

    # linear: 4x the batch, under 4x the elements (fixed costs); by rows taken as x[b] it was
    # 8.5-9x for Jitter
    assert written(32) / written(8) < 4.5


def test_shifted_rows_are_bitwise_those_of_one_row_at_a_time():
    """Jitter's batch shift (one pad, one gather) against the original's shift of each row:
    the same values and the same gradient, for images and movies, any offsets in range."""
    from mei._shift import shift_one, shift_rows

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 1, 9, 11), (4, 3, 8, 8), (3, 2, 4, 10, 12), (1, 1, 6, 6)]:
        for dtype in (torch.float32, torch.float64):
            h, w = shape[-2:]
            m = min(h, w) - 1
            dys = torch.randint(-m, m + 1, (shape[0],), generator=g).tolist()
            dxs = torch.randint(-m, m + 1, (shape[0],), generator=g).tolist()
            x = torch.randn(shape, generator=g, dtype=dtype)
            upstream = torch.randn(shape, generator=g, dtype=dtype)
            one, batch = x.clone().requires_grad_(), x.clone().requires_grad_()
            by_row = torch.stack([shift_one(one[b], dys[b], dxs[b]) for b in range(shape[0])])
            at_once = shift_rows(batch, dys, dxs)
            (by_row * upstream).sum().backward()
            (at_once * upstream).sum().backward()
            assert torch.equal(by_row, at_once), (shape, dys, dxs)
            assert torch.equal(one.grad, batch.grad), (shape, dys, dxs)


def test_cropped_rows_are_bitwise_those_of_one_row_at_a_time():
    from mei._shift import crop_rows

    g = torch.Generator().manual_seed(1)
    for shape, (height, width) in [((5, 1, 9, 11), (4, 7)), ((3, 2, 4, 10, 12), (10, 3))]:
        h, w = shape[-2:]
        tops = torch.randint(0, h - height + 1, (shape[0],), generator=g).tolist()
        lefts = torch.randint(0, w - width + 1, (shape[0],), generator=g).tolist()
        x = torch.randn(shape, generator=g)
        upstream = torch.randn(*shape[:-2], height, width, generator=g)
        one, batch = x.clone().requires_grad_(), x.clone().requires_grad_()
        by_row = torch.stack(
            [
                one[b][..., t : t + height, s : s + width]
                for b, (t, s) in enumerate(zip(tops, lefts, strict=True))
            ]
        )
        at_once = crop_rows(batch, tops, lefts, height, width)
        (by_row * upstream).sum().backward()
        (at_once * upstream).sum().backward()
        assert torch.equal(by_row, at_once) and torch.equal(one.grad, batch.grad)


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("mei.transforms.Jitter", {"max_jitter": 2}),
        ("mei.legacy.ops.Jitter", {"max_jitter": 2}),
        ("mei.transforms.RandomCrop", {"height": 10, "width": 10}),
        ("mei.legacy.ops.RandomCrop", {"height": 10, "width": 10}),
    ],
)
def test_a_jittered_step_calls_as_many_operators_at_any_batch_size(path, kwargs, monkeypatch):
    """A step of a batch with Jitter or RandomCrop issues the same operators at B = 4 and
    B = 16 (on a GPU each is a kernel launch; per-row shifts were B pads forward and B
    backward), apart from each element's draw of its offsets from its own generator on the
    host."""
    host_draws = {"aten.randint", "aten._local_scalar_dense"}

    class Operators(TorchDispatchMode):
        def __init__(self, steps):
            super().__init__()
            self.steps = steps
            self.by_step = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) not in host_draws:
                self.by_step[self.steps.step] += 1
            return func(*args, **(kwargs or {}))

    def per_step(b):
        config = base_config(
            stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 6}},
            transform={"path": path, "kwargs": kwargs},
        )
        seen = kwargs.get("height", 12)
        model = LinearNeurons(shape=(1, seen, seen), n=4)
        units, seeds = [i % 4 for i in range(b)], list(range(b))
        operators = Operators(StepCounter(monkeypatch))
        with operators:
            gradient_ascent_units(None, model, config, seeds, units, shape=(1, 1, 12, 12))
        return [operators.by_step[i] for i in range(2, 7)]  # steps between first and last

    assert per_step(4) == per_step(16)
