"""Tiny servers a test bed starts inside a host's namespace.

    python agent.py http --port 80 --name server
    python agent.py tcp-echo --port 7
    python agent.py udp-echo --port 7

``http`` answers ``GET`` on any path with the host's name and a newline, so a
client (or a load balancer test) can tell which host answered; ``GET /whoami``
answers instead with the client's address as this server saw it
(``ip:port`` and a newline), so a NAT test can tell which address and port a
connection arrived from; ``GET /download?size=N&seconds=S`` sends N bytes (the
host's name and a newline, repeated) spread over S seconds: a long download
whose every byte says where it came from. The echo
servers send back exactly what they receive. They bind 0.0.0.0 and run until
SIGTERM. Only the standard library is used, and the file is run as a script
(not through the vnfchain package), so a service starts in milliseconds.
"""
from __future__ import annotations

import argparse
import signal
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# socketserver's default listen backlog is 5: a burst of connections (a NAT test opens
# hundreds at once) would overflow it and wait out SYN retransmits of 1, 2, 4 ... s
LISTEN_BACKLOG = 1024


def _http(port: int, name: str) -> socketserver.BaseServer:
    name_body = (name + "\n").encode()

    class NameHandler(BaseHTTPRequestHandler):
        server_version = "vnfchain-testbed"

        def _body(self) -> bytes:
            if self.path.split("?", 1)[0] == "/whoami":
                host, port = self.client_address[:2]
                return f"{host}:{port}\n".encode()
            return name_body

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if path == "/download":
                return self._download(dict(p.split("=", 1) for p in query.split("&") if "=" in p))
            body = self._body()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _download(self, args):
            size, seconds = int(args.get("size", 1 << 20)), float(args.get("seconds", 0))
            chunks = max(1, int(seconds * 20))
            data = (name_body * (size // len(name_body) + 1))[:size]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            step = -(-size // chunks)
            for i in range(0, size, step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(seconds / chunks)

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self._body())))
            self.end_headers()

        def log_message(self, fmt, *args):  # one line per request, on stderr (the service log)
            sys.stderr.write(f"{self.client_address[0]} {fmt % args}\n")

    class Server(ThreadingHTTPServer):
        allow_reuse_address = True
        request_queue_size = LISTEN_BACKLOG

    return Server(("0.0.0.0", port), NameHandler)


class _TcpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _UdpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


class _ThreadingTCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.py")
    parser.add_argument("service", choices=["http", "tcp-echo", "udp-echo"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="", help="host name the http server answers with")
    args = parser.parse_args(argv)

    if args.service == "http":
        server = _http(args.port, args.name)
    elif args.service == "tcp-echo":
        server = _ThreadingTCP(("0.0.0.0", args.port), _TcpEcho)
    else:
        server = socketserver.UDPServer(("0.0.0.0", args.port), _UdpEcho)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
