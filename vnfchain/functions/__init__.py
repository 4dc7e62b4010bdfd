"""Function types, found by looking: every module (or package) in this package
that defines a ``FunctionType`` subclass with a ``name`` registers it. Adding a
type is one module here and one template in templates/bpf/ — nothing else
changes. What a type declares is vnfchain/contract.py."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from ..contract import FunctionType


def _discover() -> dict[str, FunctionType]:
    found: dict[str, FunctionType] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, FunctionType) and cls.__module__ == module.__name__ and "name" in vars(cls):
                found[cls.name] = cls()
    return dict(sorted(found.items()))


REGISTRY: dict[str, FunctionType] = _discover()


def get(name: str) -> FunctionType | None:
    return REGISTRY.get(name)


__all__ = ["REGISTRY", "get"]
