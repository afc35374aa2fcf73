"""Turn dotted paths such as ``"torch.optim.SGD"`` into Python objects."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def split_module_name(abs_class_name: str) -> tuple[str, str]:
    """Split ``"package.module.Name"`` into ``("package.module", "Name")``."""
    if not isinstance(abs_class_name, str) or "." not in abs_class_name:
        raise ValueError(f"expected a dotted path 'module.Name', got {abs_class_name!r}")
    abs_module_name, _, class_name = abs_class_name.rpartition(".")
    return abs_module_name, class_name


def resolve_path(path: str) -> Any:
    """Import and return the object named by the dotted ``path``.

    Raises ``ImportError`` naming the path when the module or attribute does not exist.
    """
    module_name, name = split_module_name(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"cannot import module {module_name!r} for {path!r}: {e}") from e
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {name!r}") from None


def import_object(path: str, object_kwargs: Mapping[str, Any] | None = None) -> Any:
    """Import the object at the dotted ``path`` and call it with ``object_kwargs`` (the
    original library's helper: ``import_object("torch.optim.SGD", {...})`` gives an optimizer).

    Raises ``ValueError`` naming the path when it is not dotted, or its module or object does
    not exist, or the object is not callable.
    """
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"{path!r} is not an absolute dotted path such as 'module.Name'")
    try:
        obj = resolve_path(path)
    except ImportError as e:
        raise ValueError(str(e)) from e
    if not callable(obj):
        raise ValueError(f"the object at {path!r} ({type(obj).__name__}) is not callable")
    return obj(**(object_kwargs or {}))


def dynamic_import(abs_module_path: str, class_name: str) -> Any:
    """Import ``class_name`` from the module ``abs_module_path`` (the seed's helper)."""
    return resolve_path(f"{abs_module_path}.{class_name}")


def import_path(path: str, kwargs: Mapping[str, Any] | None = None) -> Any:
    """Import the object at ``path`` and call it with ``kwargs``."""
    return resolve_path(path)(**(kwargs or {}))
