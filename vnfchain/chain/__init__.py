"""A service chain: the model (YAML / networkx), rendering, and deployment."""
from __future__ import annotations

from pathlib import Path

import networkx as nx
from pydantic import ValidationError

from .. import yamlio
from ..errors import SpecError
from .deployment import Deployment
from .model import AttachPoint, ChainSpec, FunctionSpec, dict_from_graph, spec_from_dict, \
    spec_to_dict, spec_to_graph
from .render import Unit


class Chain:
    """A validated chain definition. Build it with ``from_yaml``, ``from_dict`` or
    ``from_graph``; ``graph`` and ``to_yaml()`` give it back in either spelling."""

    def __init__(self, spec: ChainSpec, source: str | None = None):
        self.spec = spec
        self.source = source

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Chain":
        data, locator = yamlio.load(path)
        return cls(spec_from_dict(data, locator), source=str(path))

    @classmethod
    def from_yaml_text(cls, text: str, file: str | None = None) -> "Chain":
        data, locator = yamlio.loads(text, file)
        return cls(spec_from_dict(data, locator), source=file)

    @classmethod
    def from_dict(cls, data: dict) -> "Chain":
        return cls(spec_from_dict(data))

    @classmethod
    def from_graph(cls, graph: nx.DiGraph) -> "Chain":
        if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
            raise SpecError("a chain graph must be a networkx DiGraph (nx.DiGraph(name=...))")
        if not graph.graph.get("name"):
            raise SpecError("the chain graph has no name; create it as nx.DiGraph(name='my-chain')")
        return cls(spec_from_dict(dict_from_graph(graph)))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def graph(self) -> nx.DiGraph:
        return spec_to_graph(self.spec)

    def to_dict(self) -> dict:
        return spec_to_dict(self.spec)

    def to_yaml(self) -> str:
        return yamlio.dumps(self.to_dict())

    def render(self, mode: str | None = None, pin_dir: str | None = None) -> list[Unit]:
        from .record import pin_root
        from .render import render
        return render(self.spec, pin_dir or str(pin_root() / self.name), mode)

    def with_mode(self, mode: str) -> "Chain":
        return Chain(self.spec.with_changes(mode=mode), self.source)

    def with_attach(self, attach) -> "Chain":
        """The chain attached elsewhere (as ``deploy(attach=...)``)."""
        return Chain(self.spec.with_changes(attach=tuple(self._points(attach))), self.source)

    def deploy(self, attach=None, *, mode: str | None = None, progress=None, report=None) -> Deployment:
        """Make the kernel run this chain: deploy it, change the running chain of
        that name live, and repair what drifted (``report`` hears each repair);
        ``attach`` is a list of "IF", "IF@NETNS", (IF, NETNS) or AttachPoint."""
        from .deploy import deploy
        return deploy(self._with_mode(mode), attach=self._points(attach), progress=progress, report=report)

    def plan(self, attach=None, *, mode: str | None = None):
        """What ``deploy`` would do (a converge.Plan: ``kind``, ``lines()``); changes nothing."""
        from .deploy import plan
        return plan(self._with_mode(mode), attach=self._points(attach))

    def _with_mode(self, mode: str | None) -> ChainSpec:
        return self.spec if mode is None else self.spec.with_changes(mode=mode)

    @staticmethod
    def _points(attach) -> list[AttachPoint] | None:
        return None if attach is None else [_attach_point(a) for a in attach]


def _attach_point(value) -> AttachPoint:
    if isinstance(value, AttachPoint):
        return value
    if isinstance(value, tuple):
        interface, netns = value
    else:
        interface, _, netns = str(value).partition("@")
    try:
        return AttachPoint(interface=interface, netns=netns or None)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise SpecError(f"attach point '{value}' (IF or IF@NETNS): {reason}") from None


__all__ = ["Chain", "ChainSpec", "FunctionSpec", "AttachPoint", "Deployment"]
