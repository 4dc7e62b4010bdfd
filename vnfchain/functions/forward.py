"""forward: sends the packet on with XDP_REDIRECT.

By default the egress interface and next-hop MAC come from the kernel's own
routing and neighbour tables (``bpf_fib_lookup``), so the DUT forwards like a
router but without the stack. Packets the FIB cannot finish in XDP (no
neighbour entry yet, TTL running out, MTU, local destination) are passed to the
stack, which resolves or answers them; so are frames whose IP header the stack
would refuse and IPv4 source routes (LSRR/SSRR) and IPv6 routing headers with
segments left, which the stack drops or follows as accept_source_route says.
The lookup asks with the packet's protocol, ports, TOS (IPv6: traffic class
and flow label) and ingress interface, as policy routing reads them. With
``interface`` every packet leaves by that interface unchanged (a wire).
"""
from __future__ import annotations

from pydantic import Field

from ..errors import DeployError
from ..names import InterfaceName
from ..contract import FunctionType, MapSpec, Params
from ..layout import U32


class ForwardParams(Params):
    interface: InterfaceName | None = Field(
        None, description="send every packet out of this interface (in the chain's netns) "
                    "unchanged, instead of a FIB lookup")


class Forward(FunctionType):
    name = "forward"
    summary = "XDP_REDIRECT via the kernel FIB (bpf_fib_lookup), or out of a named interface"
    Params = ForwardParams
    reasons = ("no_route",)

    def maps(self, params):
        return [MapSpec("egress", "array", 1, U32, U32, "egress ifindex; 0 means look up the FIB")]

    def preflight(self, params, ctx):
        self._egress(params, ctx)

    def populate(self, tables, params, ctx):
        with tables.open("egress") as egress:
            egress.update(U32.pack(0), U32.pack(self._egress(params, ctx)))

    def _egress(self, params, ctx) -> int:
        if params.interface is None:
            return 0
        ifindex = ctx.resolve_ifindex(params.interface)
        if not ifindex:
            where = f"network namespace '{ctx.netns}'" if ctx.netns else "the root network namespace"
            raise DeployError(
                f"function '{ctx.function}': interface '{params.interface}' does not exist in {where}; "
                f"create it or fix 'interface:'")
        return ifindex
