"""``python -m mei.worker TABLE ...``: the same as ``mei worker`` (see :mod:`mei.cli.worker`)."""

import sys

from .cli.worker import build_parser, main, run

__all__ = ["build_parser", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
