"""Registry of function types. Adding a type: one module here + one template."""
from __future__ import annotations

from .base import FunctionType, MapSpec, Params, RenderContext
from .classify import Classify
from .counter import Counter
from .forward import Forward

REGISTRY: dict[str, FunctionType] = {t.name: t for t in (Counter(), Forward(), Classify())}


def get(name: str) -> FunctionType | None:
    return REGISTRY.get(name)


__all__ = ["REGISTRY", "get", "FunctionType", "MapSpec", "Params", "RenderContext"]
