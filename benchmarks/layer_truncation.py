"""What stopping the forward pass after the hooked layer saves (``LayerResponse(...,
truncate=True)``, the default) against running the whole model (``truncate=False``).

    PYTHONPATH=. python benchmarks/layer_truncation.py [--device cpu] [--steps 20]
        [--repeats 5] [--channels 8] [--layer core.0]

The model is ``models.ConvCoreReadout`` (4 conv layers of 64 channels on 1x36x64 inputs and a
point readout of 1000 neurons); ``--channels`` channels of ``--layer`` (their mean over space)
are optimized in one batched run (``gradient_ascent_units`` with the config's ``response``
entry). The two variants alternate; the median of the repeats is reported, and the script
checks that both give the same MEIs (the layers after the hooked one do not change them).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
from loops import config, timed
from models import ConvCoreReadout

from mei.methods import gradient_ascent_units


def run(model: ConvCoreReadout, args: argparse.Namespace, truncate: bool) -> list:
    method = config(args.device, args.steps)
    method["response"] = {
        "path": "mei.modules.LayerResponse",
        "kwargs": {"layer": args.layer, "position": "mean", "truncate": truncate},
    }
    channels = list(range(args.channels))
    return gradient_ascent_units(None, model, method, channels, channels, shape=(1, 1, 36, 64))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--layer", default="core.0")
    args = parser.parse_args()
    model = ConvCoreReadout().to(args.device)
    times: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for _ in range(args.repeats):
        for truncate in (True, False):
            box: list = []
            seconds = timed(
                lambda t=truncate, box=box: box.append(run(model, args, t)), args.device
            )
            results[truncate] = box[0]
            times[truncate].append(seconds / args.steps * 1000)
    same = all(torch.equal(a[0], b[0]) for a, b in zip(results[True], results[False], strict=True))
    truncated, full = statistics.median(times[True]), statistics.median(times[False])
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "layer": args.layer,
                "channels": args.channels,
                "ms_per_step_truncated": round(truncated, 3),
                "ms_per_step_whole_model": round(full, 3),
                "ratio": round(full / truncated, 3),
                "same_meis": same,
            }
        )
    )


if __name__ == "__main__":
    main()
