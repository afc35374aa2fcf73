"""``python -m mei``: the ``mei`` command (see :mod:`mei.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
