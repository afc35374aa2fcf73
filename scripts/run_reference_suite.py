"""Run sinzlab/mei's own test suite against this library (or against the checkout itself).

Usage (in the 0.14 venv of ``.ci/run``, where ``mei`` is this checkout's editable install)::

    git clone https://github.com/sinzlab/mei /tmp/sinzlab-mei
    git -C /tmp/sinzlab-mei checkout 51f2d13
    python scripts/run_reference_suite.py /tmp/sinzlab-mei              # against mei
    python scripts/run_reference_suite.py /tmp/sinzlab-mei --reference  # against the original

The checkout's ``tests`` folder is copied to a temporary directory and run with this
interpreter's pytest; nothing of it is kept in this repository. Every test is put in one
group (see ``docs/reference-suite.md``): (a) public behaviour, which must pass against mei;
(b) tests that only exercise test seams or a mock's exact call sequence; (c) tests of a
documented deliberate difference. The script prints the counts per group and exits 1 if a
test of group (a) fails against mei.

Two pytest plugins are written next to the copy. ``refsuite_isolate`` restores the class
attributes of ``mei``'s classes after each test: the suite configures mixins by assigning
class attributes and never undoes that, so without it a test sees an earlier test's mocks
(on Python 3.11 ``MagicMock(spec=<a mock>)`` raises). ``refsuite_shim`` (only with
``--reference``) lets the 2024 original import on today's stack: ``collections.Iterable`` &
co. for nnfabrik, ``scipy.signal.gaussian`` (now in ``scipy.signal.windows``) and a
placeholder ``neuralpredictors.regularizers``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ISOLATE = """
import sys

import pytest


def _mei_classes():
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "mei" or name.startswith("mei.")):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, type) and (obj.__module__ or "").startswith("mei"):
                found[id(obj)] = obj
    return list(found.values())


@pytest.fixture(autouse=True)
def _restore_mei_class_attributes():
    saved = [(cls, dict(vars(cls))) for cls in _mei_classes()]
    yield
    for cls, before in saved:
        for name in [n for n in vars(cls) if n not in before]:
            try:
                delattr(cls, name)
            except (AttributeError, TypeError):
                pass
        for name, value in before.items():
            if vars(cls).get(name, before) is not value:
                try:
                    setattr(cls, name, value)
                except (AttributeError, TypeError):
                    pass
"""

SHIM = """
import collections
import collections.abc
import sys
import types

for _name in ("Iterable", "Mapping", "Sequence", "MutableMapping", "Callable"):
    setattr(collections, _name, getattr(collections.abc, _name))

import scipy.signal
import scipy.signal.windows

if not hasattr(scipy.signal, "gaussian"):
    scipy.signal.gaussian = scipy.signal.windows.gaussian

if "neuralpredictors" not in sys.modules:
    _package = types.ModuleType("neuralpredictors")
    _regularizers = types.ModuleType("neuralpredictors.regularizers")

    class LaplaceL2:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("placeholder for neuralpredictors")

    _regularizers.LaplaceL2 = LaplaceL2
    _package.regularizers = _regularizers
    sys.modules["neuralpredictors"] = _package
    sys.modules["neuralpredictors.regularizers"] = _regularizers
