"""Every error vnfchain raises on purpose.

    VnfchainError                  base; ``exit_code`` is what the CLI returns
    ├── SpecError                  a chain or topology definition is invalid (exit 2)
    ├── RenderError                a template could not be rendered
    ├── CompileError               the C compiler rejected a function's program
    ├── VerifierError              the kernel verifier rejected a program
    ├── DeployError                loading, pinning or recording a chain failed
    │   ├── AttachError            an interface could not take the XDP program
    │   └── RecordError            a chain's deployment record is there but unreadable
    ├── NotDeployedError           no chain of that name is running
    ├── EnvironmentError_          the machine lacks something (root, bpffs, BCC)
    └── TestbedError               a test bed could not be built or torn down

Each message is meant to be shown to a user as is: it names the object, the
cause, and the next step.
"""
from __future__ import annotations


class VnfchainError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.detail = detail  # long output (compiler, verifier): shown with -v or after the message


class SpecError(VnfchainError):
    """A definition is wrong; carries where (file:line) and which key."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, detail: str = ""):
        self.file, self.line, self.key = file, line, key
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(where + message, detail=detail)
        self.reason = message


class SpecErrors(SpecError):
    """Every mistake found in one definition, in file order; reads as the first
    (its file, line, key) followed by the others, one per line."""

    def __init__(self, errors: list[SpecError]):
        self.errors = sorted(errors, key=lambda e: (e.file or "", e.line or 0))
        first = self.errors[0]
        super().__init__(first.reason, file=first.file, line=first.line, key=first.key)
        self.message = "\n".join(e.message for e in self.errors)
        self.args = (self.message,)

    @staticmethod
    def raise_if(errors: list[SpecError]) -> None:
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise SpecErrors(errors)


class RenderError(VnfchainError):
    pass


class CompileError(VnfchainError):
    def __init__(self, message: str, *, function: str, detail: str = ""):
        self.function = function
        super().__init__(message, detail=detail)


class VerifierError(CompileError):
    pass


class DeployError(VnfchainError):
    pass


class AttachError(DeployError):
    pass


class RecordError(DeployError):
    """Names the chain, its record and why it cannot be read; undeploy still works."""

    def __init__(self, name: str, path, reason: str):
        self.name, self.path, self.reason = name, path, reason
        super().__init__(f"the record of chain '{name}' ({path}) is unreadable: {reason}; "
                         f"`vnfchain undeploy {name}` removes what it can (its pins, and its "
                         f"programs wherever they are attached)")


class NotDeployedError(VnfchainError):
    pass


class EnvironmentError_(VnfchainError):
    pass


class TestbedError(VnfchainError):
    __test__ = False  # not a pytest class


class TestbedSpecError(SpecError, TestbedError):
    __test__ = False
