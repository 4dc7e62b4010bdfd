"""Tiny servers a test bed starts inside a host's namespace.

    python agent.py http --port 80 --name server
    python agent.py tcp-echo --port 7
    python agent.py udp-echo --port 7
    python agent.py tls --port 443 --name server
    python agent.py dns --port 53

``http`` answers ``GET`` on any path with the host's name and a newline, so a
client (or a load balancer test) can tell which host answered; ``GET /whoami``
answers instead with the client's address as this server saw it
(``ip:port`` and a newline), so a NAT test can tell which address and port a
connection arrived from; ``GET /download?size=N&seconds=S`` sends N bytes (the
host's name and a newline, repeated) spread over S seconds: a long download
whose every byte says where it came from. The echo
servers send back exactly what they receive. ``tls`` completes a TLS handshake
for any server name (a throwaway self-signed certificate, made at start with
the ``openssl`` command) and then sends the host's name and a newline, like
``http``. ``dns`` answers every A query (UDP) with ``DNS_ANSWER``, whatever the
name; other query types get an empty answer. They bind 0.0.0.0 and run until
SIGTERM. Only the standard library is used, and the file is run as a script
(not through the vnfchain package), so a service starts in milliseconds.
"""
from __future__ import annotations

import argparse
import ipaddress
import shutil
import signal
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# socketserver's default listen backlog is 5: a burst of connections (a NAT test opens
# hundreds at once) would overflow it and wait out SYN retransmits of 1, 2, 4 ... s
LISTEN_BACKLOG = 1024
DNS_ANSWER = "198.18.0.53"
DNS_TTL = 60


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


def _tls(port: int, name: str, cert_dir: str) -> socketserver.BaseServer:
    cert, key = f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=vnfchain-testbed", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    body = (name + "\n").encode()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(5)
            try:
                with context.wrap_socket(self.request, server_side=True) as conn:
                    sys.stderr.write(f"{self.client_address[0]} tls {conn.server_hostname or '-'}\n")
                    conn.sendall(body)
            except (OSError, ssl.SSLError) as exc:
                sys.stderr.write(f"{self.client_address[0]} tls failed: {exc}\n")

    return _ThreadingTCP(("0.0.0.0", port), Handler)


def dns_name(name: str) -> bytes:
    """'www.example' -> b'\\x03www\\x07example\\x00' (DNS wire format)."""
    return b"".join(bytes([len(label)]) + label for label in name.encode().split(b".") if label) + b"\0"


def dns_question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset) of the first question of a DNS message."""
    labels, p = [], 12
    while packet[p]:
        labels.append(packet[p + 1:p + 1 + packet[p]].decode(errors="replace"))
        p += 1 + packet[p]
    qtype = struct.unpack_from("!H", packet, p + 1)[0]
    return ".".join(labels), qtype, p + 5


class _Dns(socketserver.BaseRequestHandler):
    def handle(self):
        query, sock = self.request
        try:
            name, qtype, end = dns_question(query)
        except (IndexError, struct.error):
            return
        answer = b""
        if qtype == 1:  # A: a pointer to the question's name, type A, class IN, TTL, the address
            answer = struct.pack("!HHHIH", 0xC00C, 1, 1, DNS_TTL, 4) + ipaddress.IPv4Address(DNS_ANSWER).packed
        header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if answer else 0, 0, 0)
        sock.sendto(header + query[12:end] + answer, self.client_address)
        sys.stderr.write(f"{self.client_address[0]} dns {name} type {qtype}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.py")
    parser.add_argument("service", choices=["http", "tcp-echo", "udp-echo", "tls", "dns"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="", help="host name the http server answers with")
    args = parser.parse_args(argv)

    cert_dir = tempfile.mkdtemp(prefix="vnfchain-tls-") if args.service == "tls" else None
    if args.service == "http":
        server = _http(args.port, args.name)
    elif args.service == "tcp-echo":
        server = _ThreadingTCP(("0.0.0.0", args.port), _TcpEcho)
    elif args.service == "tls":
        server = _tls(args.port, args.name, cert_dir)
    elif args.service == "dns":
        server = socketserver.UDPServer(("0.0.0.0", args.port), _Dns)
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
        if cert_dir:
            shutil.rmtree(cert_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
