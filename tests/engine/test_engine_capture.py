"""The captured step (``"capture": true``, see :mod:`mei.capture`) gives the eager step's
numbers, and falls back to the eager step, with one logged reason, where it cannot capture.

On the CPU the captured path runs its step function eagerly with its outputs copied into
fixed buffers that every step overwrites, as a CUDA graph's replay does: what the record,
the stoppers and the objectives keep must be their own copies, or these tests see the last
step's values everywhere. On CUDA (skipped here without one) the step is a real CUDA graph.
"""

from __future__ import annotations

import logging

import pytest
import torch
from models import SmallConvNet, base_config
from test_engine_host_reads import COMPONENTS

from mei import capture
from mei._counter_rng import CounterStreams, element_key, hash32
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel
from mei.optimization import MEI

SHAPE = (1, 1, 16, 16)
STEPS = 12
OBJECTIVES = [
    {"path": f"mei.objectives.{name}", "kwargs": {"interval": 5}}
    for name in (
        "EvaluationObjective",
        "RegularizationObjective",
        "PostProcessedInputObjective",
        "GradientObjective",
    )
]
#: built-in components beyond those of the host-read checks
MORE = {
    "Identity": {"transform": ("mei.transforms.Identity", {})},
    "Compose of Resize and ChangeRange": {
        "transform": (
            "mei.transforms.Compose",
            {
                "transforms": [
                    {"path": "mei.transforms.Resize", "kwargs": {"scale_factor": 1.0, "resize_method": "bicubic"}},
                    {"path": "mei.transforms.ChangeRange", "kwargs": {"x_min": -2, "x_max": 2}},
                ]
            },
        )
    },
    "WeightedSum": {
        "regularization": (
            "mei.regularization.WeightedSum",
            {
                "regularizations": [
                    {"path": "mei.regularization.TotalVariation", "weight": 0.1},
                    {"path": "mei.regularization.LpNorm", "kwargs": {"weight": 0.05}},
                ]
            },
        )
    },
    "PNormConstraintAndClip": {
        "postprocessing": ("mei.postprocessing.PNormConstraintAndClip", {"norm_value": 3})
    },
    "legacy ClipRange": {"postprocessing": ("mei.legacy.ops.ClipRange", {"x_min": -1, "x_max": 1})},
    "legacy DivideByMeanOfAbsolute": {
        "precondition": ("mei.legacy.ops.DivideByMeanOfAbsolute", {}),
    },
    "legacy MultiplyBy": {"precondition": ("mei.legacy.ops.MultiplyBy", {"const": 0.5})},
    "legacy LpNorm": {"regularization": ("mei.legacy.ops.LpNorm", {"weight": 0.1})},
    "legacy ChangeRange": {"transform": ("mei.legacy.ops.ChangeRange", {"x_min": -1, "x_max": 1})},
    "SGD with momentum": {"optimizer": ("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9})},
    "PhaseFourier": {"parameterization": ("mei.parameterization.PhaseFourier", {"decay_power": 1.0})},
}  # fmt: skip
BUILT_IN = {**COMPONENTS, **MORE}


def _entries(changes):
    return {slot: {"path": path, "kwargs": kwargs} for slot, (path, kwargs) in changes.items()}


def _config(**changes):
    defaults = {
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": STEPS}},
        "objectives": OBJECTIVES,
    }
    return base_config(**{**defaults, **changes})


def _assert_same(eager, captured):
    """Same MEIs, scores and logs (every logged tensor too), bitwise."""
    assert len(eager) == len(captured)
    for (mei_e, score_e, log_e), (mei_c, score_c, log_c) in zip(eager, captured, strict=True):
        assert torch.equal(mei_e, mei_c)
        assert score_e == score_c
        assert log_e.keys() == log_c.keys()
        for path in log_e:
            assert log_e[path]["times"] == log_c[path]["times"], path
            for a, b in zip(log_e[path]["values"], log_c[path]["values"], strict=True):
                if isinstance(a, torch.Tensor):
                    assert torch.equal(a, b), path
                else:
                    assert a == b, path


def _units(config, seeds=(1, 2, 3), units=(0, 3, 5), size=(16, 16)):
    model = SmallConvNet(size=size)
    return gradient_ascent_units(None, model, config, list(seeds), list(units), shape=SHAPE)


def _no_blockers(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "mei.capture"] == []


@pytest.fixture(autouse=True)
def _fresh_log(monkeypatch):
    """Each test sees every reason logged again (the log says each once per process)."""
    monkeypatch.setattr(capture, "_LOGGED", set())


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_a_captured_batch_gives_the_eager_numbers_with_every_built_in_component(name, caplog):
    config = _config(**_entries(BUILT_IN[name]))
    with caplog.at_level(logging.WARNING, "mei.capture"):
        captured = _units({**config, "capture": True})
    assert _no_blockers(caplog), caplog.text  # really the captured path
    _assert_same(_units(config), captured)


@pytest.mark.parametrize("name", ["GaussianBlur", "legacy GaussianBlur", "Fourier", "PhaseFourier"])
def test_a_captured_single_mei_gives_the_eager_numbers(name, caplog):
    config = _config(**_entries(BUILT_IN[name]))
    model = ConstrainedOutputModel(SmallConvNet(), 2)
    eager = gradient_ascent(None, model, config, 4, shape=SHAPE)
    with caplog.at_level(logging.WARNING, "mei.capture"):
        captured = gradient_ascent(None, model, {**config, "capture": True}, 4, shape=SHAPE)
    assert _no_blockers(caplog), caplog.text
    _assert_same([eager], [captured])


def test_captured_diverse_meis_and_video_meis_give_the_eager_numbers(caplog):
    from models import SeparableVideoNeurons, TwoStimulusNeuron

    diverse = _config(
        n_meis=3, regularization={"path": "mei.legacy.ops.Similarity", "kwargs": {"weight": 0.5}}
    )
    video = _config(
        precondition={"path": "mei.preconditioning.TemporalBlur", "kwargs": {"sigma": 1.0}}
    )
    runs = [
        (diverse, ConstrainedOutputModel(TwoStimulusNeuron(), 0, target_fn=torch.mean), (1, 1, 15, 15)),
        (video, ConstrainedOutputModel(SeparableVideoNeurons(), 0), (1, 1, 8, 15, 15)),
    ]  # fmt: skip
    for config, model, shape in runs:
        eager = gradient_ascent(None, model, config, 0, shape=shape)
        with caplog.at_level(logging.WARNING, "mei.capture"):
            captured = gradient_ascent(None, model, {**config, "capture": True}, 0, shape=shape)
        assert _no_blockers(caplog), caplog.text
        _assert_same([eager], [captured])


THRESHOLD = 1.04  # the three elements pass it at steps 0, ~24 and never (40 steps)


def test_elements_stopping_at_other_steps_are_frozen_in_the_captured_step():
    """A batched stopper that stops elements at their own step, after which their input stays
    as it was (the fixed mask of the graph); each equals its own eager result."""
    config = base_config(
        stopper={
            "path": "custom_components.EvaluationAbove",
            "kwargs": {"threshold": THRESHOLD, "max_steps": 40},
        },
        objectives=OBJECTIVES,
    )
    eager, captured = _units(config), _units({**config, "capture": True})
    assert len({len(log["mei.objectives.EvaluationObjective"]["times"]) for _, _, log in eager}) > 1
    _assert_same(eager, captured)


def test_a_record_keeps_its_own_copies_of_the_step(monkeypatch):
    """Every record's tensors stay those of its step after later steps (the fixed buffers
    are overwritten each step)."""
    records = []
    record_step = MEI.record_step

    def keep_all(mei, keep=None):
        records.append(record_step(mei, None))  # every attribute, every step
        return records[-1]

    monkeypatch.setattr(MEI, "record_step", keep_all)
    config = _config(**_entries(COMPONENTS["GaussianBlur"]))
    _units(config)
    eager, records[:] = list(records), []
    _units({**config, "capture": True})
    assert len(records) == len(eager) == STEPS + 1
    for a, b in zip(eager, records, strict=True):
        for name in ("evaluation", "input_", "transformed_input", "post_processed_input", "grad"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (a.i_iter, name)
        assert torch.equal(a.preconditioned_grad, b.preconditioned_grad)
    assert not torch.equal(records[0].grad, records[-1].grad)


BLOCKED = {
    "Jitter drawing on the host": (
        {"transform": {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}}},
        "transform mei.transforms.Jitter: it draws each element's numbers on the host",
    ),
    "a decaying blur": (
        {"precondition": {"path": "mei.preconditioning.GaussianBlur",
                          "kwargs": {"sigma": 2.0, "decay_factor": -0.1}}},
        "precondition mei.preconditioning.GaussianBlur: it changes with the step number",
    ),
    "the original's decaying blur": (
        {"precondition": {"path": "mei.legacy.ops.GaussianBlur",
                          "kwargs": {"sigma": 2.0, "decay_factor": -0.1}}},
        "precondition mei.legacy.ops.GaussianBlur: it changes with the step number",
    ),
    "Adam": (
        {"optimizer": {"path": "torch.optim.Adam", "kwargs": {"lr": 0.05}}},
        "optimizer torch.optim.adam.Adam keeps its step count on the host",
    ),
    "a lab's regularization": (
        {"regularization": {"path": "custom_components.ItemReadingPenalty", "kwargs": {}}},
        "regularization custom_components.ItemReadingPenalty does not declare",
    ),
    "a per-element stopper": (
        {"stopper": {"path": "mei.stoppers.EarlyStopping", "kwargs": {"max_iter": STEPS}}},
        "stopper mei.stoppers.EarlyStopping has no batched form",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BLOCKED))
def test_what_cannot_be_captured_runs_eagerly_and_says_why_once(name, caplog):
    changes, reason = BLOCKED[name]
    config = _config(**changes)
    with caplog.at_level(logging.WARNING, "mei.capture"):
        captured = [_units({**config, "capture": True}) for _ in range(2)]
    messages = [r.getMessage() for r in caplog.records if r.name == "mei.capture"]
    assert len(messages) == 1 and reason in messages[0], messages
    for run in captured:
        _assert_same(_units(config), run)


def test_lbfgs_runs_eagerly_and_says_why(caplog):
    config = base_config(
        optimizer={"path": "torch.optim.LBFGS", "kwargs": {"lr": 0.1, "max_iter": 3}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 4}},
        capture=True,
    )
    model = ConstrainedOutputModel(SmallConvNet(), 1)
    with caplog.at_level(logging.WARNING, "mei.capture"):
        captured = gradient_ascent(None, model, config, 0, shape=SHAPE)
    assert "torch.optim.LBFGS evaluates the model as often per step" in caplog.text
    eager = gradient_ascent(None, model, {**config, "capture": False}, 0, shape=SHAPE)
    _assert_same([eager], [captured])


def test_capturing_asks_for_capture_without_changing_the_config(caplog):
    """``capture.capturing()`` (what ``MEI.capture = True`` and ``mei worker --capture``
    use) captures runs whose stored config says nothing about it."""
    config = _config(**BLOCKED["Jitter drawing on the host"][0])
    with caplog.at_level(logging.WARNING, "mei.capture"):
        _units(config)
        assert caplog.text == ""
        with capture.capturing():
            _units(config)
    assert "draws each element's numbers on the host" in caplog.text
    assert not capture.requested()


def test_capture_must_be_true_or_false():
    from mei.errors import ConfigError

    with pytest.raises(ConfigError, match=r"capture.*true or false.*'yes'"):
        _units(_config(capture="yes"))


# --------------------------------------------------------------------------------------------
# "rng": "device": counter streams on the device


def test_device_streams_are_the_hash_of_key_and_draw_known_answer():
    """The streams' numbers, recomputed with Python integers: the same arithmetic on any
    device gives these numbers."""

    def mix(x):
        for shift, multiplier in ((16, 0x7FEB352D), (15, 0x5BD1E995), (13, 0x2C1B3C6D)):
            x = ((x ^ (x >> shift)) * multiplier) & 0xFFFFFFFF
        return x ^ (x >> 16)

    assert hash32(torch.tensor([0, 1, 2**32 - 1])).tolist() == [mix(0), mix(1), mix(2**32 - 1)]
    seeds = [0, 7, -3, 2**40 + 5]
    streams = CounterStreams(seeds)
    keys = [element_key(s) for s in seeds]
    for draw in range(3):
        values = streams.raw(2)
        for b, key in enumerate(keys):
            for n in range(2):
                step = mix((draw * 0x1E3779B9 + n) & 0xFFFFFFFF)
                assert values[b, n].item() == mix(key ^ step)


def test_device_streams_are_per_element_and_cover_their_range():
    alone = CounterStreams([5]).ints(-2, 2, 1000)
    together = CounterStreams([9, 5, 11]).ints(-2, 2, 1000)
    assert torch.equal(together[1:2], alone)  # an element's numbers are its own
    assert not torch.equal(together[0], together[2])
    counts = torch.bincount((together + 2).flatten(), minlength=5)
    assert counts.min() > 0.8 * 600 and counts.max() < 1.2 * 600  # 3000 draws over 5 values


@pytest.mark.parametrize(
    "transform, size",
    [
        ({"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": [2, 3]}}, (16, 16)),
        ({"path": "mei.transforms.RandomCrop", "kwargs": {"height": 12, "width": 13}}, (12, 13)),
        (
            {
                "path": "mei.transforms.Compose",
                "kwargs": {"transforms": [
                    {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}},
                ]},
            },
            (16, 16),
        ),
    ],
    ids=["Jitter", "RandomCrop", "Compose"],
)  # fmt: skip
def test_random_transforms_on_device_streams_are_captured_and_batch_like_single_runs(
    transform, size, caplog
):
    config = _config(transform=transform, rng="device")
    with caplog.at_level(logging.WARNING, "mei.capture"):
        captured = _units({**config, "capture": True}, size=size)
    assert _no_blockers(caplog), caplog.text
    eager = _units(config, size=size)
    _assert_same(eager, captured)
    # element b of the batch equals its run alone (up to the rounding of a batched conv)
    model = ConstrainedOutputModel(SmallConvNet(size=size), 3)
    single = gradient_ascent(None, model, config, 2, shape=SHAPE)
    assert torch.allclose(single[0], eager[1][0], atol=1e-5)


