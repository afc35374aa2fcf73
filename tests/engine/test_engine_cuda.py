"""On a GPU the engine gives what it gives on the CPU; skipped without CUDA."""

import pytest
import torch
from models import SmallConvNet, base_config

from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"
)


def test_cuda_run_matches_cpu_run_from_the_same_seed():
    config = base_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}}
    )
    cpu = gradient_ascent(
        None, ConstrainedOutputModel(SmallConvNet(), 1), config, 3, shape=(1, 1, 16, 16)
    )
    gpu = gradient_ascent(
        None,
        ConstrainedOutputModel(SmallConvNet().cuda(), 1),
        {**config, "device": "cuda"},
        3,
        shape=(1, 1, 16, 16),
    )
    assert gpu[0].device.type == "cpu"
    assert (cpu[0] - gpu[0]).abs().max() < 1e-3


@pytest.mark.parametrize(
    "transform", [None, {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}}]
)
def test_cuda_batch_matches_single(transform):
    config = {**base_config(transform=transform), "device": "cuda"}
    model = SmallConvNet().cuda()
    batched = gradient_ascent_units(None, model, config, 0, [0, 1, 2], shape=(1, 1, 16, 16))
    for unit, (mei, _, _) in enumerate(batched):
        single = gradient_ascent(
            None, ConstrainedOutputModel(model, unit), config, 0, shape=(1, 1, 16, 16)
        )
        assert (mei - single[0]).abs().max() < 1e-4


def test_cuda_shift_rows_matches_the_cpu():
    """Jitter's batched shift on the GPU (offsets copied from pinned memory, no wait): the
    values of the CPU's; the gradient too, up to the GPU's order of adding the reflections."""
    from mei._shift import shift_rows

    x = torch.randn(6, 2, 12, 14)
    dys, dxs = [0, 3, -3, 1, -2, 2], [-4, 0, 4, 2, -1, 1]
    upstream = torch.randn(6, 2, 12, 14)
    results = []
    for device in ("cpu", "cuda"):
        rows = x.to(device).requires_grad_()
        shifted = shift_rows(rows, dys, dxs)
        (shifted * upstream.to(device)).sum().backward()
        results.append((shifted.detach().cpu(), rows.grad.cpu()))
    (cpu, cpu_grad), (gpu, gpu_grad) = results
    assert torch.equal(cpu, gpu)
    torch.testing.assert_close(gpu_grad, cpu_grad)
