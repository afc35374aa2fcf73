"""Inner units: :class:`mei.modules.LayerResponse` makes a layer's channels the outputs of a
model (a forward hook on the layer), so a channel's MEI comes from the same engine, selectors
and batching as an output unit's, and from a config's ``response`` entry."""

import logging

import pytest
import torch
from models import ToyConvNet, ToyVideoConvNet, base_config
from torch import nn
from torch.nn.functional import cosine_similarity

from mei.config import validate_config
from mei.errors import ConfigError, ModelError
from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel, EnsembleModel, LayerResponse

SHAPE = (1, 1, 15, 15)
VIDEO_SHAPE = (1, 1, 6, 15, 15)


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _response(layer="core.features.0", **kwargs):
    return {"path": "mei.modules.LayerResponse", "kwargs": {"layer": layer, **kwargs}}


def _config(**overrides):
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 60}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 5.0}},
        response=_response(position="center"),
    )
    config.update(overrides)
    return config


def _placed(kernel, shape=SHAPE, top=4, left=4, first_frame=None):
    """``kernel`` at rows ``top ..``, columns ``left ..`` (and frames ``first_frame ..``) of
    an otherwise empty input: what the centre unit of a valid conv sees."""
    placed = torch.zeros(shape)
    height, width = kernel.shape[-2:]
    if first_frame is None:
        placed[0, 0, top : top + height, left : left + width] = kernel
    else:
        frames = kernel.shape[0]
        region = (0, 0, slice(first_frame, first_frame + frames))
        placed[region + (slice(top, top + height), slice(left, left + width))] = kernel
    return placed


def test_a_conv_channel_gets_its_filter_back_from_the_config():
    """Channel ``k`` of the first conv (linear in the input) at the centre unit: under a norm
    constraint its MEI is that channel's filter where the unit looks, zero elsewhere."""
    net = ToyConvNet()
    filters = net.core.features[0].weight[:, 0].detach()
    for channel in range(4):
        model = ConstrainedOutputModel(net, channel)
        mei, score, _ = gradient_ascent(None, model, _config(), channel, shape=SHAPE)
        optimum = _placed(filters[channel])
        assert _cos(mei, optimum) >= 0.95, channel
        assert score == pytest.approx(5.0 * filters[channel].norm().item(), rel=0.05)
        others = [_cos(mei, _placed(filters[k])) for k in range(4) if k != channel]
        assert max(others) < 0.5
        # the same run as wrapping the model by hand, and the caller's model is unchanged
        config = _config()
        del config["response"]
        by_hand = ConstrainedOutputModel(LayerResponse(net, "core.features.0", "center"), channel)
        expected, expected_score, _ = gradient_ascent(None, by_hand, config, channel, shape=SHAPE)
        assert torch.equal(mei, expected) and score == expected_score
        assert model.model is net


def test_the_mean_over_space_and_a_given_unit():
    """``position="mean"``: a channel of a valid 7x7 conv on a 7x7 input is one unit, so the
    mean is that unit; ``[y, x]``: the unit there sees the filter shifted to ``(y, x)``."""
    net = ToyConvNet(size=(7, 7))
    filters = net.core.features[0].weight[:, 0].detach()
    config = _config(response=_response(position="mean"))
    mei, _, _ = gradient_ascent(None, ConstrainedOutputModel(net, 2), config, 0, shape=(1, 1, 7, 7))
    assert _cos(mei, filters[2]) >= 0.95
    corner = _config(response=_response(position=[1, 6]))
    mei, _, _ = gradient_ascent(
        None, ConstrainedOutputModel(ToyConvNet(), 1), corner, 0, shape=SHAPE
    )
    assert _cos(mei, _placed(filters[1], top=1, left=6)) >= 0.95


def test_a_video_channel_gets_its_space_time_filter_back():
    """A ``Conv3d`` channel over 3 frames of a 6-frame movie has 4 output frames; the last
    (``start=-1``) at the centre sees frames 3..5: its MEI is the filter there."""
    net = ToyVideoConvNet()
    config = _config(response=_response("conv", position="center", start=-1))
    for channel in range(3):
        model = ConstrainedOutputModel(net, channel)
        mei, _, _ = gradient_ascent(None, model, config, channel, shape=VIDEO_SHAPE)
        assert mei.shape == VIDEO_SHAPE
        optimum = _placed(net.filters[channel], VIDEO_SHAPE, first_frame=3)
        assert _cos(mei, optimum) >= 0.95, channel
        assert _cos(mei, _placed(net.filters[channel], VIDEO_SHAPE, first_frame=0)) < 0.3
    # the mean over all 4 output frames: the filter at each of the 4 frame offsets, summed
    config = _config(response=_response("conv", position="center", time_reduce="sum"))
    mei, _, _ = gradient_ascent(None, ConstrainedOutputModel(net, 0), config, 0, shape=VIDEO_SHAPE)
    optimum = sum(_placed(net.filters[0], VIDEO_SHAPE, first_frame=t) for t in range(4))
    assert _cos(mei, optimum) >= 0.95


