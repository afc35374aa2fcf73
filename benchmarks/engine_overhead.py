"""The engine's cost per neuron-step in a batched run, and its peak memory per element.

    PYTHONPATH=. python benchmarks/engine_overhead.py [--batches 64 1024] [--steps 50]
        [--repeats 9] [--neurons 64] [--memory] [--jitter]

A near-free model (``models.LinearReadout``: a linear readout over 1x36x64 inputs) makes the
time almost all framework. Three runs alternate, each ``repeats`` times: the engine
(``gradient_ascent_units``, the built-in MaxSteps with its batched form), the engine
with ``loops.PerElementMaxSteps`` (the same stopper without a batched form: one State
and one stopper call per element and step, the path every run took before batched forms) and
the hand-written batched loop (``loops.minimal_batched_loop``). The overhead is the median of
(engine - loop) / (B * steps) over the repeats. ``--memory`` runs each variant in a fresh
process and reports its peak resident memory (VmHWM, Linux) above a batch of one, per
element. ``--jitter`` adds the engine with ``mei.transforms.Jitter(2)`` (a per-element random
transform) and reports what it costs per element-step over the plain engine: constant in B
unless the transform's per-element work grows with the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

import torch
from loops import SHAPE, config, minimal_batched_loop, timed
from models import LinearReadout

from mei.methods import gradient_ascent_units

VARIANTS = ("batched", "per_element", "minimal")
JITTER = {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}}


def run(variant: str, model: LinearReadout, batch: int, steps: int) -> object:
    units, seeds = [u % model.weight.shape[0] for u in range(batch)], list(range(batch))
    if variant == "minimal":
        return minimal_batched_loop(model, units, steps, seeds, "cpu")
    cfg = config("cpu", steps)
    if variant == "per_element":
        cfg["stopper"] = {
            "path": "loops.PerElementMaxSteps",
            "kwargs": {"steps": steps},
        }
    if variant == "jitter":
        cfg["transform"] = JITTER
    return gradient_ascent_units(None, model, cfg, seeds, units, shape=SHAPE)


def peak_rss(variant: str, batch: int, steps: int, neurons: int) -> int:
    """Peak resident bytes of a fresh process running ``variant`` once."""
    code = (
        # drop '' (the current directory) so that mei comes from PYTHONPATH, as in the parent
        f"import sys; sys.path[0] = {os.path.dirname(os.path.abspath(__file__))!r};"
        "import torch; torch.set_num_threads(1);"
        "from engine_overhead import run; from models import LinearReadout;"
        f"run({variant!r}, LinearReadout({neurons}), {batch}, {steps});"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    # VmHWM (KiB), not ru_maxrss: that one keeps the forking parent's peak across exec
    return int(out.split()[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--neurons", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--jitter", action="store_true")
    args = parser.parse_args()
    variants = VARIANTS + (("jitter",) if args.jitter else ())
    torch.set_num_threads(args.threads)
    meta = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "torch": torch.__version__,
        "steps": args.steps,
        "neurons": args.neurons,
    }
    model = LinearReadout(args.neurons)
    for batch in args.batches:
        times: dict[str, list[float]] = {v: [] for v in variants}
        for v in variants:
            run(v, model, batch, args.steps)  # warm-up
        for _ in range(args.repeats):
            for v in variants:
                times[v].append(
                    timed(lambda v=v, b=batch: run(v, model, b, args.steps), "cpu")  # type: ignore[misc]
                )
        figure: dict[str, object] = {"batch": batch, "repeats": args.repeats}
        for v in variants:
            figure[f"{v}_ms_per_step"] = statistics.median(times[v]) / args.steps * 1e3
        for v in ("batched", "per_element"):
            figure[f"{v}_overhead_ms_per_neuron_step"] = statistics.median(
                (e - m) / (batch * args.steps) * 1e3
                for e, m in zip(times[v], times["minimal"], strict=True)
            )
            figure[f"{v}_ratio"] = statistics.median(
                e / m for e, m in zip(times[v], times["minimal"], strict=True)
            )
        if args.jitter:
            figure["jitter_ms_per_element_step"] = statistics.median(
                (j - e) / (batch * args.steps) * 1e3
                for j, e in zip(times["jitter"], times["batched"], strict=True)
            )
        print(json.dumps({"figure": "overhead", **figure, **meta}), flush=True)
    if args.memory:
        steps = min(args.steps, 20)
        for v in VARIANTS:
            one = peak_rss(v, 1, steps, args.neurons)
            for batch in args.batches:
                peak = peak_rss(v, batch, steps, args.neurons)
                print(
                    json.dumps(
                        {
                            "figure": "peak_rss",
                            "variant": v,
                            "batch": batch,
                            "bytes_per_element": (peak - one) / (batch - 1),
                            "input_bytes_per_element": 4 * SHAPE[1] * SHAPE[2] * SHAPE[3],
                            **meta,
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
