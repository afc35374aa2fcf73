"""Small models with known optima, shared by the engine tests."""

import torch
from torch import nn


class LinearNeurons(nn.Module):
    """``N`` linear neurons ``w_n . x`` on ``(B, C, H, W)`` inputs; optimum under a fixed norm
    is ``norm * w_n / |w_n|``."""

    def __init__(self, shape=(1, 8, 8), n=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n, *shape, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.weight.flatten(1).T


def gabor(size=21, sigma=3.0, theta=0.6, wavelength=7.0, phase=0.0):
    ys, xs = torch.meshgrid(
        torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij"
    )
    ys, xs = ys.float(), xs.float()
    xr = xs * torch.cos(torch.tensor(theta)) + ys * torch.sin(torch.tensor(theta))
    envelope = torch.exp(-(xs**2 + ys**2) / (2 * sigma**2))
    return envelope * torch.cos(2 * torch.pi * xr / wavelength + phase)


class GaborNeuron(nn.Module):
    """A simple cell: rectified (softplus) projection onto a Gabor filter."""

    def __init__(self, size=21):
        super().__init__()
        self.register_buffer("filter", gabor(size)[None, None])

    def forward(self, x):
        return nn.functional.softplus((x * self.filter).flatten(1).sum(1, keepdim=True))


class SmallConvNet(nn.Module):
    """A conv core with a readout per neuron: ``(B, 1, H, W) -> (B, N)``."""

    def __init__(self, n=6, channels=8, size=(16, 16), seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.core = nn.Sequential(
            nn.Conv2d(1, channels, 5, padding=2),
            nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ELU(),
        )
        self.readout = nn.Linear(channels * size[0] * size[1], n)

    def forward(self, x):
        return nn.functional.elu(self.readout(self.core(x).flatten(1))) + 1


def base_config(**overrides):
    config = {
        "device": "cpu",
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 50}},
        "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 3.0}},
    }
    config.update(overrides)
    return config


def biphasic(frames=8):
    """A retina-like temporal kernel: a positive lobe late, a smaller negative one earlier."""
    t = torch.arange(frames, dtype=torch.float32)
    late = torch.exp(-((t - (frames - 2)) ** 2) / 2.0)
    early = 0.6 * torch.exp(-((t - (frames - 5)) ** 2) / 2.0)
    return late - early


class SeparableVideoNeurons(nn.Module):
    """Neurons whose filters are separable in space and time, ``f_n(t) * g_n(y, x)``, slid
    over the time axis of movies ``(B, 1, T, H, W)``: responses ``(B, T - frames + 1, N)``
    (open-retina's layout), rectified by a softplus unless ``linear``."""

    def __init__(self, frames=8, size=15, thetas=(0.6,), linear=False):
        super().__init__()
        spatial = torch.stack([gabor(size, sigma=2.5, theta=t, wavelength=6.0) for t in thetas])
        temporal = biphasic(frames)
        kernels = temporal[None, :, None, None] * spatial[:, None]  # (N, T, H, W)
        self.register_buffer("kernels", kernels[:, None])  # (N, 1, T, H, W)
        self.linear = linear

    def forward(self, x):
        out = nn.functional.conv3d(x, self.kernels)  # (B, N, T', 1, 1)
        out = out.flatten(2).transpose(1, 2)  # (B, T', N)
        return out if self.linear else nn.functional.softplus(out)


class TwoStimulusNeuron(nn.Module):
    """A neuron with two preferred stimuli: a soft maximum of its responses to two orthogonal
    Gabors, ``log(exp(k a.x) + exp(k bias b.x)) / k`` (``bias`` > 1 prefers ``b``)."""

    def __init__(self, size=15, k=0.5, bias=1.3):
        super().__init__()
        a = gabor(size, sigma=2.5, theta=0.0, wavelength=6.0)
        b = gabor(size, sigma=2.5, theta=torch.pi / 2, wavelength=6.0)
        self.register_buffer("stimuli", torch.stack([a / a.norm(), b / b.norm()])[:, None])
        self.k, self.bias = k, bias

    def forward(self, x):
        drive = x.flatten(1) @ self.stimuli.flatten(1).T  # (B, 2)
        drive = drive * torch.tensor([1.0, self.bias], device=x.device)
        return torch.logsumexp(self.k * drive, dim=1, keepdim=True) / self.k


