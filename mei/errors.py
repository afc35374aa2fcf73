"""Exceptions raised by mei.

Every error a user can cause derives from :class:`MEIError`; configuration problems are also
``ValueError`` so that code catching the built-in keeps working.
"""

from __future__ import annotations


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


class NonFiniteError(MEIError, FloatingPointError):
    """The evaluation became NaN or infinite during optimization."""
