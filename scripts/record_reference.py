"""Record what sinzlab/mei computes for the cases of ``tests/engine/reference_cases.py``.

Usage (in an environment with torch, numpy, scipy and nnfabrik, e.g. the 0.14 venv of
``.ci/run``)::

    git clone https://github.com/sinzlab/mei /tmp/sinzlab-mei
    git -C /tmp/sinzlab-mei checkout 51f2d13
    python scripts/record_reference.py /tmp/sinzlab-mei
    git -C /tmp/sinzlab-mei checkout b2f4098     # mei.postprocessing came after 51f2d13
    python scripts/record_reference.py /tmp/sinzlab-mei --cases pnorm_clip_keyword_call

Writes ``tests/engine/reference/<case>-<seed>.pt`` (MEI, score, tracker log) and
``tests/engine/reference/README.md`` lines naming the commit each file came from. The
checkout's ``mei`` package is imported instead of this library's. Shims, so that the
original runs on today's Python stack, and nothing else: ``collections.Iterable`` & co.
for nnfabrik, ``scipy.signal.gaussian`` (moved to ``scipy.signal.windows`` in scipy 1.13,
same function), a placeholder ``neuralpredictors.regularizers`` (imported by the
original's ops module, not used by these cases), and ``Tensor.cuda`` returning the tensor
itself (the original's transparency path calls ``.cuda()``; these cases run on the CPU).
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import copy
import importlib
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "engine" / "reference"


def _shim() -> None:
    for name in ("Iterable", "Mapping", "Sequence"):
        setattr(collections, name, getattr(collections.abc, name))
    import scipy.signal
    import scipy.signal.windows

    if not hasattr(scipy.signal, "gaussian"):
        scipy.signal.gaussian = scipy.signal.windows.gaussian  # type: ignore[attr-defined]
    if importlib.util.find_spec("neuralpredictors") is None:
        package = types.ModuleType("neuralpredictors")
        regularizers = types.ModuleType("neuralpredictors.regularizers")
        regularizers.LaplaceL2 = None  # type: ignore[attr-defined]
        sys.modules["neuralpredictors"] = package
        sys.modules["neuralpredictors.regularizers"] = regularizers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of sinzlab/mei")
    parser.add_argument("--cases", nargs="*", help="record only these cases")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()

    _shim()
    # an editable install of this library maps mei.* names to its files: drop its finder
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, str(checkout))
    sys.path.insert(1, str(ROOT / "tests" / "engine"))
    import numpy as np
    import reference_cases as cases
    import torch

    import mei  # the original library

    if Path(mei.__file__).resolve().parent != checkout / "mei":
        raise SystemExit(f"imported {mei.__file__}, not the checkout's mei package")
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    from mei.methods import gradient_ascent
    from mei.modules import ConstrainedOutputModel

    OUT.mkdir(parents=True, exist_ok=True)
    recorded = []
    for name in args.cases or list(cases.CASES):
        config, _, seeds = cases.CASES[name]
        paths = [config[k]["path"] for k in config if isinstance(config[k], dict)]
        missing = [p for p in paths if importlib.util.find_spec(p.rsplit(".", 1)[0]) is None]
        if missing:
            print(f"skip {name}: this checkout lacks {missing}")
            continue
        for seed in seeds:
            net = cases.TwoSessionNet()
            model = cases.selected_model(ConstrainedOutputModel, net, name)
            np.random.seed(seed)  # random backgrounds draw from numpy's global generator
            run_config = copy.deepcopy(config)  # the original adds empty kwargs to it
            if name in cases.KEYWORD_CASES:
                mei_, score, log = gradient_ascent(
                    model=model, config=run_config, seed=seed, shape=cases.SHAPE
                )
            else:
                mei_, score, log = gradient_ascent(cases.dataloaders(), model, run_config, seed)
            path = OUT / f"{name}-{seed}.pt"
            torch.save(
                {"commit": commit, "mei": mei_.detach().cpu(), "score": float(score), "log": log},
                path,
            )
            recorded.append(f"- `{path.name}`: sinzlab/mei {commit}, torch {torch.__version__}")
            print(f"{path.name}: score {float(score):.6f}")
    readme = OUT / "README.md"
    lines = (
        readme.read_text().splitlines()
        if readme.exists()
        else [
            "# Results of sinzlab/mei, recorded by scripts/record_reference.py",
            "",
        ]
    )
    names = {line.split("`")[1] for line in recorded}
    lines = [line for line in lines if not (line.startswith("- `") and line.split("`")[1] in names)]
    readme.write_text("\n".join(lines + recorded) + "\n")


if __name__ == "__main__":
    main()
