"""The differences between DataJoint generations, in one place.

mei's tables run on DataJoint 2.x (PostgreSQL, MySQL/MariaDB) and on DataJoint 0.14 (MySQL/
MariaDB, the generation NNFabrik pipelines use). The two differ in type names, fetch API,
stored-file handling and dropping; everything else in :mod:`mei.mixins` is written once against
the helpers below. Importing this module imports DataJoint but connects to nothing.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datajoint as dj
import torch

from .integration import make_hash

GENERATION: int = int(dj.__version__.split(".")[0])
"""``2`` on DataJoint 2.x, ``0`` on DataJoint 0.x."""

IS_DJ2: bool = GENERATION >= 2

if GENERATION == 0 and tuple(int(p) for p in dj.__version__.split(".")[1:3]) < (14, 4):
    raise ImportError(
        f"mei needs DataJoint >= 0.14.4 (tripartite make) or 2.x, found {dj.__version__}"
    )

# One definition string per table; only these type names differ between generations.
# 2.x: core types (no "native type" warnings) and <object@store> (works on every backend).
# 0.14: the original library's types, so that existing tables and rows keep working.
TYPES: dict[str, str] = (
    {
        "int": "int32",
        "float": "float32",
        "blob": "<blob>",
        "timestamp": "datetime",
        "file": "<object@{store}>",
    }
    if IS_DJ2
    else {
        "int": "int",
        "float": "float",
        "blob": "longblob",
        "timestamp": "timestamp",
        "file": "attach@{store}",
    }
)

SCHEMA_NAME_ENV = "MEI_SCHEMA_NAME"


def types(store: str) -> dict[str, str]:
    """The type map with the stored-file type bound to ``store``, for ``str.format``."""
    if not isinstance(store, str) or not store or not store.replace("_", "").isalnum():
        raise ValueError(f"store must be a store name such as 'minio', got {store!r}")
    return {**TYPES, "file": TYPES["file"].format(store=store)}


def default_schema_name() -> str:
    """Where :class:`mei.main.MEIMethod` and :class:`mei.main.MEISeed` live unless told.

    ``$MEI_SCHEMA_NAME`` if set; else on DataJoint 0.14 NNFabrik's core schema
    (``dj.config["nnfabrik.schema_name"]``, default ``"nnfabrik_core"``), where the original
    library kept them; else ``"mei"``.
    """
    name = os.environ.get(SCHEMA_NAME_ENV)
    if name:
        return name
    if not IS_DJ2:
        return dj.config.get("nnfabrik.schema_name", "nnfabrik_core")
    return "mei"


def to_dicts(query: Any) -> list[dict[str, Any]]:
    """All rows of ``query`` as a list of dicts."""
    return query.to_dicts() if IS_DJ2 else query.fetch(as_dict=True)


def keys(query: Any) -> list[dict[str, Any]]:
    """The primary keys of ``query``'s rows."""
    return query.keys() if IS_DJ2 else query.fetch("KEY")


def drop_schema(schema: Any) -> None:
    """Drop ``schema`` with all its tables, without asking."""
    if IS_DJ2:
        schema.drop(prompt=False)
    else:
        schema.drop(force=True)


def insert_with_files(
    table: Any, row: Mapping[str, Any], files: Mapping[str, Any], store: str
) -> None:
    """Insert ``row`` plus one stored file per ``files`` item, written with ``torch.save``.

    ``files`` maps attribute names to the Python objects to save; ``store`` is their store
    (``table.storage``). Files reach the store only as part of this insert; if the insert fails, the files it wrote are removed again, so a
    failed insert leaves neither a row nor an orphan file.
    """
    if IS_DJ2:
        # Staged insert writes straight into the store and removes what it wrote on failure.
        with table.staged_insert1 as staged:
            staged.rec.update(row)
            for name, obj in files.items():
                with staged.open(name, ".pth.tar") as f:
                    torch.save(obj, f)
        return
    key_hash = make_hash({k: row[k] for k in table.primary_key})
    with tempfile.TemporaryDirectory() as temp_dir:
        paths = {}
        for name, obj in files.items():
            # The key's hash makes a file traceable to its row (attachment_names); the random
            # token makes it unique, so no other row shares it and removing it is safe.
            path = Path(temp_dir) / f"{name}_{key_hash}_{secrets.token_hex(8)}.pth.tar"
            torch.save(obj, path)
            paths[name] = str(path)
        try:
            table.insert1({**row, **paths})
        except BaseException:
            _remove_attachments_014(table, store, paths.values())
            raise


def attachment_names(key: Mapping[str, Any], names: Any = ("mei", "output")) -> list[str]:
    """Glob patterns of the file names that :func:`insert_with_files` gives ``key``'s files
    on DataJoint 0.14 (each name ends in a random token). The store keeps a file as
    ``<uuid>.<name>``."""
    key_hash = make_hash(dict(key))
    return [f"{name}_{key_hash}_*.pth.tar" for name in names]


def _remove_attachments_014(table: Any, store: str, paths: Any) -> None:
    """Remove the store copies of local attachment files (DataJoint 0.14 layout)."""
    from datajoint.hash import uuid_from_file

    external = table.external[store]
    for path in paths:
        name = Path(path).name
        uuid = uuid_from_file(path, init_string=name + "\0")
        external._remove_external_file(external._make_uuid_path(uuid, "." + name))
        (external & {"hash": uuid}).delete_quick()


def load_file(query: Any, attribute: str, *, weights_only: bool = False) -> Any:
    """Load the file stored in ``attribute`` of the single row of ``query`` with ``torch.load``.

    The files are pickles written by :func:`insert_with_files`; ``weights_only=False`` (the
    default) allows any Python object in them, so load only from stores you trust, as with
    DataJoint blobs.
    """
    if IS_DJ2:
        ref = query.fetch1(attribute)
        return torch.load(io.BytesIO(ref.read()), weights_only=weights_only)
    with tempfile.TemporaryDirectory() as temp_dir:
        path = query.fetch1(attribute, download_path=temp_dir)
        return torch.load(path, weights_only=weights_only)
