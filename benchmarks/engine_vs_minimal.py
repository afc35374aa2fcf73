"""Engine overhead: ``mei.methods.gradient_ascent`` against a hand-written minimal PyTorch loop
doing the same work (same model; Gaussian-blur preconditioning, ChangeNorm postprocessing, SGD),
measured in one process, interleaved, as a ratio of per-step times.

    python benchmarks/engine_vs_minimal.py [--steps 100] [--repeats 5] [--device cpu]

On a CUDA device it also times a batch of 64 units against 64 single runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from loops import SHAPE, config, minimal_loop, timed
from models import ConvCoreReadout

from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel


def count_passes(model, device: str) -> tuple[int, int]:
    """Forward and backward passes of the core during a 10-step engine run."""
    counts = {"forward": 0, "backward": 0}
    first = model.core[0]
    h1 = first.register_forward_hook(
        lambda *a: counts.__setitem__("forward", counts["forward"] + 1)
    )
    h2 = first.register_full_backward_hook(
        lambda *a: counts.__setitem__("backward", counts["backward"] + 1)
    )
    gradient_ascent(None, ConstrainedOutputModel(model, 3), config(device, 10), 0, shape=SHAPE)
    h1.remove()
    h2.remove()
    return counts["forward"], counts["backward"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    device, steps = args.device, args.steps
    model = ConvCoreReadout().to(device)
    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    print(
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )

    forwards, backwards = count_passes(model, device)
    print(
        f"engine passes in 10 steps: {forwards} forward, {backwards} backward (the score is the "
        "last step's evaluation: no extra pass)"
    )

    wrapped = ConstrainedOutputModel(model, 3)
    cfg = config(device, steps)
    # warm up both, and check they compute the same thing
    ours = gradient_ascent(None, wrapped, cfg, 0, shape=SHAPE)[0]
    theirs = minimal_loop(model, 3, steps, 0, device)
    print(f"max |engine - minimal| after {steps} steps: {(ours - theirs).abs().max().item():.2e}")

    engine_t, minimal_t = [], []
    for _ in range(args.repeats):
        engine_t.append(timed(lambda: gradient_ascent(None, wrapped, cfg, 0, shape=SHAPE), device))
        minimal_t.append(timed(lambda: minimal_loop(model, 3, steps, 0, device), device))
    e, m = statistics.median(engine_t) / steps, statistics.median(minimal_t) / steps
    print(
        f"one MEI: engine {e * 1e3:.3f} ms/step, minimal loop {m * 1e3:.3f} ms/step, ratio {e / m:.3f}"
    )

    if device.startswith("cuda"):
        units = list(range(args.batch))
        batch_t = timed(
            lambda: gradient_ascent_units(None, model, cfg, 0, units, shape=SHAPE), device
        )
        batch_t = timed(
            lambda: gradient_ascent_units(None, model, cfg, 0, units, shape=SHAPE), device
        )
        single_t = timed(
            lambda: [
                gradient_ascent(None, ConstrainedOutputModel(model, u), cfg, 0, shape=SHAPE)
                for u in units
            ],
            device,
        )
        print(
            f"{args.batch} units: batched {batch_t / steps * 1e3:.2f} ms/step, one by one "
            f"{single_t / steps * 1e3:.2f} ms/step, speed-up {single_t / batch_t:.1f}x"
        )


if __name__ == "__main__":
    main()
