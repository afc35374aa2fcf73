"""The demo pipeline: mei's DataJoint workflow on a model whose answers are known.

A lab's pipeline in miniature, written the way the README tells users to write theirs:

- ``Dataset``: a synthetic V1 recording, whose neurons are :func:`mei.zoo.v1_filters`;
- ``TrainedModel``: models "fitted" to it (the true filters plus a little noise, a different
  draw per ``model_seed``), with the NNFabrik-style ``load_model(key, include_dataloader,
  include_state_dict)``;
- ``TrainedEnsembleModel``: :class:`mei.main.TrainedEnsembleModelTemplate` over those models;
- ``Selector``: neuron id -> model output unit, with ``get_output_selected_model``;
- ``MEI``: :class:`mei.main.MEITemplate`, with :class:`mei.main.MEIMethod` and
  :class:`mei.main.MEISeed`.

:func:`run_demo` fills them (ensemble, selector, method, seed, populate) and compares every
MEI with its neuron's true filter: under the method's fixed norm the MEI of a linear-nonlinear
neuron is its filter, so the correlation should be close to 1.

Importing this module connects to no database; :func:`activate` puts the tables into schemas
(``mei_demo`` and, for MEIMethod and MEISeed, ``mei_demo_methods``). Works with DataJoint 2.x
(PostgreSQL or MySQL) and 0.14 (MySQL).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datajoint as dj
import torch
from torch.utils.data import DataLoader, TensorDataset

from .. import zoo
from ..dj.backend import backend
from ..dj.templates import MEIMethod, MEISeed, MEITemplate, TrainedEnsembleModelTemplate
from ..modules import ConstrainedOutputModel

__all__ = [
    "DEFAULT_SCHEMA",
    "DemoResult",
    "MEI",
    "Dataset",
    "NeuronResult",
    "Selector",
    "TrainedEnsembleModel",
    "TrainedModel",
    "activate",
    "drop",
    "method_config",
    "run_demo",
]

INT = backend().types["int"]
FLOAT = backend().types["float"]

DEFAULT_SCHEMA = "mei_demo"
"""The demo's tables go to this schema, MEIMethod and MEISeed to ``DEFAULT_SCHEMA + "_methods"``."""

DATASET = {
    "dataset_id": 0,
    "n_gabors": 24,
    "n_center_surround": 8,
    "image_size": 32,
    "filter_seed": 0,
    "n_images": 64,
}
"""The demo's one dataset: 24 Gabor and 8 center-surround neurons on 32 x 32 images."""

MODEL_SEEDS = (1, 2)
"""The ``model_seed`` of each ensemble member."""

MODEL_NOISE = 0.2
"""How far each fitted model's filters are from the truth (relative noise per filter)."""

schema = dj.Schema()
"""The demo's schema; see :func:`activate`."""


