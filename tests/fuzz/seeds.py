#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into tests/fuzz/corpus/TARGET/.

The seeds are well-formed examples of what each target stands for, so that the fuzzer
starts from inputs that get deep (a hello that is accepted, a gRPC call to each method, an
HTTP request for a routed virtual host, a certificate and key that load) and mutates from
there. Protobuf, HTTP/2 and HPACK are encoded by hand here: no dependencies. The PEM seed
needs the `openssl` command; without it, that seed is left out.

Usage: python3 tests/fuzz/seeds.py
"""

import os
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# --- protobuf ---------------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def uint(field, n):
    return varint(field << 3) + varint(n)


def blob(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


TICKET = bytes(range(16))
KEY = bytes(range(100, 116))


def duration(seconds):
    return uint(1, seconds)


def exposed_port(port, http=True, tcp=False):
    out = uint(1, port)
    if http:
        out += blob(2, uint(1, 1) + blob(2, "service.local"))
    if tcp:
        out += blob(3, uint(1, 20000) + uint(2, 1))
    return out


def error_info_status(code, message, reason, metadata):
    info = blob(1, reason) + blob(2, "sesame.dev")
    for key, value in metadata.items():
        info += blob(3, blob(1, key) + blob(2, value))
    any_ = blob(1, "type.googleapis.com/google.rpc.ErrorInfo") + blob(2, info)
    return uint(1, code) + blob(2, message) + blob(3, any_)


HELLO = (
    uint(1, 1)
    + blob(2, "remotes/pi")
    + blob(3, "sesame/0.1.0")
    + blob(4, uint(1, 65536))
    + blob(5, KEY)
)

# OpenSessionRequest
REQ_HELLO = blob(1, HELLO)
REQ_EXPOSE = blob(2, blob(1, exposed_port(22)))
REQ_EXPOSE_TCP = blob(2, blob(1, exposed_port(5432, http=False, tcp=True)))
REQ_UNEXPOSE = blob(3, uint(1, 22))
REQ_DIAL_FAILURE = blob(
    4,
    blob(1, TICKET)
    + blob(2, error_info_status(14, "refused", "TARGET_REFUSED", {"reason": "no"})),
)
REQ_HEARTBEAT = blob(5, uint(1, 7))

# OpenSessionResponse
WELCOME = blob(
    1,
    uint(1, 1)
    + blob(2, "0123456789abcdef0123456789abcdef")
    + blob(4, uint(1, 65536) + blob(2, duration(10)) + blob(3, duration(5))),
)
PORT_EXPOSED = blob(2, blob(1, exposed_port(22) + blob(2, blob(3, "http://pi.relay.test"))))
DIAL_NOTICE = blob(3, blob(1, TICKET) + uint(2, 22) + blob(3, "192.0.2.1:40000"))
DRAIN = blob(4, blob(1, duration(10)))
EXPOSE_FAILURE = blob(
    6, uint(1, 22) + blob(2, error_info_status(5, "no", "REMOTE_NOT_FOUND", {"remote": "pi"}))
)

# DialRequest, DialResponse, AcceptConnectionRequest, AcceptConnectionResponse
DIAL_TARGET = blob(1, blob(1, "remotes/pi") + uint(2, 22))
DIAL_DATA = blob(2, b"SSH-2.0-OpenSSH_9.6\r\n")
DIAL_RESET = blob(3, blob(1, "the dialer gave up"))
DIAL_OPENED = blob(1, b"")
SERVER_DATA = blob(2, b"hello")
CLOSE_WRITE = blob(3, b"")
ACCEPT_TICKET = blob(1, blob(1, "0123456789abcdef0123456789abcdef") + blob(2, TICKET))


# --- HTTP/2 -----------------------------------------------------------------------------

def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name, value):
    """A literal header field without indexing, with a new name, without Huffman coding."""
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def headers(stream, fields, end_stream=False):
    block = b"".join(hpack_literal(n, v) for n, v in fields)
    return frame(1, 0x4 | (0x1 if end_stream else 0), stream, block)


def settings():
    return frame(4, 0, 0, b"")


def grpc_call(stream, method, messages, end=True):
    out = headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "relay.test"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    for i, message in enumerate(messages):
        last = end and i == len(messages) - 1
        out += frame(0, 0x1 if last else 0, stream, b"\x00" + struct.pack(">I", len(message)) + message)
    return out


TUNNEL = "/sesame.v1.TunnelService/"
DIALER = "/sesame.v1.DialerService/"
REMOTES = "/sesame.v1.RemoteService/"


# --- the seeds --------------------------------------------------------------------------

def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    for name, data in {
        "hello": REQ_HELLO,
        "expose": REQ_EXPOSE,
        "expose-tcp": REQ_EXPOSE_TCP,
        "unexpose": REQ_UNEXPOSE,
        "dial-failure": REQ_DIAL_FAILURE,
        "heartbeat": REQ_HEARTBEAT,
        "welcome": WELCOME,
        "port-exposed": PORT_EXPOSED,
        "dial-notice": DIAL_NOTICE,
        "drain": DRAIN,
        "expose-failure": EXPOSE_FAILURE,
    }.items():
        write("session_messages", name, data)

    for name, data in {
        "target": DIAL_TARGET,
        "data": DIAL_DATA,
        "reset": DIAL_RESET,
        "opened": DIAL_OPENED,
        "server-data": SERVER_DATA,
        "close-write": CLOSE_WRITE,
        "ticket": ACCEPT_TICKET,
        "key": KEY,
        "name": b"device-42",
        "resource": b"remotes/device-42",
        "hostname": b"My_Laptop.local",
    }.items():
        write("data_messages", name, data)

    # grpc_connection: an even first byte sends the preface first.
    session = grpc_call(
        1,
        TUNNEL + "OpenSession",
        [REQ_HELLO, REQ_EXPOSE, REQ_EXPOSE_TCP, REQ_HEARTBEAT, REQ_DIAL_FAILURE, REQ_UNEXPOSE],
    )
    for name, data in {
        "session": settings() + session,
        "session-then-dial": settings()
        + grpc_call(1, TUNNEL + "OpenSession", [REQ_HELLO, REQ_EXPOSE], end=False)
        + grpc_call(3, DIALER + "Dial", [DIAL_TARGET, DIAL_DATA]),
        "dial": settings() + grpc_call(1, DIALER + "Dial", [DIAL_TARGET, DIAL_DATA, DIAL_RESET]),
        "accept": settings() + grpc_call(1, TUNNEL + "AcceptConnection", [ACCEPT_TICKET, DIAL_DATA]),
        "get-remote": settings() + grpc_call(1, REMOTES + "GetRemote", [blob(1, "remotes/pi")]),
        "list-remotes": settings()
        + grpc_call(1, REMOTES + "ListRemotes", [uint(1, 10) + blob(2, "7069")]),
    }.items():
        write("grpc_connection", name, b"\x00" + data)

    # http_head: an odd first byte sends the HTTP/2 preface first.
    for name, data in {
        "get": b"\x00GET /x?y=1 HTTP/1.1\r\nHost: h1.relay.test\r\nConnection: keep-alive, x-a\r\n"
        b"X-A: 1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n",
        "post": b"\x00POST / HTTP/1.1\r\nHost: h2.relay.test:8080\r\nContent-Length: 5\r\n"
        b"Content-Type: application/grpc\r\nTE: trailers\r\n\r\nhello",
        "chunked": b"\x00PUT / HTTP/1.1\r\nHost: gone.relay.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        "upgrade": b"\x00GET /ws HTTP/1.1\r\nHost: h1.relay.test\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        "absolute": b"\x00GET http://h2.relay.test/ HTTP/1.1\r\nHost: other.example\r\n\r\n",
        "unknown": b"\x00GET / HTTP/1.0\r\nHost: nobody.relay.test\r\n\r\n",
        "h2": b"\x01"
        + settings()
        + headers(
            1,
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "h1.relay.test")],
            end_stream=True,
        )
        + headers(
            3,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/svc/M"),
                (":authority", "h2.relay.test"),
                ("content-type", "application/grpc"),
            ],
        )
        + frame(0, 1, 3, b"\x00\x00\x00\x00\x00"),
    }.items():
        write("http_head", name, data)

    for name, data in {
        "relay-url": b"\x02http://relay.example:7373",
        "relay-bare": b"\x02[::1]:9000",
        "spec": b"\x032222:[::1]:22",
        "spec-host": b"\x03192.168.1.5:22",
    }.items():
        write("config_files", name, data)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=relay.test"],
                check=True, capture_output=True,
            )
            cert_pem, key_pem = open(cert, "rb").read(), open(key, "rb").read()
        write("config_files", "pem-one-file", b"\x00" + cert_pem + key_pem)
        split = struct.pack("<H", len(cert_pem))
        write("config_files", "pem-two-files", b"\x01" + split + cert_pem + key_pem)
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"no PEM seed: {error}")


if __name__ == "__main__":
    main()
