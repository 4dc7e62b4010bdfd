"""vnfchain: NFV service chains run inside the Linux kernel at the XDP hook.

    import vnfchain
    chain = vnfchain.Chain.from_yaml("examples/pvp-forward.yaml")   # or Chain.from_graph(g)
    dep = chain.deploy(attach=[("dut-lan", "vc-pvp-dut")])           # (interface, netns)
    dep.stats(); dep.run(packet); dep.undeploy()
"""
__version__ = "0.1.0"

from .chain import AttachPoint, Chain, Deployment  # noqa: E402
from .errors import (AttachError, CompileError, DeployError, NotDeployedError,  # noqa: E402
                     RecordError, SpecError, VerifierError, VnfchainError)

__all__ = ["Chain", "Deployment", "AttachPoint", "VnfchainError", "SpecError", "CompileError",
           "VerifierError", "DeployError", "AttachError", "RecordError", "NotDeployedError",
           "__version__"]
