"""Lazy re-exports for package ``__init__`` modules (PEP 562), so light commands do not import torch and MONAI."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """Build a module ``__getattr__`` that imports ``package.<module>`` on first access of one of its names.

    Args:
        package: the package's ``__name__``.
        exports: ``{module: [public names defined there]}``; the modules themselves are reachable as attributes too
            (MONAI configs write ``common.data.transforms.BraTSLayoutd``).

    Returns:
        ``(__getattr__, __all__)`` for the package.
    """
    where = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name in exports:
            return importlib.import_module(f"{package}.{name}")
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where)
