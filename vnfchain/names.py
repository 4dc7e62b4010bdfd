"""Interface and network namespace names, held to the rules of whoever receives them.

An interface name goes to the kernel, which takes what ``dev_valid_name()``
(net/core/dev.c) takes: 1-15 bytes (IFNAMSIZ less the NUL), none of them '/',
':' or a space by the kernel's ``isspace()`` (which counts byte 0xa0 too, so a
UTF-8 'à' is refused), and not '.' or '..'. A network namespace name becomes
the file ``/run/netns/<name>``, so it follows iproute2's ``ip netns add``: 1-255
bytes (NAME_MAX), no '/', not '.' or '..'. Neither may hold a NUL byte, which
would cut it short on the way down.

``InterfaceName`` and ``NetnsName`` are the pydantic types of every such field;
an error names the value and the rule.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

IFNAME_MAX = 15          # IFNAMSIZ less the terminating NUL
NETNS_NAME_MAX = 255     # NAME_MAX: a netns name is a file name
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")   # lib/ctype.c: _S

IFNAME_RULE = f"1-{IFNAME_MAX} bytes (IFNAMSIZ) without '/', ':' or whitespace, and not '.' or '..'"
NETNS_RULE = f"1-{NETNS_NAME_MAX} bytes without '/', and not '.' or '..' (it is a file in /run/netns)"


def _problem(name: str, raw: bytes, limit: int, forbidden: bytes, *, space: bool) -> str | None:
    if not raw:
        return "is empty"
    if len(raw) > limit:
        return f"is {len(raw)} bytes long"
    if name in (".", ".."):
        return "is a directory name"
    for byte in raw:
        if byte in forbidden or byte == 0:
            return f"contains {chr(byte)!r}"
        if space and byte == 0xa0 and not name.isascii():
            return "contains byte 0xa0 (part of a UTF-8 character such as 'à'), which the kernel takes for a space"
        if space and byte in _KERNEL_SPACE:
            return "contains whitespace"
    return None


def interface_error(name: str) -> str | None:
    """Why the kernel would refuse ``name`` as an interface name, or None."""
    problem = _problem(name, name.encode("utf-8", "replace"), IFNAME_MAX, b"/:", space=True)
    return problem and f"interface name {_shown(name)} {problem}; an interface name is {IFNAME_RULE}"


def netns_error(name: str) -> str | None:
    """Why ``ip netns`` would refuse ``name`` as a network namespace name, or None."""
    problem = _problem(name, name.encode("utf-8", "replace"), NETNS_NAME_MAX, b"/", space=False)
    return problem and f"network namespace name {_shown(name)} {problem}; a netns name is {NETNS_RULE}"


def _shown(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:40] + "...")


def _validator(check):
    def validate(value: str) -> str:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value
    return AfterValidator(validate)


InterfaceName = Annotated[str, _validator(interface_error)]
NetnsName = Annotated[str, _validator(netns_error)]
