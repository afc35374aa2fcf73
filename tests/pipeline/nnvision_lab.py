"""A lab's MEI module, written the way public lab code writes it (DataJoint 0.14 + NNFabrik).

Modelled on the idiom of sinzlab/nnvision (``nnvision/tables/from_mei.py``, the
``Recording``/``Units`` selector of ``nnvision/tables/main.py``, ``nnvision/mei/targets.py``),
written anew for the tests of ``test_nnvision_lab.py``; nothing here is specific to this
library's tests but the two sessions' sizes:

- NNFabrik functions: a dataset of two recording sessions whose images have different sizes,
  a model with a shared core and one readout per session (called with ``data_key``), and a
  short trainer, all addressable by dotted path (``nnvision_lab.session_loaders``, ...);
- NNFabrik's core tables (``nnfabrik.main``: ``Fabrikant``, ``Dataset``, ``Model``,
  ``Trainer``, ``Seed``) and a ``TrainedModel`` of ``TrainedModelBase`` on them;
- ``Recording`` with its ``Sessions`` and ``Units`` parts: ``Units`` selects one neuron of a
  session (``ConstrainedOutputModel(model, unit_index, forward_kwargs=dict(data_key=...))``);
- target functions and target units, and ``MEIObjective`` combining them: its
  ``get_output_selected_model`` reduces several units of one session to one number;
- mei's tables as the lab subclasses them: ``Method`` (``MEIMethodMixin``), ``Ensemble``
  (``TrainedEnsembleModelTemplateMixin`` with its ``Member``), and two MEI tables
  (``MEITemplateMixin``): ``MEI`` on single units, ``MEITextures`` on objectives.

Like such modules, importing it connects to the database and declares the tables: configure
DataJoint first. The schema is ``dj.config["nnvision_lab.schema_name"]`` (NNFabrik's core schema
is ``dj.config["nnfabrik.schema_name"]``), so a worker started elsewhere with the same
``dj_local_conf.json`` (``mei worker nnvision_lab.MEI``) binds the same tables.
"""

from __future__ import annotations

import collections
import collections.abc
import math
import warnings
from functools import partial
from typing import Any

# What a lab on Python 3.10+ adds before importing NNFabrik 0.2.1 (it uses these names).
for _name in ("Iterable", "Mapping", "Sequence"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

import datajoint as dj  # noqa: E402
import torch  # noqa: E402
from nnfabrik.builder import resolve_fn  # noqa: E402
from nnfabrik.main import Dataset  # noqa: E402
from nnfabrik.templates.trained_model import DataInfoBase, TrainedModelBase  # noqa: E402
from nnfabrik.utility.dj_helpers import CustomSchema, cleanup_numpy_scalar, make_hash  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from mei import mixins  # noqa: E402
from mei.main import MEISeed  # noqa: E402
from mei.modules import ConstrainedOutputModel  # noqa: E402

Key = dict[str, Any]

# --------------------------------------------------------------------------- NNFabrik functions
#: Two recording sessions (data keys as a lab's scan ids) of different image sizes and neurons.
SESSIONS = {
    "3631896544452": {"image_shape": [1, 16, 16], "n_neurons": 4},
    "3632669014376": {"image_shape": [1, 12, 20], "n_neurons": 3},
}
TIERS = ("train", "validation", "test")


def session_loaders(
    seed: int, sessions: dict, n_images: int = 32, batch_size: int = 8
) -> dict[str, dict[str, DataLoader]]:
    """``{tier: {data_key: loader}}`` of images and responses of every session; the training
    loaders shuffle (and so draw from torch's global generator when read)."""
    loaders: dict[str, dict[str, DataLoader]] = {tier: {} for tier in TIERS}
    for s, (data_key, session) in enumerate(sessions.items()):
        shape = [int(d) for d in session["image_shape"]]
        truth = torch.Generator().manual_seed(1000 + s)  # the session's neurons
        weights = torch.randn(int(session["n_neurons"]), math.prod(shape), generator=truth)
        weights /= math.sqrt(math.prod(shape))
        for t, tier in enumerate(TIERS):
            g = torch.Generator().manual_seed(int(seed) * 100 + s * 10 + t)
            images = torch.randn(n_images, *shape, generator=g)
            responses = F.elu(images.flatten(1) @ weights.T) + 1
            loaders[tier][data_key] = DataLoader(
                TensorDataset(images, responses), batch_size=batch_size, shuffle=tier == "train"
            )
    return loaders


class SessionCNN(nn.Module):
    """A convolutional core shared by the sessions and one linear readout per session."""

    def __init__(self, shapes: dict[str, tuple], n_neurons: dict[str, int], hidden: int = 4):
        super().__init__()
        channels = next(iter(shapes.values()))[0]
        self.core = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ELU(), nn.Conv2d(hidden, hidden, 3)
        )
        self.readout = nn.ModuleDict(
            {
                k: nn.Linear(hidden * (h - 2) * (w - 2), n_neurons[k])
                for k, (_, h, w) in shapes.items()
            }
        )

    def forward(self, x: torch.Tensor, data_key: str | None = None, **kwargs: Any) -> torch.Tensor:
        if data_key is None:
            data_key = next(iter(self.readout))
        return F.elu(self.readout[data_key](self.core(x).flatten(1))) + 1