def test_device_jitter_and_crop_take_each_rows_offsets_from_its_stream():
    from mei._counter_rng import fold
    from mei._shift import shift_one
    from mei.transforms import Jitter, RandomCrop

    x = torch.randn(3, 2, 9, 10, generator=torch.Generator().manual_seed(0))
    jitter, crop = Jitter((2, 3)), RandomCrop(5, 6)
    jitter.use_streams(CounterStreams([4, 5, 6]))
    crop.use_streams(CounterStreams([4, 5, 6]))
    reference = CounterStreams([4, 5, 6])
    outputs = set()
    for _ in range(4):  # every call draws anew
        draws = reference.raw(2)
        dys, dxs = fold(draws[:, 0], -2, 2).tolist(), fold(draws[:, 1], -3, 3).tolist()
        shifted = jitter(x)
        for b in range(3):
            assert torch.equal(shifted[b], shift_one(x[b], dys[b], dxs[b]))
        tops, lefts = fold(draws[:, 0], 0, 4).tolist(), fold(draws[:, 1], 0, 4).tolist()
        cropped = crop(x)
        for b in range(3):
            t, s = tops[b], lefts[b]
            assert torch.equal(cropped[b], x[b, :, t : t + 5, s : s + 6])
        outputs.add((tuple(dys), tuple(dxs)))
    assert len(outputs) == 4


