"""Exceptions raised by mei.

Every error a user can cause derives from :class:`MEIError`; configuration problems are also
``ValueError`` so that code catching the built-in keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

#: At most this many names are listed in a message; the rest are counted.
MAX_LISTED = 5
#: A value's repr in a message is cut to about this many characters.
MAX_REPR = 120


def shorten(value: Any, limit: int = MAX_REPR) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the total length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def list_names(names: Iterable[Any], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` of ``names`` as a list, then how many more there are."""
    items = list(names)
    shown = "[" + ", ".join(shorten(n, 60) for n in items[:limit]) + "]"
    if len(items) > limit:
        shown += f" and {len(items) - limit:,} more"
    return shown


class MEIError(Exception):
    """Base class of mei's own errors."""


class ConfigError(MEIError, ValueError):
    """A method config is malformed: unknown or missing key, bad path, rejected kwargs.

    ``key`` is the config key (``"stopper"``, ``"objectives[1]"``), ``path`` the dotted path
    involved, when there is one.
    """

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None):
        prefix = ""
        if key is not None:
            prefix += f"config[{key!r}]"
        if path is not None:
            prefix += f" ({path})" if prefix else f"{path}"
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.key = key
        self.path = path


class ComponentError(MEIError, TypeError):
    """A resolved component misbehaved at run time, e.g. returned the wrong kind of thing."""


class ModelError(MEIError, ValueError):
    """The model cannot be optimized: wrong output shape, or output independent of its input."""


class InputError(MEIError, ValueError):
    """An argument other than the config is malformed: a seed, the dataloaders, a shape.

    ``argument`` names it (``"seed"``, ``"dataloaders"``).
    """

    def __init__(self, message: str, *, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


class NonFiniteError(MEIError, FloatingPointError):
    """The evaluation became NaN or infinite during optimization."""


class DeviceUnavailableError(MEIError, RuntimeError):
    """A populate or worker would run methods on a device this machine does not have.

    Raised before any key is reserved or computed. ``device`` is the device asked for;
    ``methods`` the keys (``method_fn``, ``method_hash``) of the method rows that ask for it,
    empty when it is the MEI table's ``device`` override; ``override`` the name of that
    attribute (``"MEI.device"``), which redirects every method to another device.
    """

    def __init__(
        self,
        message: str,
        *,
        device: str,
        methods: Iterable[dict[str, Any]] = (),
        override: str | None = None,
    ):
        super().__init__(message)
        self.device = device
        self.methods = [dict(m) for m in methods]
        self.override = override


class StoreUnavailableError(MEIError, RuntimeError):
    """The store that keeps an MEI table's files cannot be used: not configured, unreachable,
    its bucket missing, the credentials refused, or not writable.

    Raised before any key is reserved (``populate``, ``mei worker``), and by a populate whose
    store stops working mid-run after the keys of the batch in hand were recorded or given
    back. ``store`` is the store's name, ``reason`` what is wrong, ``transient`` whether it
    looks like an outage (connection refused, timeouts, server errors) rather than a setting
    to fix (credentials, bucket, permissions).
    """

    def __init__(self, message: str, *, store: str, reason: str, transient: bool = False):
        super().__init__(message)
        self.store = store
        self.reason = reason
        self.transient = transient


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or during (``__cause__``, else
    ``__context__``), each once, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
