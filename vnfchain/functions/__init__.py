"""Function types, found by looking: every module in this package that defines a
``FunctionType`` subclass with a ``name`` registers it. Adding a type is one
module here and one template in templates/bpf/ — nothing else changes."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from .base import FunctionType, MapSpec, Params, RenderContext


def _discover() -> dict[str, FunctionType]:
    found: dict[str, FunctionType] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, FunctionType) and cls.__module__ == module.__name__ and "name" in vars(cls):
                found[cls.name] = cls()
    return dict(sorted(found.items()))


REGISTRY: dict[str, FunctionType] = _discover()


def get(name: str) -> FunctionType | None:
    return REGISTRY.get(name)


__all__ = ["REGISTRY", "get", "FunctionType", "MapSpec", "Params", "RenderContext"]
