"""The DataJoint layer: mei's tables and how they are filled.

Modules, from the bottom up (each imports only those above it in this list):

- :mod:`~mei.dj.hashing`: NNFabrik's ``make_hash`` (no DataJoint needed);
- :mod:`~mei.dj.model_cache`: models for keys, cached (no DataJoint needed);
- :mod:`~mei.dj.helpers`: the original library's small helpers (``import_module``, the
  ``csrf_v1`` datafile readers; no DataJoint needed);
- :mod:`~mei.dj.backend`: everything that differs between DataJoint 2.x and 0.14 (type
  names, fetching keys, stored files and 2.x's file codec, job queues, connection ids) and
  every use of a private
  DataJoint name, behind one :class:`~mei.dj.backend.Backend` chosen once;
- :mod:`~mei.dj.run`: the one run path of a key (validate, key, device, ``generate_mei``,
  check), single or batched;
- :mod:`~mei.dj.populate`: batched populate with job reservation;
- :mod:`~mei.dj.recovery`: dead workers' keys back to the queue, their files removed;
- :mod:`~mei.dj.worker`: one worker's loop;
- :mod:`~mei.dj.tables`: the tables' logic (mixins);
- :mod:`~mei.dj.templates`: the DataJoint classes (re-exported by :mod:`mei.main`).

Importing this package imports nothing; the engine never imports it.
"""
