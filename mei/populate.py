"""Batched populate, recovery and workers (public address of :mod:`mei.dj`'s modules).

Defined in :mod:`mei.dj.populate`, :mod:`mei.dj.recovery` and :mod:`mei.dj.worker`.
"""

from .dj.backend import JobQueue
from .dj.populate import populate
from .dj.recovery import recover, remove_orphan_files
from .dj.run import compute
from .dj.worker import run_worker

__all__ = ["JobQueue", "compute", "populate", "recover", "remove_orphan_files", "run_worker"]