@pytest.mark.parametrize("video", [False, True])
def test_batched_channels_equal_their_single_runs(video, caplog):
    net, shape = (ToyVideoConvNet(), VIDEO_SHAPE) if video else (ToyConvNet(), SHAPE)
    layer = "conv" if video else "core.features.0"
    config = _config(
        response=_response(layer, position="mean"),
        transform={"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 1}},
    )
    with caplog.at_level(logging.INFO, logger="mei.methods"):
        batched = gradient_ascent_units(None, net, config, [5, 6, 7], [0, 1, 2], shape=shape)
    assert "one by one" not in caplog.text  # one batched run
    for channel, (mei, score, _) in enumerate(batched):
        alone, alone_score, _ = gradient_ascent(
            None, ConstrainedOutputModel(net, channel), config, 5 + channel, shape=shape
        )
        torch.testing.assert_close(mei, alone, rtol=1e-5, atol=1e-5)
        assert score == pytest.approx(alone_score, rel=1e-5, abs=1e-5)


def test_the_forward_pass_stops_after_the_layer_and_the_hooks_are_removed():
    net = ToyConvNet()
    x = torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(0))
    conv = net.core.features[0]
    expected = conv(x)[:, :, 4, 4]
    truncated = LayerResponse(net, "core.features.0", "center")
    full = LayerResponse(net, "core.features.0", "center", truncate=False)
    before = net.calls["readout"]
    torch.testing.assert_close(truncated(x), expected)
    assert net.calls["readout"] == before  # the readout never ran
    torch.testing.assert_close(full(x), expected)
    assert net.calls["readout"] == before + 1
    assert not conv._forward_hooks  # removed after each call
    # also after an error in the forward pass
    truncated.position = [0, 99]
    with pytest.raises(ModelError, match=r"position \[0, 99\] is outside the layer's 9 x 9"):
        truncated(x)
    net.readout = None  # breaks the forward after the layer
    with pytest.raises(TypeError):
        full(x)
    assert not conv._forward_hooks
    # and after a run
    gradient_ascent(None, ConstrainedOutputModel(ToyConvNet(), 0), _config(), 0, shape=SHAPE)


def test_an_ensemble_gets_the_mean_of_its_members_channels():
    """The pipeline's ``EnsembleModel``: the layer is named as in each member."""
    members = [ToyConvNet(seed=0), ToyConvNet(seed=1)]
    members[1].core.features[0].weight.data *= 3.0
    ensemble = EnsembleModel(*members)
    x = torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    wrapped = LayerResponse(ensemble, "core.features.0", "mean")
    expected = sum(m.core.features[0](x).mean(dim=(2, 3)) for m in members) / 2
    torch.testing.assert_close(wrapped(x), expected)
    filters = members[0].core.features[0].weight[:, 0].detach()
    mei, _, _ = gradient_ascent(
        None, ConstrainedOutputModel(ensemble, 3), _config(), 0, shape=SHAPE
    )
    assert _cos(mei, _placed(filters[3])) >= 0.95


def test_a_wrong_layer_name_lists_close_matches_before_the_first_step():
    net = ToyConvNet()
    with pytest.raises(
        ModelError, match=r"no layer 'core.feature.0'; close matches: \['core.features.0'"
    ):
        LayerResponse(net, "core.feature.0")
    config = _config(response=_response("core.featurs.2"))
    with pytest.raises(
        ConfigError,
        match=r"config\['response'\] \(mei.modules.LayerResponse\): ModelError: .*no layer "
        r"'core.featurs.2'; close matches: \['core.features.2'",
    ):
        gradient_ascent(None, ConstrainedOutputModel(net, 0), config, 0, shape=SHAPE)
    assert net.calls["readout"] == 0  # refused before any forward pass


def test_layer_outputs_it_cannot_read_are_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten(2)  # (B, C, H*W): no layout LayerResponse reads

        def forward(self, x):
            return self.flat(x).sum(-1)

    with pytest.raises(ModelError, match=r"the layer 'flat' gave \(1, 1, 225\)"):
        LayerResponse(Odd(), "flat")(torch.zeros(SHAPE))
    with pytest.raises(ModelError, match="start/stop select frames"):
        LayerResponse(ToyConvNet(), "core.features.0", start=-1)(torch.zeros(SHAPE))
    with pytest.raises(ModelError, match="holds none of the layer's 4 frames"):
        LayerResponse(ToyVideoConvNet(), "conv", start=5)(torch.zeros(VIDEO_SHAPE))

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ModelError, match="'unused' was not called"):
        LayerResponse(Skips(), "unused")(torch.zeros(SHAPE))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer": ""}, r"layer must be a module path"),
        ({"layer": "a", "position": "top"}, r"position must be 'mean', 'center' or \[y, x\]"),
        ({"layer": "a", "position": [1, 2, 3]}, r"position must be"),
        ({"layer": "a", "time_reduce": "max"}, r"time_reduce must be 'mean' or 'sum'"),
        ({"layer": "a", "start": 1.5}, r"argument 'start' must be int \| None"),
        ({"position": "mean"}, r"missing .*layer"),
    ],
)
def test_a_bad_layer_response_entry_names_key_and_path(kwargs, message):
    config = _config(response={"path": "mei.modules.LayerResponse", "kwargs": kwargs})
    with pytest.raises(
        ConfigError, match=r"config\['response'\] \(mei.modules.LayerResponse\): .*" + message
    ):
        validate_config(config)


def test_a_captured_run_gives_the_eager_numbers(caplog):
    """The hook runs in the captured step's forward like in the eager one (on the CPU the
    captured path runs the same step function and copies its results into fixed buffers)."""
    net = ToyConvNet()
    config = _config()
    eager = gradient_ascent(None, ConstrainedOutputModel(net, 1), config, 0, shape=SHAPE)
    with caplog.at_level(logging.WARNING, "mei.capture"):
        captured = gradient_ascent(
            None, ConstrainedOutputModel(net, 1), {**config, "capture": True}, 0, shape=SHAPE
        )
    assert not [r for r in caplog.records if r.name == "mei.capture"], caplog.text
    assert torch.equal(eager[0], captured[0]) and eager[1] == captured[1]
