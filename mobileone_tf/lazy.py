"""Lazy package exports (PEP 562): a package lists ``{public name: module}``
and the module is imported on first use of the name, so importing the package
stays light (no TensorFlow until a name that needs it is used)."""

from __future__ import annotations

import importlib
import sys


def exports(package: str, table: dict):
    """Returns ``(__getattr__, __dir__)`` for the package ``package``.

    Args:
        package: the package's ``__name__``.
        table: ``{public name: module}``; a module name starting with ``.`` is
            relative to ``package``.

    Raises (from ``__getattr__``):
        AttributeError: for a name not in ``table``.
    """

    def __getattr__(name):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = package + module if module.startswith(".") else module
        value = getattr(importlib.import_module(target), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