def test_rng_device_draws_the_start_as_separate_does():
    jitter = {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}}
    device = _units(base_config(rng="device", transform=jitter,
                                stopper={"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 1}},
                                optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.0}}))  # fmt: skip
    separate = _units(base_config(rng="separate", transform=jitter,
                                  stopper={"path": "mei.stoppers.MaxSteps", "kwargs": {"steps": 1}},
                                  optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 0.0}}))  # fmt: skip
    for a, b in zip(device, separate, strict=True):
        assert torch.equal(a[0], b[0])  # lr 0: the (postprocessed) start


# --------------------------------------------------------------------------------------------
# what components declare


def _declared_capturable():
    """Every built-in component of the lists above, built, that declares capturable."""
    from mei.config import resolve_config

    built = {}
    for name, changes in BUILT_IN.items():
        method = resolve_config(_config(**_entries(changes)))
        for slot in changes:
            spec = getattr(method, slot)
            if slot != "optimizer":
                built[name] = spec.build()
    return built


@pytest.mark.parametrize("name", sorted(n for n in BUILT_IN if n != "SGD with momentum"))
def test_a_capturable_component_does_the_same_at_every_step(name):
    """A graph replays the step it captured: a component declared capturable must not
    change with the step number it is given."""
    component = _declared_capturable()[name]
    assert component.capturable is True
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    if hasattr(component, "from_image"):  # a parameterization: params in, image out
        x = component.from_image(x)
        assert torch.equal(component(x), component(x.clone()))
        return
    if hasattr(component, "use_group"):
        component.use_group(1)
    early, late = component(x, 3), component(x, 3000)
    assert torch.equal(torch.as_tensor(early), torch.as_tensor(late))