class TwoCellTypes(nn.Module):
    """``n`` rectified linear neurons of two cell types: type ``t`` has the Gabor filter
    ``filters[t]``, each neuron its own gain and a little noise of its own in its weights.
    Neurons ``0 .. n/2 - 1`` are type 0, the rest type 1."""

    def __init__(self, n=12, size=15, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        filters = torch.stack(
            [
                gabor(size, sigma=2.5, theta=0.3, wavelength=6.0),
                gabor(size, sigma=2.5, theta=1.9, wavelength=6.0, phase=1.0),
            ]
        )
        filters = filters / filters.flatten(1).norm(dim=1)[:, None, None]
        self.register_buffer("filters", filters[:, None])  # (2, 1, H, W)
        self.types = [0] * (n // 2) + [1] * (n - n // 2)
        gains = 0.5 + torch.rand(n, generator=g)
        noise = 0.2 * torch.randn(n, size * size, generator=g) / size
        weights = filters.flatten(1)[self.types] * gains[:, None] + noise
        self.register_buffer("weights", weights)

    def forward(self, x):
        return nn.functional.softplus(x.flatten(1) @ self.weights.T)


class PhaseCells(nn.Module):
    """Neurons on one quadrature pair of Gabors (orthonormal ``even``, ``odd``): unit 0 a
    phase-invariant complex cell (energy model) ``sqrt((even.x)^2 + (odd.x)^2)``, unit 1 a
    linear simple cell ``even.x``, units 2-4 rectified simple cells ``relu(-even.x)``,
    ``relu(odd.x)``, ``relu(-odd.x)`` (the population whose responses tell phases apart).
    Under a fixed norm ``n`` units 0 and 1 have the MEI response ``n``; the complex cell's
    MEIs are every image ``n (cos a even + sin a odd)``, the simple cell's only ``n even``."""

    def __init__(self, size=15, theta=0.6, wavelength=6.0, sigma=2.5):
        super().__init__()
        even = gabor(size, sigma=sigma, theta=theta, wavelength=wavelength, phase=0.0)
        odd = gabor(size, sigma=sigma, theta=theta, wavelength=wavelength, phase=torch.pi / 2)
        even = even / even.norm()
        odd = odd - (odd * even).sum() * even
        odd = odd / odd.norm()
        self.register_buffer("pair", torch.stack([even, odd])[:, None])  # (2, 1, H, W)

    def phases(self, x):
        """The projections of inputs ``(B, 1, H, W)`` on ``(even, odd)``, ``(B, 2)``."""
        return x.flatten(1) @ self.pair.flatten(1).T

    def forward(self, x):
        p = self.phases(x)
        energy = torch.sqrt((p**2).sum(1) + 1e-8)
        even, odd = p[:, 0], p[:, 1]
        relu = nn.functional.relu
        return torch.stack([energy, even, relu(-even), relu(odd), relu(-odd)], dim=1)


def gabor_bank(n=4, size=7, sigma=1.5, wavelength=4.0):
    """``n`` Gabor filters ``(n, size, size)`` at orientations spread over half a turn."""
    thetas = [torch.pi * k / n for k in range(n)]
    return torch.stack([gabor(size, sigma, t, wavelength) for t in thetas])


class ToyConvNet(nn.Module):
    """A conv net ``(B, 1, H, W) -> (B, N)`` whose first layer ``core.features.0`` has known
    Gabor filters (channel ``k``: ``gabor_bank()[k]``), followed by nonlinear layers and a
    readout: a channel of the first layer is linear in the input."""

    def __init__(self, channels=4, n=3, size=(15, 15), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        conv = nn.Conv2d(1, channels, 7)
        conv.weight.data = gabor_bank(channels)[:, None].clone()
        conv.bias.data.zero_()
        second = nn.Conv2d(channels, channels, 3, padding=1)
        second.weight.data = torch.randn(second.weight.shape, generator=g) * 0.2
        self.core = nn.Module()
        self.core.features = nn.Sequential(conv, nn.ReLU(), second, nn.ELU())
        out = (size[0] - 6) * (size[1] - 6) * channels
        self.readout = nn.Linear(out, n)
        self.readout.weight.data = torch.randn(n, out, generator=g) * 0.05
        self.calls = {"readout": 0}

    def forward(self, x):
        features = self.core.features(x)
        self.calls["readout"] += 1
        return nn.functional.softplus(self.readout(features.flatten(1)))


class ToyVideoConvNet(nn.Module):
    """A video conv net ``(B, 1, T, H, W) -> (B, N)`` whose first layer ``conv`` (a
    ``Conv3d``, 3 frames) has known space-time filters ``filters[k]`` (a Gabor times a
    temporal profile): a channel of that layer is linear in the movie."""

    def __init__(self, channels=3, frames=3, n=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        spatial = gabor_bank(channels)
        temporal = torch.tensor([-0.5, 0.2, 1.0])[:frames]
        self.register_buffer("filters", temporal[None, :, None, None] * spatial[:, None])
        self.conv = nn.Conv3d(1, channels, (frames, 7, 7), bias=False)
        self.conv.weight.data = self.filters[:, None].clone()
        self.readout = nn.Linear(channels, n)
        self.readout.weight.data = torch.randn(n, channels, generator=g)

    def forward(self, x):
        hidden = nn.functional.elu(self.conv(x))  # (B, C, T', H', W')
        return nn.functional.softplus(self.readout(hidden.mean(dim=(2, 3, 4))))


class PlacedGabor(nn.Module):
    """A simple cell whose Gabor (21 x 21) sits at rows/columns ``top``/``left`` of a
    ``size x size`` image: ``softplus(w . x)``."""

    def __init__(self, top=2, left=9, theta=0.6, size=32):
        super().__init__()
        weight = torch.zeros(1, 1, size, size)
        weight[0, 0, top : top + 21, left : left + 21] = gabor(21, theta=theta)
        self.register_buffer("weight", weight)
        self.centre = (top + 10, left + 10)

    def forward(self, x):
        return nn.functional.softplus((x * self.weight).flatten(1).sum(1, keepdim=True))
