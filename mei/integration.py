"""Hashing and model loading for the tables (public address kept from the original library).

Defined in :mod:`mei.dj.hashing` and :mod:`mei.dj.model_cache`; neither needs DataJoint.
"""

from .dj.hashing import hash_list_of_dictionaries, make_hash
from .dj.model_cache import ModelLoader

__all__ = ["ModelLoader", "hash_list_of_dictionaries", "make_hash"]
