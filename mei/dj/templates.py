"""mei's DataJoint tables: templates for your schema and two ready tables.

Templates (undecorated; subclass them, set their links, decorate with your schema):

- :class:`TrainedEnsembleModelTemplate` (with part ``Member``): links ``dataset_table`` and
  ``trained_model_table`` (e.g. an NNFabrik ``TrainedModelBase`` subclass).
- :class:`CSRFV1ObjectiveTemplate` (also ``CSRFV1SelectorTemplate``): a selector of the
  neurons of ``csrf_v1`` datasets; links ``dataset_table``.
- :class:`MEITemplate`: links ``trained_model_table`` (usually your TrainedEnsembleModel),
  ``selector_table`` (maps a neuron to a model output, has ``get_output_selected_model``),
  ``method_table`` (default :class:`MEIMethod`), ``seed_table`` (default :class:`MEISeed`);
  files go to the store named by ``storage`` (default ``"minio"``).
- :class:`NeuronSetTemplate` (with part ``Member``): sets of neurons of one dataset; links
  ``dataset_table`` and ``selector_table``.
- :class:`MDSTemplate` (with part ``Neuron``): most discriminative stimuli, several per row:
  links ``trained_model_table``, ``neuron_set_table``, ``method_table`` and ``seed_table``.
- :class:`MEIValidationTemplate`: MEIs scored on validating models and against their units'
  best natural images; links ``mei_table`` and ``validating_model_table``.
- :class:`ExcitingVariantsTemplate` (with part ``Variant``): exciting variants of stored
  MEIs (:mod:`mei.variants`): links ``mei_table``, ``method_table`` and ``seed_table``.

Ready tables: :class:`MEIMethod` and :class:`MEISeed` live in :data:`schema`. Importing this
module connects to nothing; the schema is activated on first use of either table (or of a
template that links them) under :meth:`mei.dj.backend.Backend.default_schema_name` — ``$MEI_SCHEMA_NAME``,
else NNFabrik's core schema on DataJoint 0.14 (where the original library kept them), else
``"mei"`` — unless :func:`activate` chose a name before.

Works on DataJoint 2.x (PostgreSQL, MySQL/MariaDB) and 0.14.4+ (MySQL/MariaDB); connection
settings come from DataJoint's own configuration.
"""

from __future__ import annotations

from typing import Any

import datajoint as dj

from . import tables
from .backend import backend

__all__ = [
    "CSRFV1ObjectiveTemplate",
    "CSRFV1SelectorTemplate",
    "ExcitingVariantsTemplate",
    "MDSTemplate",
    "MEIMethod",
    "MEISeed",
    "MEITemplate",
    "MEIValidationTemplate",
    "NeuronSetTemplate",
    "TrainedEnsembleModelTemplate",
    "activate",
    "schema",
]

schema = dj.Schema()
"""The schema of :class:`MEIMethod` and :class:`MEISeed`; see :func:`activate`."""


def activate(
    schema_name: str | None = None,
    *,
    connection: Any = None,
    create_schema: bool = True,
    create_tables: bool = True,
) -> str:
    """Bind :class:`MEIMethod` and :class:`MEISeed` to the database schema ``schema_name``.

    Call it before the tables are first used to choose their schema; without a name it uses
    :meth:`mei.dj.backend.Backend.default_schema_name`. Activating again with the same name does nothing; a
    different name raises DataJoint's error. Returns the schema name.
    """
    name = schema_name or backend().default_schema_name()
    schema.activate(
        name, connection=connection, create_schema=create_schema, create_tables=create_tables
    )
    return name


def _ensure_activated() -> None:
    if not schema.is_activated():
        activate()


class _ActivatesSchema:
    """Activates :data:`schema` (default name) when the table is first instantiated."""

    def __init__(self, *args: Any, **kwargs: Any):
        _ensure_activated()
        super().__init__(*args, **kwargs)