# --------------------------------------------------------------------------------------------
# CUDA: a real graph

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize(
    "name", ["GaussianBlur", "Fourier", "legacy GaussianBlurforRing", "PhaseFourier"]
)
def test_cuda_captured_batch_replays_a_graph_with_the_eager_numbers(name, monkeypatch):
    graphs = []
    original = capture.StepGraph._capture

    def watched(self):
        original(self)
        graphs.append(self.captured)

    monkeypatch.setattr(capture.StepGraph, "_capture", watched)
    config = {**_config(**_entries(BUILT_IN[name])), "device": "cuda"}
    captured = _units({**config, "capture": True})
    assert graphs == [True]
    _assert_same(_units(config), captured)


@cuda
def test_cuda_captured_jitter_on_device_streams_gives_the_eager_and_cpu_draws():
    jitter = {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}}
    config = {**_config(transform=jitter, rng="device"), "device": "cuda"}
    _assert_same(_units(config), _units({**config, "capture": True}))
    cpu = CounterStreams([1, 2, 3]).raw(4)
    assert torch.equal(CounterStreams([1, 2, 3], "cuda").raw(4).cpu(), cpu)


@cuda
def test_cuda_a_model_that_reads_the_host_falls_back_after_a_failed_capture(caplog):
    class Reading(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallConvNet()

        def forward(self, x):
            out = self.net(x)
            return out * (1.0 + 0.0 * float(out.sum()))  # a host read every call

    model = ConstrainedOutputModel(Reading().cuda(), 1)
    config = {**_config(), "device": "cuda"}
    with caplog.at_level(logging.WARNING, "mei.capture"):
        captured = gradient_ascent(None, model, {**config, "capture": True}, 0, shape=SHAPE)
    assert "the capture failed" in caplog.text
    _assert_same([gradient_ascent(None, model, config, 0, shape=SHAPE)], [captured])
