"""Open many TCP connections at once, echo a unique token over each, hold them.

    python tcp_hold_client.py ADDR PORT COUNT TAG

Run inside a host's namespace (``tb.popen(host, [sys.executable, "-I", this, ...])``)
against a tcp-echo service. All COUNT connections are started together
(non-blocking connect), each sends ``TAG-<i>\\n`` and must get exactly that back.
Then one JSON line goes to stdout::

    {"open": 250, "failed": ["#17: connection refused", ...], "local_ports": [...]}

and every connection stays open until a line arrives on stdin (or stdin closes),
so a test can look at the server side while all of them are established. Standard
library only, no vnfchain import: it starts in milliseconds.
"""
from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import sys
import time

TIMEOUT = 10.0


def connect_all(addr: str, port: int, count: int) -> tuple[dict[int, socket.socket], list[str]]:
    pending, failed = {}, []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((addr, port))
        if code not in (0, errno.EINPROGRESS):
            failed.append(f"#{i}: {os.strerror(code)}")
            sock.close()
            continue
        pending[i] = sock
    sel = selectors.DefaultSelector()
    for i, sock in pending.items():
        sel.register(sock, selectors.EVENT_WRITE, i)
    connected, deadline = {}, time.monotonic() + TIMEOUT
    while len(connected) + len(failed) < count and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            sel.unregister(key.fileobj)
            code = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                failed.append(f"#{key.data}: connect: {os.strerror(code)}")
                key.fileobj.close()
            else:
                connected[key.data] = key.fileobj
    for key in list(sel.get_map().values()):
        failed.append(f"#{key.data}: connect timed out")
        key.fileobj.close()
    sel.close()
    return connected, failed


def echo_all(conns: dict[int, socket.socket], tag: str) -> list[str]:
    """Send every token first, then read every answer: all exchanges overlap."""
    failed = []
    for i, sock in list(conns.items()):
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        try:
            sock.sendall(f"{tag}-{i}\n".encode())
        except OSError as exc:
            failed.append(f"#{i}: send: {exc}")
            conns.pop(i).close()
    for i, sock in list(conns.items()):
        want, got = f"{tag}-{i}\n".encode(), b""
        try:
            while len(got) < len(want) and (data := sock.recv(len(want) - len(got))):
                got += data
        except OSError as exc:
            got += f" ({exc})".encode()
        if got != want:
            failed.append(f"#{i}: sent {want!r}, echoed {got!r}")
            conns.pop(i).close()
    return failed


def main(argv: list[str]) -> int:
    addr, port, count, tag = argv[0], int(argv[1]), int(argv[2]), argv[3]
    conns, failed = connect_all(addr, port, count)
    failed += echo_all(conns, tag)
    report = {"open": len(conns), "failed": failed,
              "local_ports": sorted(sock.getsockname()[1] for sock in conns.values())}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # hold every connection until told (or until stdin closes)
    for sock in conns.values():
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