def _filter_arguments(row: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """The arguments of :func:`mei.zoo.v1_filters` for a ``Dataset`` row."""
    names = ("n_gabors", "n_center_surround", "image_size", "filter_seed")
    return tuple(int(row[name]) for name in names)  # type: ignore[return-value]


@schema
class Dataset(dj.Manual):
    definition = f"""
    # synthetic V1 recordings: the neurons' filters are mei.zoo.v1_filters(...)
    dataset_id          : {INT}
    ---
    n_gabors            : {INT}      # Gabor neurons (simple cells)
    n_center_surround   : {INT}      # difference-of-Gaussians neurons (ON and OFF)
    image_size          : {INT}      # images are 1 x size x size
    filter_seed         : {INT}      # seed of the filters' parameters
    n_images            : {INT}      # images in the training set
    """

    def ground_truth(self, key: Mapping[str, Any]) -> torch.Tensor:
        """The true filters ``(N, 1, H, W)`` of the dataset's neurons."""
        row = (self & key).fetch1()
        filters, _ = zoo.v1_filters(*_filter_arguments(row))
        return filters

    def neuron_kinds(self, key: Mapping[str, Any]) -> list[str]:
        """``"gabor"``, ``"ON center"`` or ``"OFF center"`` for each neuron."""
        row = (self & key).fetch1()
        _, parameters = zoo.v1_filters(*_filter_arguments(row))
        return [
            "gabor"
            if isinstance(p, zoo.GaborParameters)
            else ("ON center" if p.polarity > 0 else "OFF center")
            for p in parameters
        ]

    def dataloaders(
        self, key: Mapping[str, Any], seed: int
    ) -> dict[str, dict[str, DataLoader[Any]]]:
        """NNFabrik-style loaders ``{"train": {"v1": loader}}`` of random images and responses."""
        row = (self & key).fetch1()
        size, n_images = int(row["image_size"]), int(row["n_images"])
        generator = torch.Generator().manual_seed(int(seed))
        images = torch.randn(n_images, 1, size, size, generator=generator)
        truth = zoo.v1_model(*_filter_arguments(row))
        with torch.no_grad():
            responses = truth(images)
        loader = DataLoader(TensorDataset(images, responses), batch_size=16)
        return {"train": {"v1": loader}}


@schema
class TrainedModel(dj.Manual):
    definition = f"""
    # models fitted to a dataset: the true filters plus noise drawn from model_seed
    -> Dataset
    model_seed          : {INT}
    ---
    noise               : {FLOAT}    # filter noise relative to the filters' norm
    """

    def load_model(
        self,
        key: Mapping[str, Any] | None = None,
        include_dataloader: bool = True,
        include_state_dict: bool = True,
    ) -> Any:
        """``(dataloaders, model)`` (the model alone without dataloaders), as NNFabrik's.

        Without the state dict the model has the right architecture but random filters.
        """
        row = (self & key if key is not None else self).fetch1()
        dataset = {k: row[k] for k in Dataset.primary_key}
        params = (Dataset() & dataset).fetch1()
        model = zoo.v1_model(
            *_filter_arguments(params),
            noise=float(row["noise"]),
            noise_seed=int(row["model_seed"]),
        )
        if not include_state_dict:
            generator = torch.Generator().manual_seed(int(row["model_seed"]))
            with torch.no_grad():
                model.filters.copy_(torch.randn(model.filters.shape, generator=generator))
        if not include_dataloader:
            return model
        return Dataset().dataloaders(dataset, seed=int(row["model_seed"])), model


@schema
class TrainedEnsembleModel(TrainedEnsembleModelTemplate):
    dataset_table = Dataset
    trained_model_table = TrainedModel


@schema
class Selector(dj.Computed):
    definition = f"""
    # which model output is which neuron
    -> self.dataset_table
    neuron_id           : {INT}
    ---
    output_unit         : {INT}
    neuron_kind         : varchar(32)
    """

    dataset_table = Dataset

    def make(self, key: Mapping[str, Any]) -> None:
        kinds = Dataset().neuron_kinds(key)
        self.insert(
            dict(key, neuron_id=unit, output_unit=unit, neuron_kind=kind)
            for unit, kind in enumerate(kinds)
        )

    def get_output_selected_model(self, model: torch.nn.Module, key: Mapping[str, Any]) -> Any:
        output_unit = (self & key).fetch1("output_unit")
        return ConstrainedOutputModel(model, int(output_unit))


@schema
class MEI(MEITemplate):
    trained_model_table = TrainedEnsembleModel
    selector_table = Selector


def activate(schema_name: str = DEFAULT_SCHEMA, *, store: str = "minio") -> None:
    """Put the demo's tables into ``schema_name`` (created if needed), MEI files into ``store``.

    MEIMethod and MEISeed go to ``schema_name + "_methods"`` unless :func:`mei.main.activate`
    chose their schema before. ``store`` must be configured in ``dj.config["stores"]``.
    """
    from ..dj import templates

    if not templates.schema.is_activated():
        templates.activate(f"{schema_name}_methods")
    MEI.storage = store
    schema.activate(schema_name)


def drop(schema_name: str = DEFAULT_SCHEMA) -> list[str]:
    """Drop the demo's two schemas (tables and rows; see :func:`run_demo` for stored files).

    Returns the names of the schemas that existed. Call it before :func:`activate`.
    """
    dropped = []
    for name in (schema_name, f"{schema_name}_methods"):
        if name not in dj.list_schemas():
            continue
        existing = dj.Schema(name, create_schema=False)
        backend().drop_schema(existing)
        dropped.append(name)
    return dropped


def method_config(*, steps: int = 100, device: str = "cpu") -> dict[str, Any]:
    """The demo's method: SGD under a fixed norm, the gradient lightly blurred.

    The blur keeps the high-frequency noise of the fitted models out of the MEIs.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    return {
        "device": device,
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 10.0}},
        "precondition": {"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 0.5}},
        "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": steps}},
        "objectives": [
            {
                "path": "mei.objectives.EvaluationObjective",
                "kwargs": {"interval": max(1, steps // 20)},
            }
        ],
    }


@dataclass(frozen=True)
class NeuronResult:
    """One neuron's MEI compared with the truth."""

    neuron_id: int
    kind: str
    score: float
    correlation: float


@dataclass
class DemoResult:
    """What :func:`run_demo` did and found."""

    neurons: list[NeuronResult]
    method_key: dict[str, Any]
    seconds_populate: float
    computed: int
    figures: list[Path] = field(default_factory=list)

    def failures(self, min_correlation: float) -> list[NeuronResult]:
        """The neurons whose MEI correlates less than ``min_correlation`` with the truth."""
        return [n for n in self.neurons if not n.correlation >= min_correlation]

    def summary(self) -> str:
        """A table: neuron, kind, score and correlation with the true filter."""
        lines = [f"{'neuron':>6}  {'kind':<11} {'score':>7}  {'r(truth)':>8}"]
        for n in self.neurons:
            lines.append(f"{n.neuron_id:>6}  {n.kind:<11} {n.score:>7.3f}  {n.correlation:>8.3f}")
        correlations = [n.correlation for n in self.neurons]
        if not correlations:
            return "\n".join([*lines, "no MEIs"])
        lines.append(
            f"{len(self.neurons)} neurons: correlation with the truth min "
            f"{min(correlations):.3f}, mean {sum(correlations) / len(correlations):.3f}"
        )
        return "\n".join(lines)


@contextlib.contextmanager
def _quiet_runs() -> Iterator[None]:
    """Silence the progress bars of single optimization runs (``MEI_QUIET``) for a while."""
    previous = os.environ.get("MEI_QUIET")
    os.environ["MEI_QUIET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MEI_QUIET"]
        else:
            os.environ["MEI_QUIET"] = previous


def _keys(query: Any) -> list[dict[str, Any]]:
    return backend().keys(query)


def run_demo(
    *,
    out_dir: str | Path | None = "mei-demo",
    steps: int = 100,
    device: str = "cpu",
    seed: int = 42,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Fill the (activated) demo tables and compare each MEI with its neuron's filter.

    Inserts the dataset and its fitted models (once), creates the ensemble, populates the
    selector, adds the method (:func:`method_config` with ``steps`` and ``device``) and the
    seed, and populates ``MEI`` for them, showing a progress bar over neurons if ``progress``.
    Rows already there are kept: a second run computes nothing new. With ``out_dir``, writes
    ``meis.png`` (each MEI above its true filter) and ``traces.png`` (the optimization
    traces) there. ``log`` receives progress messages.
    """
    from ..plot import plot_mei_pairs, plot_trace  # fails early if matplotlib is missing

    dataset_key = {"dataset_id": DATASET["dataset_id"]}
    Dataset().insert1(DATASET, skip_duplicates=True)
    TrainedModel().insert(
        [dict(dataset_key, model_seed=s, noise=MODEL_NOISE) for s in MODEL_SEEDS],
        skip_duplicates=True,
    )
    ensemble_key = TrainedEnsembleModel().create_ensemble(dataset_key, comment="mei demo")
    Selector().populate(dataset_key)
    config = method_config(steps=steps, device=device)
    method_key = MEIMethod().add_method(
        "mei.methods.gradient_ascent", config, comment=f"mei demo, {steps} steps on {device}"
    )
    MEISeed().insert1({"mei_seed": int(seed)}, skip_duplicates=True)

    restriction = dict(**ensemble_key, **method_key, mei_seed=int(seed))
    todo = len(Selector() & dataset_key) - len(MEI() & restriction)
    log(f"populating MEI: {todo} of {len(Selector() & dataset_key)} neurons to compute")
    start = time.perf_counter()
    with _quiet_runs():  # one bar over the neurons, none per optimization run
        # all neurons of the ensemble share one batched engine run (rows equal unbatched ones)
        MEI().populate(restriction, batch_size=64, display_progress=progress)
    seconds = time.perf_counter() - start

    truth = Dataset().ground_truth(dataset_key)
    neurons, meis, outputs = [], [], []
    for key in sorted(_keys(MEI() & restriction), key=lambda k: int(k["neuron_id"])):
        neuron_id = int(key["neuron_id"])
        mei = MEI().load_mei(key)
        meis.append(mei)
        outputs.append(MEI().load_output(key))
        r = zoo.correlation(mei.reshape(1, -1), truth[neuron_id].reshape(1, -1))
        neurons.append(
            NeuronResult(
                neuron_id=neuron_id,
                kind=(Selector() & key).fetch1("neuron_kind"),
                score=float((MEI() & key).fetch1("score")),
                correlation=float(r[0]),
            )
        )
    result = DemoResult(neurons, dict(method_key), seconds, computed=todo)
    if out_dir is not None and neurons:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        figure_path = out_dir / "meis.png"
        plot_mei_pairs(
            meis,
            truth[[n.neuron_id for n in neurons]],
            scores=[n.score for n in neurons],
            correlations=[n.correlation for n in neurons],
            titles=[f"{n.neuron_id} {n.kind}" for n in neurons],
            labels=("MEI", "true filter"),
            suptitle=f"mei demo: each neuron's MEI above its true filter ({steps} steps)",
            path=figure_path,
        )
        trace_path = out_dir / "traces.png"
        plot_trace(
            outputs,
            suptitle=f"mei demo: how the MEIs of {len(outputs)} neurons improved, step by step",
            path=trace_path,
        )
        result.figures = [figure_path, trace_path]
    return result
