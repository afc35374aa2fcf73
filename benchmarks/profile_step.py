"""Where one engine step's time goes, next to the hand-written loop: a torch.profiler table.

    PYTHONPATH=. python benchmarks/profile_step.py [--device cuda] [--steps 20]

For one MEI of ``models.ConvCoreReadout`` with the config of ``loops.config``, profiles
``--steps`` steps of ``gradient_ascent`` and of ``loops.minimal_loop`` (after a warm-up) and
prints, for each, the operators by self CPU time and the number of CUDA kernel launches and
host-device synchronizations per step. Made to find the fixed per-step cost that shows on a
GPU, where a small model's step is bound by kernel launches.
"""

from __future__ import annotations

import argparse

import torch
from loops import SHAPE, config, minimal_loop
from models import ConvCoreReadout
from torch.profiler import ProfilerActivity, profile

from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    device, steps = args.device, args.steps
    model = ConvCoreReadout().to(device)
    runs = {
        "engine": lambda: gradient_ascent(
            None, ConstrainedOutputModel(model, 3), config(device, steps), 1, shape=SHAPE
        ),
        "minimal": lambda: minimal_loop(model, 3, steps, 1, device),
    }
    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    for name, run in runs.items():
        run()  # warm-up
        with profile(activities=activities) as prof:
            run()
        events = prof.key_averages()
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
        syncs = sum(
            e.count
            for e in events
            if e.key
            in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaMemcpy")
        )
        print(
            f"=== {name}: {steps} steps, {launches / steps:.1f} kernel launches per step, "
            f"{syncs / steps:.2f} synchronizing calls per step"
        )
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
