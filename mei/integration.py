"""Hashing, model loading and dataset helpers for the tables (public address kept from the
original library).

Defined in :mod:`mei.dj.hashing`, :mod:`mei.dj.model_cache` and :mod:`mei.dj.helpers`; none of
them needs DataJoint.
"""

from .dj.hashing import hash_list_of_dictionaries, make_hash
from .dj.helpers import get_mappings, import_module, load_pickled_data
from .dj.model_cache import ModelLoader

__all__ = [
    "ModelLoader",
    "get_mappings",
    "hash_list_of_dictionaries",
    "import_module",
    "load_pickled_data",
    "make_hash",
]
