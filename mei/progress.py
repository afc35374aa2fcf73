"""Progress bars that stay quiet when nobody watches."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def progress_enabled(enabled: bool | None = None) -> bool:
    """Show bars? ``enabled`` wins; otherwise only on a terminal and unless ``MEI_QUIET`` is set."""
    if enabled is not None:
        return enabled
    if os.environ.get("MEI_QUIET", "").strip() not in ("", "0"):
        return False
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(*, enabled: bool | None = None, **kwargs: Any) -> Iterator[Any]:
    """A tqdm bar (or ``None`` when disabled, or when ``total`` is 0: nothing to show), closed
    on exit."""
    if not progress_enabled(enabled) or kwargs.get("total") == 0:
        yield None
        return
    from tqdm.auto import tqdm  # imported here: importing mei needs only torch

    bar = tqdm(**kwargs)
    try:
        yield bar
    finally:
        bar.close()