class _DefaultTable:
    """A template's default link to one of this module's tables, activating it when read."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, instance: Any, owner: type) -> type:
        _ensure_activated()
        table: type = globals()[self.name]
        return table

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@schema
class MEISeed(_ActivatesSchema, tables.MEISeedMixin, dj.Lookup):
    """Seed table for MEI methods."""


@schema
class MEIMethod(_ActivatesSchema, tables.MEIMethodMixin, dj.Lookup):
    """MEI methods and their configurations; add rows with :meth:`add_method`."""


class TrainedEnsembleModelTemplate(tables.TrainedEnsembleModelTemplateMixin, dj.Manual):
    """TrainedEnsembleModel table template.

    Subclass it, set ``dataset_table`` and ``trained_model_table`` and decorate it with your
    schema. Then :meth:`create_ensemble` makes ensembles and :meth:`load_model` loads them.
    """

    class Member(tables.TrainedEnsembleModelTemplateMixin.Member, dj.Part):
        """Member table template."""


class CSRFV1ObjectiveTemplate(tables.CSRFV1ObjectiveTemplateMixin, dj.Computed):
    """CSRF V1 objective (selector) table template.

    Subclass it, set ``dataset_table`` (e.g. ``nnfabrik.main.Dataset``) and decorate it with
    your schema; ``populate()`` reads the neurons of every ``csrf_v1`` dataset. Link it to
    your MEI table as its ``selector_table``.
    """


CSRFV1SelectorTemplate = CSRFV1ObjectiveTemplate
"""The template's name in sinzlab/mei before June 2020."""


class MEITemplate(tables.MEITemplateMixin, dj.Computed):
    """MEI table template.

    Subclass it, set ``trained_model_table`` and ``selector_table`` (and, to use other tables
    than this module's, ``method_table`` and ``seed_table``), decorate it with your schema and
    ``populate()`` it. :meth:`load_mei` and :meth:`load_output` read results back.
    """

    method_table: Any = _DefaultTable("MEIMethod")
    seed_table: Any = _DefaultTable("MEISeed")


class NeuronSetTemplate(tables.NeuronSetTemplateMixin, dj.Manual):
    """Neuron set table template.

    Subclass it, set ``dataset_table`` and ``selector_table`` and decorate it with your schema.
    Then :meth:`create_set` makes sets of neurons and :meth:`member_keys` lists them.
    """

    class Member(tables.NeuronSetTemplateMixin.Member, dj.Part):
        """Member table template."""


class MDSTemplate(tables.MDSTemplateMixin, dj.Computed):
    """Most discriminative stimuli (MDS) table template: several stimuli per row.

    Subclass it, set ``trained_model_table`` and ``neuron_set_table`` (and, to use other tables
    than this module's, ``method_table`` and ``seed_table``), decorate it with your schema, add
    a method row for ``mei.clustering.mds`` and ``populate()`` it. :meth:`load_mds` gives the
    stimuli, :meth:`load_clusters` the neurons of each, :meth:`load_output` the method's output.
    """

    class Neuron(tables.MDSTemplateMixin.Neuron, dj.Part):
        """Neuron table template."""

    method_table: Any = _DefaultTable("MEIMethod")
    seed_table: Any = _DefaultTable("MEISeed")


class MEIValidationTemplate(tables.MEIValidationTemplateMixin, dj.Computed):
    """MEI validation table template: each MEI scored on a validating model and against its
    unit's most exciting natural images of the dataset.

    Subclass it, set ``mei_table`` (your MEI table) and ``validating_model_table`` (your
    trained model table, to score on single models, or your ensemble table), decorate it with
    your schema and ``populate()`` it (``populate(batch_size=64)``: 64 MEIs of one validating
    model per forward pass). ``top_k`` and ``tier`` choose the natural images.
    """


class ExcitingVariantsTemplate(tables.ExcitingVariantsTemplateMixin, dj.Computed):
    """Exciting variants table template: for each stored MEI, images that each drive its
    neuron to a fraction of the MEI's response, as different as possible (:mod:`mei.variants`).

    Subclass it, set ``mei_table`` (your MEI table; and, to use other tables than this
    module's, ``method_table`` and ``seed_table``), decorate it with your schema, add a method
    row for ``mei.variants.exciting_variants`` and ``populate()`` it. :meth:`load_variants`
    gives the images, the part ``Variant`` each one's response, :meth:`load_output` the
    method's output.
    """

    class Variant(tables.ExcitingVariantsTemplateMixin.Variant, dj.Part):
        """Variant table template."""

    method_table: Any = _DefaultTable("MEIMethod")
    seed_table: Any = _DefaultTable("MEISeed")