"""

SEAMS = "b"
DIFFERENCE = "c"
# (pattern on "module.Class::test", group, reason); the first match decides; no match: (a).
GROUPS: list[tuple[str, str, str]] = [
    (
        r"test_methods\.TestGradientAscent::",
        SEAMS,
        "gradient_ascent(set_seed=, get_dims=, mei_class=, import_func=, optimize_func=, "
        "tracker_cls=)",
    ),
    (r"test_import_helpers\.TestImportObject::", SEAMS, "import_object(split_func=, import_func=)"),
    (
        r"test_initial\.TestRandomNormal::test_if_(get_random_tensor|initial_guess)",
        SEAMS,
        "RandomNormal._create_random_tensor replaced by a mock",
    ),
    (r"test_modules\.TestEnsembleModel::test_repr", DIFFERENCE, "reprs"),
    (r"test_modules\.TestEnsembleModel::test_if_ensemble_model_is_pytorch_module", "a", ""),
    (
        r"test_modules\.TestEnsembleModel::",
        SEAMS,
        "EnsembleModel._module_container_cls (and Module.__init__) replaced by mocks",
    ),
    (r"optimization\.test_mei\.TestInit::", "a", ""),
    (
        r"optimization\.test_mei\b",
        SEAMS,
        "MEI.input_cls/state_cls replaced by mocks; mock tensors whose call sequence is asserted",
    ),
    (
        r"test_domain\.TestInput::test_if_cloned_",
        SEAMS,
        "mock tensors: the exact call chain .cpu().clone() is asserted",
    ),
    (
        r"test_csrfv1_selector_template_mixin\.TestMake::",
        SEAMS,
        "make(get_mappings=) and mock tables whose calls are asserted",
    ),
    (
        r"test_csrfv1_selector_template_mixin\.TestGetObjective::",
        SEAMS,
        "mock tables and constrained_output_model; get_objective, the 2020-2024 name",
    ),
    (
        r"test_mei_template_mixin\.TestMake::",
        SEAMS,
        "make() with get_temp_dir, _create_random_filename, save and tables replaced by mocks",
    ),
    (
        r"test_trained_ensemble_model_template_mixin\.",
        SEAMS,
        "mock tables that answer only the original's exact query chain",
    ),
    (
        r"test_mei_method_mixin(\.|::)",
        DIFFERENCE,
        "configs are validated (a mock or a string is not a method config)",
    ),
    (r"test_domain\.TestState::test_if_equality_raises", DIFFERENCE, "State == non-State"),
    (
        r"test_integration\.TestModelLoader::test_model_caching",
        DIFFERENCE,
        "ModelLoader.load returns a copy of the cached model",
    ),
    (r"::test_repr\b", DIFFERENCE, "reprs"),
]


def group_of(test_id: str) -> tuple[str, str]:
    for pattern, group, reason in GROUPS:
        if re.search(pattern, test_id):
            return group, reason
    return "a", ""


def results(junit: Path) -> dict[str, bool]:
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        out[test_id] = not any(c.tag in ("failure", "error") for c in case)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of sinzlab/mei (e.g. 51f2d13)")
    parser.add_argument("--reference", action="store_true", help="run against the checkout")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every failure")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="mei-refsuite-"))
    shutil.rmtree(work / "tests", ignore_errors=True)
    shutil.copytree(args.checkout / "tests", work / "tests")
    plugins = work / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "refsuite_isolate.py").write_text(ISOLATE)
    (plugins / "refsuite_shim.py").write_text(SHIM)
    path = [str(plugins)] + ([str(args.checkout.resolve())] if args.reference else [])
    # the caller's PYTHONPATH (a worktree of this library) after them
    path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONDONTWRITEBYTECODE="1")
    plugin_args = ["-p", "refsuite_isolate"] + (["-p", "refsuite_shim"] if args.reference else [])
    probe = "import mei; print(mei.__file__)"
    if args.reference:
        probe = "import refsuite_shim; " + probe
    where = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=work, capture_output=True, text=True
    )
    print(f"mei imported from: {where.stdout.strip() or where.stderr.strip()}")
    junit = work / "results.xml"
    command = [sys.executable, "-m", "pytest", *plugin_args, "-p", "no:cacheprovider", "-q"]
    command += ["--junitxml", str(junit), "tests"]
    print("running:", " ".join(command), f"(in {work})")
    subprocess.run(command, env=env, cwd=work, stdout=subprocess.DEVNULL)

    outcome = results(junit)
    counts: dict[str, Counter[str]] = {g: Counter() for g in "abc"}
    reasons: dict[tuple[str, str], Counter[str]] = {}
    failed_a = []
    for test_id, ok in outcome.items():
        group, reason = group_of(test_id)
        counts[group]["passed" if ok else "failed"] += 1
        reasons.setdefault((group, reason), Counter())["passed" if ok else "failed"] += 1
        if group == "a" and not ok:
            failed_a.append(test_id)
        if args.verbose and not ok:
            print(f"  failed [{group}] {test_id}")
    total = sum(outcome.values())
    print(f"{len(outcome)} tests, {total} passed, {len(outcome) - total} failed")
    names = {"a": "public behaviour", "b": "test seams", "c": "documented differences"}
    for group in "abc":
        c = counts[group]
        print(
            f"({group}) {names[group]}: {c.total()} tests, {c['passed']} passed, "
            f"{c['failed']} failed"
        )
        for (g, reason), rc in sorted(reasons.items()):
            if g == group and reason:
                print(f"      {rc.total():3d} ({rc['passed']} pass)  {reason}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if failed_a and not args.reference:
        print("public behaviour that fails against mei:", *failed_a, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