def session_cnn(dataloaders: dict, seed: int, hidden_channels: int = 4) -> nn.Module:
    """The model, sized from the first batch of every session's training loader."""
    shapes, n_neurons = {}, {}
    for data_key, loader in dataloaders["train"].items():
        images, responses = next(iter(loader))
        shapes[data_key] = tuple(images.shape[1:])
        n_neurons[data_key] = responses.shape[1]
    torch.manual_seed(int(seed))
    return SessionCNN(shapes, n_neurons, hidden_channels)


def standard_trainer(model, dataloaders, seed, uid=None, cb=None, epochs=2, lr=0.01, **kwargs):
    """A few epochs of Adam on the mean squared error; returns ``(score, output, state)``."""
    torch.manual_seed(int(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for data_key, loader in dataloaders["train"].items():
            for images, responses in loader:
                optimizer.zero_grad()
                loss = F.mse_loss(model(images, data_key=data_key), responses)
                loss.backward()
                optimizer.step()
    return -float(loss), {"loss": float(loss)}, model.state_dict()


# --------------------------------------------------------------------------- targets
def mean(output: torch.Tensor) -> torch.Tensor:
    """The mean response of the selected units: one number."""
    return output.mean()


resolve_target_fn = partial(resolve_fn, default_base="nnvision_lab")

# --------------------------------------------------------------------------- tables
schema = CustomSchema(dj.config.get("nnvision_lab.schema_name", "nnvision_lab"))


@schema
class DataInfo(DataInfoBase):
    nnfabrik = "core"


@schema
class TrainedModel(TrainedModelBase):
    table_comment = "Trained models"
    nnfabrik = "core"
    data_info_table = DataInfo


@schema
class Recording(dj.Computed):
    definition = """
    # the sessions and neurons of a dataset
    -> Dataset
    ---
    n_sessions:            int
    total_n_neurons:       int
    """

    class Sessions(dj.Part):
        definition = """
        -> master
        data_key:              varchar(64)
        ---
        n_neurons:             int
        image_height:          int
        image_width:           int
        """

    class Units(dj.Part):
        definition = """
        -> Recording.Sessions
        unit_id:            int
        ---
        unit_index:         int
        """
        constrained_output_model = ConstrainedOutputModel

        def get_output_selected_model(self, model: nn.Module, key: Key) -> nn.Module:
            unit_index, data_key = (self & key).fetch1("unit_index", "data_key")
            return self.constrained_output_model(
                model, unit_index, forward_kwargs=dict(data_key=data_key)
            )

    def make(self, key):
        dataset_fn, dataset_config = (Dataset & key).fn_config
        sessions = dataset_config["sessions"]
        self.insert1(
            dict(
                key,
                n_sessions=len(sessions),
                total_n_neurons=sum(int(s["n_neurons"]) for s in sessions.values()),
            )
        )
        for data_key, session in sessions.items():
            _, height, width = session["image_shape"]
            self.Sessions().insert1(
                dict(
                    key,
                    data_key=data_key,
                    n_neurons=session["n_neurons"],
                    image_height=height,
                    image_width=width,
                )
            )
            self.Units().insert(
                dict(key, data_key=data_key, unit_id=100 * (i + 1), unit_index=i)
                for i in range(int(session["n_neurons"]))
            )


@schema
class Method(mixins.MEIMethodMixin, dj.Lookup):
    seed_table = MEISeed


@schema
class Ensemble(mixins.TrainedEnsembleModelTemplateMixin, dj.Manual):
    dataset_table = Dataset
    trained_model_table = TrainedModel

    class Member(mixins.TrainedEnsembleModelTemplateMixin.Member, dj.Part):
        pass


@schema
class MEI(mixins.MEITemplateMixin, dj.Computed):
    """One MEI per method x ensemble x neuron x seed."""

    trained_model_table = Ensemble
    selector_table = Recording.Units
    method_table = Method
    seed_table = MEISeed


@schema
class MEITargetFunctions(dj.Manual):
    definition = """
    target_fn:       varchar(64)
    target_hash:     varchar(64)
    ---
    target_config:   longblob
    target_comment:  varchar(128)
    """

    resolve_fn = resolve_target_fn

    @property
    def fn_config(self):
        target_fn, target_config = self.fetch1("target_fn", "target_config")
        return target_fn, cleanup_numpy_scalar(target_config)

    def add_entry(self, target_fn, target_config, target_comment="", skip_duplicates=False):
        try:
            resolve_target_fn(target_fn)
        except (NameError, TypeError) as e:
            warnings.warn(str(e) + "\nTable entry rejected", stacklevel=2)
            return None
        key = dict(
            target_fn=target_fn,
            target_hash=make_hash(target_config),
            target_config=target_config,
            target_comment=target_comment,
        )
        existing = self.proj() & key
        if existing:
            if not skip_duplicates:
                raise ValueError("Corresponding entry already exists")
            return (self & existing).fetch1()
        self.insert1(key)
        return key

    def get_target_fn(self, key=None):
        if key is None:
            key = self.fetch("KEY")
        target_fn, target_config = (self & key).fn_config
        return partial(self.resolve_fn(target_fn), **target_config)


@schema
class MEITargetUnits(dj.Manual):
    definition = """
    unit_hash:       varchar(64)
    ---
    unit_ids:        longblob
    data_key:        varchar(64)
    unit_comment:    varchar(128)
    """

    def add_entry(self, unit_ids, data_key=None, unit_comment="", skip_duplicates=False):
        key = dict(
            unit_hash=make_hash([unit_ids, data_key]),
            unit_ids=unit_ids,
            data_key=data_key,
            unit_comment=unit_comment,
        )
        existing = self.proj() & key
        if existing:
            if not skip_duplicates:
                raise ValueError("Corresponding entry already exists")
            return (self & existing).fetch1()
        self.insert1(key)
        return key


@schema
class MEIObjective(dj.Computed):
    target_fn_table = MEITargetFunctions
    target_unit_table = MEITargetUnits
    constrained_output_model = ConstrainedOutputModel

    @property
    def definition(self):
        return """
        -> self.target_fn_table
        -> self.target_unit_table
        objective_hash:     varchar(64)
        ---
        objective_comment:  varchar(128)
        """

    def make(self, key):
        comments = [
            (self.target_fn_table & key).fetch1("target_comment"),
            (self.target_unit_table & key).fetch1("unit_comment"),
        ]
        key["objective_comment"] = ", ".join(comments)
        key["objective_hash"] = make_hash([key["target_hash"], key["unit_hash"]])
        self.insert1(key)

    def get_output_selected_model(self, model: nn.Module, key: Key) -> nn.Module:
        target_fn = (self.target_fn_table & key).get_target_fn()
        unit_ids, data_key = (self.target_unit_table & key).fetch1("unit_ids", "data_key")
        return self.constrained_output_model(
            model, unit_ids, target_fn, forward_kwargs=dict(data_key=data_key)
        )


@schema
class MEITextures(mixins.MEITemplateMixin, dj.Computed):
    """One MEI per method x ensemble x objective (several neurons, one number) x seed."""

    trained_model_table = Ensemble
    selector_table = MEIObjective
    method_table = Method
    seed_table = MEISeed
